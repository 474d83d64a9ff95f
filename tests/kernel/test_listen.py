"""The reconnecting LISTEN helper: notifications reach the callbacks, and it comes back after being killed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import asyncpg
import pytest

from kernel.db import connect
from kernel.listen import Listener
from testkit.rows import add_project, add_task
from tests.dispatching import holds, wait_for

pytestmark = pytest.mark.anyio

NAME = "switchyard-listener test"


class Calls:
    def __init__(self) -> None:
        self.tasks = 0
        self.cancels: list[int] = []
        self.subscribed = 0


@asynccontextmanager
async def listening(db_url: str) -> AsyncIterator[tuple[Listener, Calls]]:
    calls = Calls()

    def on_task(_payload: str) -> None:
        calls.tasks += 1

    def on_cancel(payload: str) -> None:
        if payload.isdigit():
            calls.cancels.append(int(payload))

    async def while_subscribed(conn: asyncpg.Connection) -> None:
        calls.subscribed += 1
        await listener.check_health(conn)

    listener = Listener(
        lambda: connect(db_url, server_settings={"application_name": NAME}),
        {"tasks_new": on_task, "task_cancel": on_cancel},
        name="test",
        health_interval=0.2,
        while_subscribed=while_subscribed,
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.run)
        await wait_for(holds(lambda: listener.connected), "LISTEN")
        yield listener, calls
        tg.cancel_scope.cancel()


async def test_notifications_reach_the_callbacks(db_url: str, pool: asyncpg.Pool) -> None:
    async with listening(db_url) as (listener, calls):
        assert calls.subscribed == 1
        project = await add_project(pool)
        task_id = await add_task(pool, project)
        await wait_for(holds(lambda: calls.tasks == 1), "tasks_new")
        await pool.execute("UPDATE tasks SET cancel_requested_at = now() WHERE id = $1", task_id)
        await wait_for(holds(lambda: calls.cancels == [task_id]), "task_cancel")
        # A payload that is not a task id is ignored, not fatal.
        await pool.execute("SELECT pg_notify('task_cancel', 'nonsense')")
        await pool.execute("SELECT pg_notify('tasks_new', '')")
        await wait_for(holds(lambda: calls.tasks == 2), "the next notification")
        assert calls.cancels == [task_id] and listener.connected


async def test_listen_comes_back_after_pg_terminate_backend(db_url: str, pool: asyncpg.Pool) -> None:
    async with listening(db_url) as (listener, calls):
        killed = await pool.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1", NAME
        )
        assert killed == 1
        await wait_for(holds(lambda: calls.subscribed == 2 and listener.connected), "a new subscription")
        assert listener.subscriptions == 2
        project = await add_project(pool)
        await add_task(pool, project)
        await wait_for(holds(lambda: calls.tasks == 1), "tasks_new on the new connection")
