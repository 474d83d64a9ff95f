"""Dispatchers as real processes (`switchyard dispatcher`) sharing one database.

The turns use the noop backend; ``sleep:<seconds>`` holds a turn open (backends.noop).
"""

from __future__ import annotations

import itertools
import os
from collections import defaultdict
from collections.abc import Awaitable, Callable

import anyio
import asyncpg
import pytest

from kernel.db import DATABASE_ERRORS
from orchestrator.db.embedded import EmbeddedPostgres
from testkit import SWITCHYARD
from testkit.rows import add_project, add_session, add_task
from testkit.services import dispatcher_processes
from tests.dispatching import task, wait_for, wait_state

pytestmark = pytest.mark.anyio

SESSIONS = 50
TASKS = 2000
BATCH = 250

INSERT_BATCH = """
INSERT INTO tasks (project_id, session_id, input, agent)
SELECT $1, s, 'task ' || n, 'noop' FROM unnest($2::bigint[], $3::int[]) AS b(s, n)
"""


@pytest.mark.slow
async def test_two_processes_run_each_task_once_in_session_order(db_url: str, pool: asyncpg.Pool) -> None:
    project = await add_project(pool)
    sessions = [await add_session(pool, project) for _ in range(SESSIONS)]
    with dispatcher_processes(db_url, "proc-0", "proc-1") as procs:
        for proc in procs:
            await proc.started()
        # Inserted while both run, in batches, each batch spread over every session.
        for start in range(0, TASKS, BATCH):
            numbers = list(range(start, start + BATCH))
            await pool.execute(INSERT_BATCH, project, [sessions[n % SESSIONS] for n in numbers], numbers)

        async def all_done() -> bool:
            return bool(await pool.fetchval("SELECT count(*) = $1 FROM tasks WHERE state = 'completed'", TASKS))

        await wait_for(all_done, f"{TASKS} completed tasks", timeout=120)
        for proc in procs:
            assert await proc.terminate() == 0, proc.stderr()

    assert await pool.fetchval("SELECT count(*) FROM tasks WHERE attempt <> 1") == 0
    attempts = await pool.fetch(
        """SELECT a.task_id, a.worker_id, a.outcome, a.started_at, a.ended_at, t.session_id
             FROM task_attempts a JOIN tasks t ON t.id = a.task_id
            ORDER BY t.session_id, a.started_at"""
    )
    # Exactly once: one attempt per task, completed.
    assert len(attempts) == TASKS and {a["outcome"] for a in attempts} == {"completed"}
    assert len({a["task_id"] for a in attempts}) == TASKS
    # Both processes took part.
    assert {a["worker_id"] for a in attempts} == {"proc-0", "proc-1"}
    by_session: dict[int, list[asyncpg.Record]] = defaultdict(list)
    for a in attempts:
        by_session[a["session_id"]].append(a)
    for session, runs in by_session.items():
        # Session order kept (tasks of a session were created in id order)...
        assert [r["task_id"] for r in runs] == sorted(r["task_id"] for r in runs), session
        # ...and no two turns of the session overlapped.
        for earlier, later in itertools.pairwise(runs):
            assert earlier["ended_at"] <= later["started_at"], (session, earlier["task_id"], later["task_id"])
    # Every task has its frames and its echoed reply.
    completed_frames = await pool.fetchval(
        "SELECT count(*) FROM session_events WHERE type = 'task_state' AND payload->>'state' = 'completed'"
    )
    assert completed_frames == TASKS
    mismatched = await pool.fetchval(
        """SELECT count(*) FROM tasks t JOIN messages m ON m.task_id = t.id AND m.role = 'assistant'
            WHERE m.content <> t.input OR m.status <> 'complete'"""
    )
    assert mismatched == 0


async def test_kill_9_mid_turn_is_recovered_and_the_session_goes_on(db_url: str, pool: asyncpg.Pool) -> None:
    project = await add_project(pool)
    session, other = await add_session(pool, project), await add_session(pool, project)
    stuck = await add_task(pool, project, "sleep:60", session_id=session, max_attempts=1)
    following = await add_task(pool, project, "next", session_id=session)
    retried = await add_task(pool, project, "sleep:2", session_id=other, max_attempts=2)
    with dispatcher_processes(db_url, "doomed") as [doomed]:
        await doomed.started()
        await wait_state(pool, stuck, "running")
        await wait_state(pool, retried, "running")
        doomed.kill()
    # Another worker: it recovers the turns only once their lease has lapsed.
    with dispatcher_processes(db_url, "survivor") as [survivor]:
        await survivor.started()
        row = await wait_state(pool, stuck, "failed")
        await wait_state(pool, following, "completed")
        again = await wait_state(pool, retried, "completed")
        assert await survivor.terminate() == 0
    assert row["failure_reason"] == "interrupted" and "stopped renewing its lease" in row["error"]
    assert again["attempt"] == 2
    outcomes = await pool.fetch(
        "SELECT task_id, attempt, outcome, ended_at FROM task_attempts ORDER BY task_id, attempt"
    )
    assert [(o["task_id"], o["attempt"], o["outcome"]) for o in outcomes] == [
        (stuck, 1, "interrupted"),
        (following, 1, "completed"),
        (retried, 1, "interrupted"),
        (retried, 2, "completed"),
    ]
    # The session's next turn started only after the interrupted one was ended.
    next_started = await pool.fetchval("SELECT started_at FROM task_attempts WHERE task_id = $1", following)
    assert outcomes[0]["ended_at"] <= next_started


