"""The service's own loops: the worktree reaper keeps reaping, and outlives a lost database."""

from __future__ import annotations

from pathlib import Path

import anyio
import asyncpg
import pytest

from kernel.db import connect
from orchestrator.app.service import run_reaper
from testkit.rows import add_repo_session, make_idle
from worktrees import WorktreeManager, WorktreeSettings

pytestmark = pytest.mark.anyio

INTERVAL = 0.05


def settings(tmp_path: Path) -> WorktreeSettings:
    return WorktreeSettings(root=tmp_path / "worktrees", reap_idle_after=3600, reap_interval=INTERVAL)


async def wait_gone(path: Path) -> None:
    with anyio.fail_after(10):
        while path.exists():
            await anyio.sleep(INTERVAL)


async def test_the_reaper_loop_reaps_until_cancelled(pool: asyncpg.Pool, repo: Path, tmp_path: Path) -> None:
    manager = WorktreeManager(pool, settings(tmp_path))
    session = await add_repo_session(pool, repo)
    path = (await manager.ensure(session)).path
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_reaper, manager, None, INTERVAL)
        await anyio.sleep(0.2)
        assert path.exists()  # not idle yet
        await make_idle(pool, session)
        await wait_gone(path)
        tg.cancel_scope.cancel()


async def test_the_reaper_survives_a_lost_connection(
    db_url: str, pool: asyncpg.Pool, repo: Path, tmp_path: Path
) -> None:
    # Its only connection killed: every pass fails (asyncpg.InterfaceError), the loop goes on.
    conn = await connect(db_url)
    lonely = WorktreeManager(conn, settings(tmp_path))
    await pool.execute("SELECT pg_terminate_backend($1)", conn.get_server_pid())
    with anyio.fail_after(10):
        while not conn.is_closed():
            await anyio.sleep(INTERVAL)
    with anyio.move_on_after(10 * INTERVAL):
        await run_reaper(lonely, None, INTERVAL)  # raises if the loop dies

    # With a pool: its connections killed mid-run, the next passes reap again.
    manager = WorktreeManager(pool, settings(tmp_path))
    session = await add_repo_session(pool, repo)
    path = (await manager.ensure(session)).path
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_reaper, manager, None, INTERVAL)
        await anyio.sleep(3 * INTERVAL)
        await pool.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        await make_idle(pool, session)
        await wait_gone(path)
        tg.cancel_scope.cancel()
