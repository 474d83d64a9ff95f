"""Several machines, simulated on one: node processes with separate data directories, one
PostgreSQL, a bare repository as the projects' git remote.

The turns run the fake ACP agent (``WRITE``/``READ`` keywords), which edits the session's
worktree on the node that runs the turn.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import asyncpg
import pytest

from orchestrator.services import ReviewService
from testkit import SWITCHYARD, fake_acp_agent_command
from testkit.repos import bare_remote, git, sample_repo
from testkit.rows import add_project, add_session, add_task
from testkit.services import DispatcherProcess, service_env
from tests.dispatching import wait_for, wait_state

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SESSIONS = 30
ROUNDS = 10
# Generous: a node whose heartbeat stalls this long on the loaded 2-core machine counts as dead.
DEAD_AFTER = 15.0
# Longer than the processes' default (3 s): 12 agents at once on 2 shared cores must not lose leases.
LEASE = 10.0
TIMEOUT = 300.0


def node_env(**extra: str) -> dict[str, str]:
    return {
        "SWITCHYARD__AGENTS__FAKE__TRANSPORT": "acp",
        "SWITCHYARD__AGENTS__FAKE__COMMAND": json.dumps(fake_acp_agent_command()),
        "SWITCHYARD__NODE__DEAD_AFTER": str(DEAD_AFTER),
        **extra,
    }


@pytest.fixture
def nodes(db_url: str) -> Iterator[list[DispatcherProcess]]:
    procs = [DispatcherProcess(db_url, None, node_env(), max_concurrent_turns=4, lease_seconds=LEASE) for _ in range(3)]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.close()


@pytest.fixture
async def project(pool: asyncpg.Pool, tmp_path: Path) -> tuple[int, Path, Path]:
    checkout = sample_repo(tmp_path / "checkout")
    remote = bare_remote(checkout, tmp_path / "remote.git")
    return await add_project(pool, "nodes", checkout, remote=str(remote)), checkout, remote


def name(session: int, round_: int) -> str:
    return f"s{session}-t{round_}.txt"


def turn_input(session: int, round_: int) -> str:
    read = f"READ {name(session, round_ - 1)} " if round_ > 1 else ""
    return f"{read}WRITE {name(session, round_)} s{session}r{round_}"


async def reply(pool: asyncpg.Pool, task_id: int) -> str:
    content: str = await pool.fetchval(
        "SELECT content FROM messages WHERE task_id = $1 AND role = 'assistant' ORDER BY id DESC LIMIT 1", task_id
    )
    return content


async def all_ended(pool: asyncpg.Pool, ids: list[int]) -> bool:
    return bool(await pool.fetchval("SELECT bool_and(ended_at IS NOT NULL) FROM tasks WHERE id = ANY($1)", ids))


def worktree_files(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".git"
    }


def snapshot_files(remote: Path, commit: str) -> dict[str, bytes]:
    names = git(remote, "ls-tree", "-r", "--name-only", commit).splitlines()
    return {
        n: subprocess.run(["git", "show", f"{commit}:{n}"], cwd=remote, capture_output=True, check=True).stdout
        for n in names
    }


async def test_sessions_stay_on_their_node_and_move_through_git_when_it_dies(
    db_url: str, pool: asyncpg.Pool, nodes: list[DispatcherProcess], project: tuple[int, Path, Path]
) -> None:
    project_id, checkout, remote = project
    for proc in nodes:
        await proc.started()
    sessions = [await add_session(pool, project_id) for _ in range(SESSIONS)]
    # Every round of every session queued at once: FIFO per session, any node may take a first turn.
    tasks = {
        (s, r): await add_task(pool, project_id, turn_input(s, r), session_id=s, agent="fake")
        for r in range(1, ROUNDS + 1)
        for s in sessions
    }
    await wait_for(lambda: all_ended(pool, list(tasks.values())), f"{len(tasks)} turns", timeout=TIMEOUT)
    states = await pool.fetch("SELECT state, failure_reason, count(*) FROM tasks GROUP BY 1, 2")
    assert [(r["state"], r["count"]) for r in states] == [("completed", SESSIONS * ROUNDS)], states
    # Affinity: every turn of a session ran on one node, and saw the file the previous turn wrote.
    # (An attempt that failed before the session had a worktree, e.g. a database timeout on a
    # loaded machine, pinned nothing: its retry may have run anywhere.)
    where = await pool.fetch(
        """SELECT t.session_id, array_agg(DISTINCT a.worker_id) AS workers
             FROM tasks t JOIN task_attempts a ON a.task_id = t.id
            WHERE a.outcome = 'completed' GROUP BY t.session_id"""
    )
    moved_early = [r["session_id"] for r in where if len(r["workers"]) > 1]
    if moved_early:
        attempts = await pool.fetch(
            """SELECT t.id, a.attempt, a.worker_id, a.started_at, a.outcome, a.failure_reason
                 FROM tasks t JOIN task_attempts a ON a.task_id = t.id WHERE t.session_id = $1
                ORDER BY a.started_at""",
            moved_early[0],
        )
        raise AssertionError("a session changed nodes:\n" + "\n".join(str(dict(r)) for r in attempts))
    assert len(where) == SESSIONS
    node_of = {r["session_id"]: r["workers"][0] for r in where}
    assert len(set(node_of.values())) > 1  # the work was spread
    for (s, r), task_id in tasks.items():
        if r > 1:
            assert f'read {name(s, r - 1)}=ok "s{s}r{r - 1}"' in await reply(pool, task_id)

    # kill -9 the node of the first session while its sessions are mid-turn.
    victim = next(p for p in nodes if p.worker_id == node_of[sessions[0]])
    moved = [s for s in sessions if node_of[s] == victim.worker_id]
    last = {
        s: await pool.fetchrow(
            "SELECT id, snapshot_commit FROM pending_changes WHERE session_id = $1 AND status = 'pending'", s
        )
        for s in moved
    }
    # As many mid-turn as it runs at once (max_concurrent_turns); the rest of its sessions idle.
    stuck = [
        await add_task(pool, project_id, "SLEEP 60", session_id=s, agent="fake", max_attempts=1) for s in moved[:4]
    ]
    for task_id in stuck:
        await wait_state(pool, task_id, "running", timeout=60)
    victim.kill()
    checks = {s: await add_task(pool, project_id, f"READ {name(s, ROUNDS)}", session_id=s, agent="fake") for s in moved}
    await wait_for(lambda: all_ended(pool, list(checks.values())), "the moved sessions' next turns", timeout=TIMEOUT)
    for task_id in stuck:
        row = await pool.fetchrow("SELECT state, failure_reason FROM tasks WHERE id = $1", task_id)
        assert (row["state"], row["failure_reason"]) == ("failed", "interrupted")  # recovered as today
    survivors = {p.worker_id for p in nodes if p is not victim}
    review = ReviewService(pool, node_id="the reviewer's machine")
    for s, task_id in checks.items():
        row = await pool.fetchrow(
            """SELECT t.state, a.worker_id FROM tasks t JOIN task_attempts a ON a.task_id = t.id WHERE t.id = $1""",
            task_id,
        )
        assert row["state"] == "completed" and row["worker_id"] in survivors
        assert f'read {name(s, ROUNDS)}=ok "s{s}r{ROUNDS}"' in await reply(pool, task_id)
        # The worktree on the new node holds the last snapshot, file by file.
        worktree = await pool.fetchrow("SELECT path, node_id FROM session_worktrees WHERE session_id = $1", s)
        assert worktree["node_id"] == row["worker_id"]
        assert worktree_files(Path(worktree["path"])) == snapshot_files(remote, last[s]["snapshot_commit"])
        # Its pending change is the one from before the move, and it accepts cleanly.
        resolution = await review.accept(last[s]["id"], by="test")
        assert resolution.change.status == "accepted", resolution.change.error
        assert (checkout / name(s, ROUNDS)).read_text() == f"s{s}r{ROUNDS}"
    for proc in nodes:
        if proc is not victim:
            assert await proc.terminate() == 0, proc.stderr()


async def test_a_node_without_an_agent_never_claims_its_tasks_and_they_fail_after_unclaimable_after(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    project_id = await add_project(pool, "agents", sample_repo(tmp_path / "checkout"))
    session = await add_session(pool, project_id)
    env = node_env(SWITCHYARD__OPENCODE__BINARY=str(tmp_path / "no-opencode-here"))
    proc = DispatcherProcess(db_url, None, env, unclaimable_after=4.0)
    try:
        await proc.started()
        # Another live node has opencode: this one leaves its tasks alone, however long they wait.
        await pool.execute(
            "INSERT INTO nodes (id, host, agents, dead_after) VALUES ('elsewhere', 'h', '{opencode}', 3600)"
        )
        theirs = await add_task(pool, project_id, "hi", session_id=session, agent="opencode")
        mine = await add_task(pool, project_id, "WRITE x.txt y", agent="fake")
        await wait_state(pool, mine, "completed", timeout=60)
        await pool.execute("UPDATE tasks SET created_at = now() - interval '1 hour' WHERE id = $1", theirs)
        await anyio.sleep(2)  # several claims and maintenance rounds
        row = await pool.fetchrow("SELECT state, attempt, waiting_for FROM tasks WHERE id = $1", theirs)
        assert (row["state"], row["attempt"], row["waiting_for"]) == ("pending", 0, None)
        # No live node has it: the task says so (row and frame), then fails at unclaimable_after.
        await pool.execute("UPDATE nodes SET seen_at = now() - interval '2 hours' WHERE id = 'elsewhere'")
        await pool.execute("UPDATE tasks SET created_at = now() WHERE id = $1", theirs)

        async def waiting() -> bool:
            why = await pool.fetchval("SELECT waiting_for FROM tasks WHERE id = $1", theirs)
            return why == "agent opencode: no live node runs it"

        await wait_for(waiting, "waiting_for", timeout=30)
        row = await wait_state(pool, theirs, "failed", timeout=60)
        assert row["failure_reason"] == "agent_unavailable"
        frames = await pool.fetch(
            "SELECT payload FROM session_events WHERE session_id = $1 AND type = 'task_state' ORDER BY seq", session
        )
        payloads = [json.loads(f["payload"]) if isinstance(f["payload"], str) else f["payload"] for f in frames]
        assert payloads[0] == {
            "task_id": theirs,
            "state": "pending",
            "attempt": 0,
            "waiting_for": "agent opencode: no live node runs it",
        }
        assert payloads[-1]["state"] == "failed"
        # `switchyard nodes` lists both, with what each runs.
        listed = subprocess.run(
            [*SWITCHYARD, "nodes", "--json"], env=service_env(db_url), capture_output=True, text=True, check=True
        )
        by_id = {n["id"]: n for n in json.loads(listed.stdout)}
        assert by_id["elsewhere"]["state"] == "dead"
        assert by_id[proc.worker_id]["state"] == "live" and "fake" in by_id[proc.worker_id]["agents"]
        assert "opencode" not in by_id[proc.worker_id]["agents"]
        assert await proc.terminate() == 0, proc.stderr()
    finally:
        proc.close()


async def test_a_drained_node_finishes_its_turns_and_its_sessions_move(
    db_url: str, pool: asyncpg.Pool, project: tuple[int, Path, Path]
) -> None:
    project_id, _, _ = project
    a = DispatcherProcess(db_url, None, node_env())
    b: DispatcherProcess | None = None
    try:
        await a.started()
        sessions = [await add_session(pool, project_id) for _ in range(4)]
        for s in sessions:
            await wait_state(
                pool, await add_task(pool, project_id, turn_input(s, 1), session_id=s, agent="fake"), "completed"
            )
        b = DispatcherProcess(db_url, None, node_env())
        await b.started()
        running = await add_task(pool, project_id, "SLEEP 3", session_id=sessions[0], agent="fake")
        await wait_state(pool, running, "running", timeout=60)
        drained = subprocess.run(
            [*SWITCHYARD, "node", "drain", a.worker_id, "--wait"],
            env=service_env(db_url),
            capture_output=True,
            text=True,
            check=True,
        )
        assert f"node {a.worker_id}: drained" in drained.stdout
        assert (await wait_state(pool, running, "completed", timeout=30))["state"] == "completed"
        nexts = [await add_task(pool, project_id, turn_input(s, 2), session_id=s, agent="fake") for s in sessions]
        for task_id, s in zip(nexts, sessions, strict=True):
            row = await wait_state(pool, task_id, "completed", "failed", timeout=60)
            assert row["state"] == "completed"
            assert row["claimed_by"] == b.worker_id
            assert f'read {name(s, 1)}=ok "s{s}r1"' in await reply(pool, task_id)
        assert await pool.fetchval("SELECT count(*) FROM tasks WHERE state <> 'completed'") == 0
        for proc in (a, b):
            assert await proc.terminate() == 0, proc.stderr()
    finally:
        a.close()
        if b is not None:
            b.close()
