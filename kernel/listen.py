"""A LISTEN connection that reconnects forever: the dispatcher's and the gateway's wake-up.

Notifications are lost while the connection is down, so every successful (re)subscribe counts
in ``subscriptions`` and runs the caller's ``while_subscribed(conn)``: that is where a listener
catches up on what it missed (the dispatcher polls for work, the gateway re-reads session
heads) and then does whatever it uses the connection for. Without one, the connection is
checked with ``SELECT 1`` every ``health_interval``. A connection that dies is noticed at once
(asyncpg's termination callback) or by the next query; the listener then waits with backoff and
connects again, for as long as :meth:`Listener.run` runs. The connection is its own, never a
pool's, so nothing else can be handed a connection that still has listeners on it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import anyio
import asyncpg
from anyio.abc import TaskStatus

from kernel.db import close_quietly, report
from kernel.logs import get_logger
from kernel.retry import Backoff

log = get_logger("listen")

RECONNECT_BACKOFF = 0.1
RECONNECT_BACKOFF_MAX = 5.0
HEALTH_TIMEOUT = 5.0

Connect = Callable[[], Awaitable[asyncpg.Connection]]
# Called with the notification's payload, on the event loop, in the order they arrive.
OnNotify = Callable[[str], None]
WhileSubscribed = Callable[[asyncpg.Connection], Awaitable[None]]


class Listener:
    def __init__(
        self,
        connect: Connect,
        channels: Mapping[str, OnNotify],
        *,
        name: str,
        health_interval: float,
        while_subscribed: WhileSubscribed | None = None,
    ) -> None:
        self._connect = connect
        self._channels = dict(channels)
        self.name = name
        self._health_interval = health_interval
        self._while_subscribed = while_subscribed
        # Successful LISTEN set-ups so far; 2 and more mean it reconnected.
        self.subscriptions = 0
        self.connected = False
        # The server process of the current connection (for tests that terminate it).
        self.backend_pid: int | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; ``task_status`` is told once the first LISTEN is in place."""
        backoff = Backoff(RECONNECT_BACKOFF, RECONNECT_BACKOFF_MAX)
        while True:
            try:
                await self._listen(backoff, task_status)
                log.warning("listen.lost", listener=self.name)
            except Exception as exc:
                report(log, "listen.unavailable", exc, listener=self.name, failures=backoff.failures + 1)
            task_status = anyio.TASK_STATUS_IGNORED
            await anyio.sleep(backoff.next())

    async def _listen(self, backoff: Backoff, task_status: TaskStatus[None]) -> None:
        """One connection's life: returns (or raises) when it is gone."""
        conn = await self._connect()
        # Not a task group: an error of while_subscribed must reach run() as itself, not in a group.
        subscribed = anyio.CancelScope()
        conn.add_termination_listener(lambda _conn: subscribed.cancel())
        try:
            for channel, on_notify in self._channels.items():
                await conn.add_listener(channel, _callback(on_notify))
            self.subscriptions += 1
            self.connected = True
            self.backend_pid = conn.get_server_pid()
            backoff.reset()
            log.info("listen.subscribed", listener=self.name, subscriptions=self.subscriptions)
            task_status.started()
            with subscribed:
                await (self._while_subscribed or self.check_health)(conn)
        finally:
            self.connected = False
            self.backend_pid = None
            await close_quietly(conn)

    async def check_health(self, conn: asyncpg.Connection) -> None:
        """Catch a silent network: the termination callback only sees a closed socket."""
        while True:
            await anyio.sleep(self._health_interval)
            with anyio.fail_after(HEALTH_TIMEOUT):
                await conn.fetchval("SELECT 1")


def _callback(on_notify: OnNotify) -> Callable[[object, int, str, str], None]:
    def notified(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        on_notify(payload)

    return notified
