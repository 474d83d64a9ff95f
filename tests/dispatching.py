"""Helpers for tests that run turns: waiting on the database, dispatchers in and out of process,
gateways as processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import anyio
import asyncpg

from orchestrator.dispatch import Dispatcher, DispatcherSettings, Router
from testkit.rows import Db
from testkit.services import PROCESS_DEFAULTS
from worktrees import WorktreeManager

WAIT_TIMEOUT_S = 30.0
POLL_S = 0.02
# Quick enough for tests; the lease is short so recovery tests do not wait long.
FAST = DispatcherSettings(**PROCESS_DEFAULTS)


async def task(pool: Db, task_id: int) -> asyncpg.Record:
    row: asyncpg.Record = await pool.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id)
    return row


async def wait_for(check: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT_TIMEOUT_S) -> None:
    try:
        with anyio.fail_after(timeout):
            while not await check():
                await anyio.sleep(POLL_S)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def wait_state(pool: Db, task_id: int, *states: str, timeout: float = WAIT_TIMEOUT_S) -> asyncpg.Record:
    async def reached() -> bool:
        return bool(await pool.fetchval("SELECT state = ANY($2) FROM tasks WHERE id = $1", task_id, list(states)))

    await wait_for(reached, f"task {task_id} to be {' or '.join(states)}", timeout)
    return await task(pool, task_id)


async def events(pool: Db, session_id: int) -> list[tuple[str, dict[str, Any]]]:
    rows = await pool.fetch("SELECT type, payload FROM session_events WHERE session_id = $1 ORDER BY seq", session_id)
    return [(r["type"], r["payload"]) for r in rows]


@asynccontextmanager
async def running_dispatcher(
    db_url: str,
    router: Router | None = None,
    settings: DispatcherSettings = FAST,
    worktrees: WorktreeManager | None = None,
    **overrides: Any,
) -> AsyncIterator[Dispatcher]:
    """An in-process Dispatcher, shut down gracefully (and awaited) on exit."""
    dispatcher = Dispatcher(db_url, replace(settings, **overrides), router or Router(), worktrees)
    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatcher.run)
        await wait_for(holds(lambda: dispatcher.listener.connected), "the dispatcher to listen")
        try:
            yield dispatcher
        finally:
            dispatcher.request_shutdown()


def holds(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """An in-memory condition as a check for wait_for."""

    async def check() -> bool:
        return predicate()

    return check