async def test_postgres_restart_while_the_dispatcher_runs(
    db_url: str, pool: asyncpg.Pool, pg: EmbeddedPostgres
) -> None:
    project = await add_project(pool)
    spanning = await add_task(pool, project, "sleep:1.5")
    inserted: list[int] = []

    async def keep_inserting(stop: anyio.Event) -> None:
        # Through the restart: whatever INSERT committed must run.
        while not stop.is_set():
            try:
                conn = await asyncpg.connect(db_url)
                try:
                    while not stop.is_set():
                        inserted.append(await add_task(conn, project, f"task {len(inserted)}"))
                        await anyio.sleep(0.02)
                finally:
                    conn.terminate()
            except DATABASE_ERRORS:
                await anyio.sleep(0.05)

    with dispatcher_processes(db_url, "through-restart") as [proc]:
        await proc.started()
        await wait_state(pool, spanning, "running")
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_inserting, stop)
            await anyio.sleep(0.2)
            await anyio.to_thread.run_sync(pg.restart)
            await anyio.sleep(0.5)
            stop.set()
        for task_id in [spanning, *inserted]:
            await wait_state(pool, task_id, "completed")
        await wait_for(_listening(pool, proc.worker_id), "LISTEN after the restart")
        assert await proc.terminate() == 0, proc.stderr()
    assert len(inserted) > 10


async def test_listen_connection_terminated_in_a_running_dispatcher(db_url: str, pool: asyncpg.Pool) -> None:
    project = await add_project(pool)
    # A long poll: tasks run quickly only through LISTEN or the poll on resubscribe.
    with dispatcher_processes(db_url, "listener-killed", poll_interval=60) as [proc]:
        await proc.started()
        await wait_for(_listening(pool, proc.worker_id), "LISTEN")
        first_pid = await _listener_pid(pool, proc.worker_id)
        await pool.execute("SELECT pg_terminate_backend($1)", first_pid)
        during = await add_task(pool, project, "while LISTEN is down")
        await wait_state(pool, during, "completed", timeout=15)

        async def new_listener() -> bool:
            pid = await _listener_pid(pool, proc.worker_id)
            return pid is not None and pid != first_pid and await _listening(pool, proc.worker_id)()

        await wait_for(new_listener, "a new LISTEN connection")
        after = await add_task(pool, project, "after")
        await wait_state(pool, after, "completed", timeout=15)
        assert await proc.terminate() == 0


def _listening(pool: asyncpg.Pool, worker_id: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(
            await pool.fetchval(
                "SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = $1",
                f"switchyard-listener {worker_id}",
            )
        )

    return check


async def _listener_pid(pool: asyncpg.Pool, worker_id: str) -> int | None:
    pid: int | None = await pool.fetchval(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1", f"switchyard-listener {worker_id}"
    )
    return pid


async def test_cli_cancel_of_pending_and_running_tasks(db_url: str, pool: asyncpg.Pool) -> None:
    project = await add_project(pool)
    session = await add_session(pool, project)
    running = await add_task(pool, project, "sleep:60", session_id=session)
    queued = await add_task(pool, project, "after", session_id=session)
    with dispatcher_processes(db_url, "only") as [proc]:
        await proc.started()
        await wait_state(pool, running, "running")
        assert await _cli(db_url, "cancel", str(queued)) == f"task {queued}: cancelled\n"
        assert (await task(pool, queued))["state"] == "cancelled"
        out = await _cli(db_url, "cancel", str(running))
        assert out == f"task {running}: cancel requested; its dispatcher is aborting the turn\n"
        row = await wait_state(pool, running, "cancelled", timeout=10)
        assert await proc.terminate() == 0
    assert row["failure_reason"] == "cancelled"
    status = await pool.fetchval("SELECT status FROM messages WHERE task_id = $1 AND role = 'assistant'", running)
    assert status == "cancelled"


async def test_sigterm_stops_claiming_and_records_why_running_turns_stopped(db_url: str, pool: asyncpg.Pool) -> None:
    project = await add_project(pool)
    long_turn = await add_task(pool, project, "sleep:60", max_attempts=1)
    with dispatcher_processes(db_url, "only", shutdown_grace=0.5) as [proc]:
        await proc.started()
        await wait_state(pool, long_turn, "running")
        assert await proc.terminate() == 0
    row = await task(pool, long_turn)
    assert (row["state"], row["failure_reason"]) == ("failed", "shutdown")
    # Nothing is claimed after the stop.
    late = await add_task(pool, project, "late")
    await anyio.sleep(0.5)
    assert (await task(pool, late))["state"] == "pending"


async def _cli(db_url: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD")}
    env["SWITCHYARD_DATABASE_URL"] = db_url
    result = await anyio.run_process([*SWITCHYARD, *args], env=env, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()
