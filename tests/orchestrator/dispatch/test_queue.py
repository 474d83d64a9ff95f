"""The queue's SQL against a real PostgreSQL: claim, leases, recovery, ending pending tasks."""

from __future__ import annotations

import itertools
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import anyio
import asyncpg
import pytest

from orchestrator.dispatch import queries, queue
from testkit.rows import add_project, add_session, add_task
from tests.dispatching import events, task

pytestmark = pytest.mark.anyio

LEASE = 30.0
HISTORY = 50
UNCLAIMABLE_AFTER = 600.0


@pytest.fixture
async def claimer(db_url: str) -> asyncpg.Connection:
    conn = await queue.connect_claimer(db_url, "test-claimer")
    try:
        yield conn
    finally:
        await conn.close()


# A node that runs every agent these tests ask for.
AGENTS = ("native", "noop", "fake")


async def claim(
    conn: asyncpg.Connection, limit: int = 10, worker: str = "w", node: str = "n", agents: tuple[str, ...] = AGENTS
) -> list[queue.ClaimedTask]:
    claimant = queue.Claimant(worker, node, agents, agents, UNCLAIMABLE_AFTER)
    return await queue.claim_tasks(conn, claimant, LEASE, limit, HISTORY)


FINISH = """
WITH attempt AS (
    UPDATE task_attempts SET ended_at = clock_timestamp(), outcome = 'completed' WHERE task_id = $1
)
UPDATE tasks SET state = 'completed', ended_at = clock_timestamp() WHERE id = $1
"""


async def finish(pool: asyncpg.Pool, task_id: int) -> None:
    """What finalize does, in one transaction: the attempt ends before the commit."""
    await pool.execute(FINISH, task_id)


async def test_claim_takes_session_heads_by_priority_and_marks_them_running(
    pool: asyncpg.Pool, claimer: asyncpg.Connection
) -> None:
    project = await add_project(pool)
    a, b, c = [await add_session(pool, project) for _ in range(3)]
    a1 = await add_task(pool, project, session_id=a)
    await add_task(pool, project, session_id=a)  # behind a1
    b1 = await add_task(pool, project, session_id=b, priority=5)
    later = datetime.now(UTC) + timedelta(hours=1)
    await add_task(pool, project, session_id=c, not_before=later)  # not yet
    loose = await add_task(pool, project)  # no session: its own queue
    # One at a time: priority first, then age; a's second task waits behind a1.
    claimed = [t for _ in range(3) for t in await claim(claimer, limit=1, worker="w1")]
    assert [t.id for t in claimed] == [b1, a1, loose]
    first = claimed[0]
    assert (first.attempt, first.session_ok, first.project_exists, first.history) == (1, True, True, ())
    row = await task(pool, b1)
    assert (row["state"], row["claimed_by"], row["claim_token"], row["attempt"]) == (
        "running",
        "w1",
        first.claim_token,
        1,
    )
    assert row["lease_expires_at"] > datetime.now(UTC) + timedelta(seconds=LEASE - 5)
    attempt = await pool.fetchrow("SELECT * FROM task_attempts WHERE task_id = $1", b1)
    assert (attempt["attempt"], attempt["worker_id"], attempt["claim_token"]) == (1, "w1", first.claim_token)
    # Every session now has a running task or nothing due: nothing more to claim.
    assert await claim(claimer) == []
    await finish(pool, a1)
    assert [t.session_id for t in await claim(claimer)] == [a]


async def test_claim_brings_history_and_agent_session(pool: asyncpg.Pool, claimer: asyncpg.Connection) -> None:
    project = await add_project(pool)
    session = await add_session(pool, project)
    for role, content, status in [
        ("user", "q1", "complete"),
        ("assistant", "a1", "complete"),
        ("assistant", "x", "failed"),
    ]:
        await pool.execute(
            "INSERT INTO messages (session_id, role, content, status) VALUES ($1, $2, $3, $4)",
            session,
            role,
            content,
            status,
        )
    await pool.execute(
        """INSERT INTO agent_sessions (session_id, agent, upstream_session_id, config_hash)
           VALUES ($1, 'acp-x', 'up', 'h')""",
        session,
    )
    await add_task(pool, project, session_id=session, agent="acp-x")
    [claimed] = await claim(claimer)
    assert [(m.role, m.content) for m in claimed.history] == [("user", "q1"), ("assistant", "a1")]
    assert claimed.agent_session is not None and claimed.agent_session.upstream_session_id == "up"


