"""Stable worker identity (orchestrator.db.workers) with real `switchyard dispatcher` processes.

The id is derived from the host and the data directory and held with an advisory lock: a
restarted dispatcher is the same worker and recovers what its killed run left running at once,
two on one data directory are two workers, and an id given twice is refused.
"""

from __future__ import annotations

import socket
from pathlib import Path

import asyncpg
import pytest

from testkit.rows import add_project, add_task
from testkit.services import DispatcherProcess
from tests.dispatching import wait_for, wait_state

pytestmark = pytest.mark.anyio

# Far longer than any test: a task moved on before it lapses was recovered at once.
LONG_LEASE = {"lease_seconds": 600, "shutdown_grace": 0.2}


async def test_a_restarted_dispatcher_recovers_what_it_left_running_at_once(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    project = await add_project(pool)
    stuck = await add_task(pool, project, "sleep:600", max_attempts=2)
    data_dir = tmp_path / "data"
    first = DispatcherProcess(db_url, None, data_dir=data_dir, **LONG_LEASE)
    try:
        await first.started()
        assert first.worker_id == f"{socket.gethostname()}:{data_dir}"
        await wait_state(pool, stuck, "running")
        first.kill()
    finally:
        first.close()
    second = DispatcherProcess(db_url, None, data_dir=data_dir, **LONG_LEASE)
    try:
        await second.started()
        assert second.worker_id == first.worker_id

        async def second_attempt() -> bool:
            return bool(await pool.fetchval("SELECT attempt = 2 AND state = 'running' FROM tasks WHERE id = $1", stuck))

        await wait_for(second_attempt, "the task's second attempt, long before its lease lapses")
        assert await second.terminate() == 0, second.stderr()
    finally:
        second.close()
    first_attempt = await pool.fetchrow("SELECT * FROM task_attempts WHERE task_id = $1 AND attempt = 1", stuck)
    assert first_attempt["outcome"] == "interrupted"
    assert first_attempt["error"] == f"left running by an earlier run of dispatcher {first.worker_id}"


async def test_two_dispatchers_on_one_data_directory_are_two_workers(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    data_dir = tmp_path / "shared"
    procs = [DispatcherProcess(db_url, None, data_dir=data_dir) for _ in range(2)]
    try:
        for proc in procs:
            await proc.started()
        base = f"{socket.gethostname()}:{data_dir}"
        assert sorted(p.worker_id for p in procs) == [base, f"{base}#2"]
        project = await add_project(pool)
        tasks = [await add_task(pool, project, f"t{i}") for i in range(20)]
        for task_id in tasks:
            await wait_state(pool, task_id, "completed")
        rows = await pool.fetch("SELECT id, kind, pid FROM workers ORDER BY id")
        assert [(r["id"], r["kind"]) for r in rows] == [(base, "dispatcher"), (f"{base}#2", "dispatcher")]
        for proc in procs:
            assert await proc.terminate() == 0, proc.stderr()
    finally:
        for proc in procs:
            proc.close()


async def test_a_worker_id_given_to_two_processes_is_refused_in_one_line(db_url: str) -> None:
    first = DispatcherProcess(db_url, "twin")
    try:
        await first.started()
        second = DispatcherProcess(db_url, "twin")
        assert await second.exited() == 1
        lines = second.stderr().strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("switchyard: error: worker id 'twin' is held by another live process (pid ")
        assert f"pid {first.proc.pid} " in lines[0]
        assert await first.terminate() == 0
        second.close()
    finally:
        first.close()
