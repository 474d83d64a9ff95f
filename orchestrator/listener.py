"""The dispatcher's dedicated LISTEN connection.

It listens on ``tasks_new`` (a task became pending) and ``task_cancel`` (a cancel was
requested) and hands both to callbacks. Notifications are lost while the connection is down,
so every successful (re)subscribe calls ``on_subscribed``: the dispatcher then polls for work
and re-checks its running turns. A connection that dies is noticed at once (asyncpg's
termination callback) or, for a silent network, by a ``SELECT 1`` every ``health_interval``.
It reconnects with backoff for as long as ``run`` runs.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import asyncpg

from orchestrator import db
from orchestrator.logs import get_logger
from orchestrator.retry import DATABASE_ERRORS, Backoff, report

log = get_logger("listener")

TASKS_NEW = "tasks_new"
TASK_CANCEL = "task_cancel"
RECONNECT_BACKOFF = 0.1
RECONNECT_BACKOFF_MAX = 5.0
HEALTH_TIMEOUT = 5.0
CLOSE_TIMEOUT = 2.0


class Listener:
    def __init__(
        self,
        database_url: str,
        *,
        application_name: str,
        on_task: Callable[[], None],
        on_cancel: Callable[[int], None],
        on_subscribed: Callable[[], None],
        health_interval: float,
    ) -> None:
        self._url = database_url
        self.application_name = application_name
        self._on_task = on_task
        self._on_cancel = on_cancel
        self._on_subscribed = on_subscribed
        self._health_interval = health_interval
        # Successful LISTEN set-ups so far; 2 and more mean it reconnected.
        self.subscriptions = 0
        self.connected = False

    async def run(self) -> None:
        backoff = Backoff(RECONNECT_BACKOFF, RECONNECT_BACKOFF_MAX)
        while True:
            try:
                await self._listen(backoff)
                log.warning("listener.lost")
            except Exception as exc:
                report(log, "listener.unavailable", exc, failures=backoff.failures + 1)
            await anyio.sleep(backoff.next())

    async def _listen(self, backoff: Backoff) -> None:
        """One connection's life: returns (or raises) when it is gone."""
        conn = await db.connect(self._url, server_settings={"application_name": self.application_name})
        lost = anyio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        try:
            await conn.add_listener(TASKS_NEW, self._notified)
            await conn.add_listener(TASK_CANCEL, self._notified)
            self.subscriptions += 1
            self.connected = True
            backoff.reset()
            log.info("listener.subscribed", subscriptions=self.subscriptions)
            self._on_subscribed()
            while not lost.is_set():
                with anyio.move_on_after(self._health_interval):
                    await lost.wait()
                if not lost.is_set():
                    with anyio.fail_after(HEALTH_TIMEOUT):
                        await conn.fetchval("SELECT 1")
        finally:
            self.connected = False
            await close_quietly(conn)

    def _notified(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        if channel == TASKS_NEW:
            self._on_task()
        elif channel == TASK_CANCEL:
            try:
                task_id = int(payload)
            except ValueError:
                log.warning("listener.bad_payload", channel=channel, payload=payload)
                return
            self._on_cancel(task_id)


async def close_quietly(conn: asyncpg.Connection) -> None:
    """Close politely if the server answers in time, else drop the socket."""
    if conn.is_closed():
        return
    with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
        try:
            await conn.close()
            return
        except DATABASE_ERRORS:
            pass
    conn.terminate()