async def test_claim_plan_walks_the_claim_index_even_with_stale_statistics(
    pool: asyncpg.Pool, claimer: asyncpg.Connection
) -> None:
    # A burst into a table that was never analyzed: the planner believes it is (nearly) empty.
    project = await add_project(pool)
    sessions = [await add_session(pool, project) for _ in range(20)]
    await pool.execute(
        "INSERT INTO tasks (project_id, session_id, input) SELECT $1, s, 'x' FROM unnest($2::bigint[]) s",
        project,
        [sessions[i % 20] for i in range(2000)],
    )
    plan = "\n".join(
        r[0]
        for r in await claimer.fetch(
            "EXPLAIN " + queries.CLAIM_TASKS,
            "w",
            LEASE,
            1,
            HISTORY,
            "native",
            "n",
            AGENTS,
            AGENTS,
            UNCLAIMABLE_AFTER,
            [],
        )
    )
    assert "Index Scan using tasks_pending_claim_idx" in plan
    assert "Seq Scan on tasks" not in plan and "Sort Key: t.priority" not in plan
    assert "JIT" not in plan


async def test_concurrent_claimers_never_run_two_turns_of_a_session(db_url: str, pool: asyncpg.Pool) -> None:
    project = await add_project(pool)
    sessions = [await add_session(pool, project) for _ in range(10)]
    ids = [await add_task(pool, project, session_id=sessions[i % 10]) for i in range(120)]
    taken: list[int] = []

    async def worker(name: str) -> None:
        conn = await queue.connect_claimer(db_url, name)
        try:
            while True:
                claimed = await claim(conn, limit=3, worker=name)
                if not claimed:
                    if not await pool.fetchval("SELECT count(*) FROM tasks WHERE state <> 'completed'"):
                        return
                    await anyio.sleep(0.001)
                    continue
                for t in claimed:
                    taken.append(t.id)
                    await finish(pool, t.id)
        finally:
            await conn.close()

    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(worker, f"w{i}")
    assert sorted(taken) == ids  # each task exactly once
    runs = await pool.fetch(
        """SELECT t.session_id, a.task_id, a.started_at, a.ended_at
             FROM task_attempts a JOIN tasks t ON t.id = a.task_id ORDER BY t.session_id, a.started_at"""
    )
    by_session: dict[int, list[asyncpg.Record]] = defaultdict(list)
    for r in runs:
        by_session[r["session_id"]].append(r)
    for session_runs in by_session.values():
        assert [r["task_id"] for r in session_runs] == sorted(r["task_id"] for r in session_runs)
        for earlier, later in itertools.pairwise(session_runs):
            assert earlier["ended_at"] <= later["started_at"]


async def test_create_session_for_a_claimed_task(pool: asyncpg.Pool, claimer: asyncpg.Connection) -> None:
    project = await add_project(pool)
    task_id = await add_task(pool, project, agent="noop", model="m")
    [claimed] = await claim(claimer)
    session = await queue.create_session(pool, claimed, "title")
    assert session is not None and (await task(pool, task_id))["session_id"] == session
    row = await pool.fetchrow("SELECT * FROM sessions WHERE id = $1", session)
    assert (row["project_id"], row["agent"], row["model"], row["title"]) == (project, "noop", "m", "title")
    # Not ours any more (another claim token): nothing is created.
    stranger = queue.ClaimedTask(**{**claimed.__dict__, "claim_token": uuid.uuid4()})
    assert await queue.create_session(pool, stranger, "t") is None


async def test_extend_leases_reports_cancels_and_lost_claims(pool: asyncpg.Pool, claimer: asyncpg.Connection) -> None:
    project = await add_project(pool)
    for _ in range(3):
        await add_task(pool, project)
    first, second, third = await claim(claimer)
    await pool.execute("UPDATE tasks SET cancel_requested_at = now() WHERE id = $1", second.id)
    await pool.execute("UPDATE tasks SET claim_token = gen_random_uuid() WHERE id = $1", third.id)  # recovered
    before = (await task(pool, first.id))["lease_expires_at"]
    renewed = await queue.extend_leases(pool, [(t.id, t.claim_token) for t in (first, second, third)], LEASE)
    assert renewed == {first.id: False, second.id: True}
    assert (await task(pool, first.id))["lease_expires_at"] > before


async def test_recovery_retries_or_fails_lapsed_turns_and_tells_the_session(
    pool: asyncpg.Pool, claimer: asyncpg.Connection
) -> None:
    project = await add_project(pool)
    session, other = await add_session(pool, project), await add_session(pool, project)
    once = await add_task(pool, project, session_id=session, max_attempts=1)
    twice = await add_task(pool, project, session_id=other, max_attempts=2)
    mine = await add_task(pool, project, max_attempts=1)
    await claim(claimer, worker="dead")
    [left] = [t for t in await pool.fetch("SELECT id FROM tasks WHERE id = $1", mine)]
    await pool.execute(
        "UPDATE tasks SET claimed_by = 'me', lease_expires_at = now() + interval '1 h' WHERE id = $1", left["id"]
    )
    await pool.execute("UPDATE tasks SET lease_expires_at = now() - interval '1 s' WHERE id = ANY($1)", [once, twice])
    streaming = await pool.fetchval(
        """INSERT INTO messages (session_id, task_id, role, status)
           VALUES ($1, $2, 'assistant', 'streaming') RETURNING id""",
        session,
        once,
    )
    # Lapsed leases only: the task of 'me' still has its lease.
    moved = await queue.recover_tasks(pool, left_behind_by=None, backoff=10.0, backoff_max=60.0)
    assert {(m.task_id, m.state) for m in moved} == {(once, "failed"), (twice, "pending")}
    row = await task(pool, once)
    assert (row["failure_reason"], row["ended_at"] is not None) == ("interrupted", True)
    assert "dead" in row["error"] and "lease" in row["error"]
    retry = await task(pool, twice)
    assert retry["not_before"] > datetime.now(UTC) + timedelta(seconds=5)  # backoff 10 s for attempt 1
    assert await pool.fetchval("SELECT status FROM messages WHERE id = $1", streaming) == "failed"
    outcomes = await pool.fetch("SELECT task_id, outcome FROM task_attempts WHERE task_id = ANY($1)", [once, twice])
    assert {(o["task_id"], o["outcome"]) for o in outcomes} == {(once, "interrupted"), (twice, "interrupted")}
    assert [(t, p["task_id"]) for t, p in await events(pool, session)] == [
        ("message_complete", once),
        ("task_state", once),
    ]
    # At start-up, what this worker left behind goes at once, lease or not.
    moved = await queue.recover_tasks(pool, left_behind_by="me", backoff=1.0, backoff_max=1.0)
    assert [(m.task_id, m.state) for m in moved] == [(mine, "failed")]
    assert "earlier run" in (await task(pool, mine))["error"]


async def test_sweep_ends_expired_and_cancelled_pending_tasks(pool: asyncpg.Pool) -> None:
    project, foreign_project = await add_project(pool, "p"), await add_project(pool, "q")
    session, foreign = await add_session(pool, project), await add_session(pool, foreign_project)
    past = datetime.now(UTC) - timedelta(seconds=1)
    expired = await add_task(pool, project, session_id=session, expires_at=past)
    cancelled = await add_task(pool, project, session_id=session, cancel_requested_at=past)
    mismatched = await add_task(pool, project, session_id=foreign, expires_at=past)
    fresh = await add_task(pool, project, session_id=session, expires_at=datetime.now(UTC) + timedelta(hours=1))
    ended = await queue.sweep_pending(pool)
    assert {(e.task_id, e.state, e.failure_reason) for e in ended} == {
        (expired, "failed", "expired"),
        (cancelled, "cancelled", "cancelled"),
        (mismatched, "failed", "expired"),
    }
    assert (await task(pool, fresh))["state"] == "pending"
    assert {p["task_id"] for _, p in await events(pool, session)} == {expired, cancelled}
    assert await events(pool, foreign) == []  # never into another project's session


async def test_end_pending_task_only_touches_a_pending_task(pool: asyncpg.Pool, claimer: asyncpg.Connection) -> None:
    project = await add_project(pool)
    running = await add_task(pool, project)
    await claim(claimer)
    pending = await add_task(pool, project, cancel_requested_at=datetime.now(UTC))
    async with pool.acquire() as conn:
        assert await queue.end_pending_task(conn, running) is None
        ended = await queue.end_pending_task(conn, pending)
        assert ended is not None and ended.state == "cancelled"
        assert await queue.end_pending_task(conn, pending) is None


NODE = "INSERT INTO nodes (id, host, agents, dead_after, seen_at, drain_requested_at) VALUES ($1, 'h', $2, 30, $3, $4)"
PIN = """INSERT INTO session_worktrees (session_id, project_id, path, branch, base_commit, node_id)
         VALUES ($1::bigint, $2, '/wt/' || $1::bigint::text, 'b', repeat('a', 40), $3)"""


async def test_claim_keeps_a_session_on_the_live_node_that_holds_its_worktree(
    pool: asyncpg.Pool, claimer: asyncpg.Connection
) -> None:
    project = await add_project(pool)
    now = datetime.now(UTC)
    await pool.execute(NODE, "live", list(AGENTS), now, None)
    await pool.execute(NODE, "dead", list(AGENTS), now - timedelta(seconds=31), None)
    await pool.execute(NODE, "drained", list(AGENTS), now, now)
    pinned = {}
    for node in ("live", "dead", "drained", "n", None):
        session = await add_session(pool, project)
        await pool.execute(PIN, session, project, node)
        pinned[node] = await add_task(pool, project, session_id=session)
    claimed = {t.id for t in await claim(claimer)}
    # Only the live node's session stays where it is; a dead or drained node's moves.
    assert claimed == {pinned["dead"], pinned["drained"], pinned["n"], pinned[None]}
    assert {t.id for t in await claim(claimer, node="live")} == {pinned["live"]}


async def test_claim_takes_only_agents_the_node_runs_until_nobody_can(
    pool: asyncpg.Pool, claimer: asyncpg.Connection
) -> None:
    project = await add_project(pool)
    mine = ("native", "noop")
    await pool.execute(NODE, "other", ["opencode"], datetime.now(UTC), None)
    opencode = await add_task(pool, project, agent="opencode")
    # Another live node runs it: this one leaves it, even after unclaimable_after.
    await pool.execute("UPDATE tasks SET created_at = now() - interval '1 hour' WHERE id = $1", opencode)
    assert await claim(claimer, agents=mine) == []
    # Nobody runs it (the other node is dead): it waits ...
    await pool.execute("UPDATE nodes SET seen_at = now() - interval '1 minute'")
    await pool.execute("UPDATE tasks SET created_at = now() WHERE id = $1", opencode)
    assert await claim(claimer, agents=mine) == []
    assert [r["waiting_for"] for r in await queue.mark_waiting(pool)] == ["agent opencode: no live node runs it"]
    assert await queue.mark_waiting(pool) == []  # unchanged rows are left alone
    # ... and once it waited unclaimable_after, any node claims it (and fails it agent_unavailable).
    await pool.execute("UPDATE tasks SET created_at = now() - interval '1 hour' WHERE id = $1", opencode)
    [claimed] = await claim(claimer, agents=mine)
    assert claimed.id == opencode
    assert await pool.fetchval("SELECT waiting_for FROM tasks WHERE id = $1", opencode) is None
    # A name no node has ever run is claimed at once (and fails unknown_agent).
    typo = await add_task(pool, project, agent="opencdoe")
    assert [t.id for t in await claim(claimer, agents=mine)] == [typo]


async def test_a_waiting_task_says_so_in_a_frame_and_again_when_a_node_can_run_it(pool: asyncpg.Pool) -> None:
    project = await add_project(pool)
    session = await add_session(pool, project)
    waiting = await add_task(pool, project, session_id=session, agent="opencode")
    await pool.execute(NODE, "n", ["native"], datetime.now(UTC), None)
    await queue.mark_waiting(pool)
    await pool.execute("UPDATE nodes SET agents = '{native,opencode}'")
    [cleared] = await queue.mark_waiting(pool)
    assert cleared["id"] == waiting and cleared["waiting_for"] is None
    frames = [payload for kind, payload in await events(pool, session) if kind == "task_state"]
    assert frames == [
        {"task_id": waiting, "state": "pending", "attempt": 0, "waiting_for": "agent opencode: no live node runs it"},
        {"task_id": waiting, "state": "pending", "attempt": 0, "waiting_for": ""},
    ]


async def test_claim_leaves_a_project_the_node_cannot_reach_to_one_that_can(
    pool: asyncpg.Pool, claimer: asyncpg.Connection
) -> None:
    project = await add_project(pool)
    other_project = await add_project(pool, "other")
    session = await add_session(pool, project)
    await pool.execute(NODE, "other", list(AGENTS), datetime.now(UTC), None)
    task_id = await add_task(pool, project, session_id=session)
    elsewhere = await add_task(pool, other_project)

    async def claim_unreaching() -> list[queue.ClaimedTask]:
        claimant = queue.Claimant("w", "n", AGENTS, AGENTS, UNCLAIMABLE_AFTER, [project])
        return await queue.claim_tasks(claimer, claimant, LEASE, 10, HISTORY)

    # Another live node reaches it: this one leaves it, however long it waits.
    await pool.execute("UPDATE tasks SET created_at = now() - interval '1 hour' WHERE id = $1", task_id)
    assert [t.id for t in await claim_unreaching()] == [elsewhere]
    # The other node dies: nobody reaches it, so this node claims it at once (and fails it,
    # repository_missing, as one machine would).
    await pool.execute("UPDATE nodes SET seen_at = now() - interval '1 minute' WHERE id = 'other'")
    assert [t.id for t in await claim_unreaching()] == [task_id]
