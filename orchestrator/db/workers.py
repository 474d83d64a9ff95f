"""Stable worker identity: who a process is, held with an advisory lock so nobody else can be it.

A dispatcher's ``worker_id`` (``tasks.claimed_by``) is, unless configured, derived from the host
and the data directory: ``<host>:<data_dir>``, and for a second process on the same data
directory ``<host>:<data_dir>#2`` and so on — the first of these ids whose lock is free. The
same process gets the same id after a restart, so what its previous run left ``running`` is its
own: when the previous holder is certainly gone (:func:`kernel.process_gone`: same host, its
process no longer exists) it is recovered at once instead of after ``lease_seconds``.

The lock (``pg_try_advisory_lock``, session level) lives on a connection of its own, and the
``workers`` row names the holding process. :meth:`WorkerLock.hold` keeps it: a lost connection
is reopened and the lock taken again; if by then another process holds the id (it started
while we could not reach the database), ``on_lost`` is told — the dispatcher then stops its
turns without writing and exits, since the new holder may recover them. Gateways register the
same way (kind ``gateway``, id ``gateway:<host>:<port>``) so ``switchyard status`` finds them.

The lock connection's health check, every ``HEALTH_INTERVAL``, is a ``heartbeat`` when one is
given: a dispatcher's writes its node's row (orchestrator.db.nodes).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import anyio
import asyncpg

from kernel import DATABASE_ERRORS, Backoff, close_quietly, connect, get_logger, process_gone, process_key, report
from orchestrator.db import queries as q
from orchestrator.errors import WorkerIdTaken

log = get_logger("workers")

# Run on the lock's connection as its health check (orchestrator.db.nodes: the node's heartbeat).
Heartbeat = Callable[[asyncpg.Connection, str], Awaitable[None]]

# Ids tried for a derived identity: <base>, <base>#2, ... <base>#MAX_SLOTS.
MAX_SLOTS = 64
HEALTH_INTERVAL = 2.0
HEALTH_TIMEOUT = 5.0
RECONNECT_BACKOFF = 0.1
RECONNECT_BACKOFF_MAX = 2.0
# Our own earlier session still holding the lock (the server has not noticed it is gone): wait this
# long between attempts to end it and take the lock again.
STALE_RETRY = 0.5


def derived_ids(base: str) -> list[str]:
    return [base, *(f"{base}#{n}" for n in range(2, MAX_SLOTS + 1))]


def default_base(data_dir: str) -> str:
    return f"{socket.gethostname()}:{data_dir}"


@dataclass(frozen=True)
class Held:
    worker_id: str
    # The previous holder of the id is certainly gone: what it left running may be recovered now.
    predecessor_gone: bool


class WorkerLock:
    """Holds one worker id for the life of a process (see the module docstring)."""

    def __init__(
        self,
        database_url: str,
        kind: str,
        candidates: Sequence[str],
        *,
        explicit: bool,
        url: str | None = None,
        application_name: Callable[[str], str] = lambda worker_id: f"switchyard-lock {worker_id}",
        heartbeat: Heartbeat | None = None,
    ) -> None:
        self._database_url = database_url
        self.kind = kind
        self._candidates = list(candidates)
        self._explicit = explicit
        self.url = url
        self._application_name = application_name
        self._heartbeat = heartbeat
        self._host = socket.gethostname()
        self._process = process_key()
        self.worker_id = self._candidates[0] if explicit else ""
        self._conn: asyncpg.Connection | None = None

    async def acquire(self) -> Held:
        """Take the first free id; WorkerIdTaken when there is none (an explicit id in use)."""
        conn = await connect(self._database_url, server_settings={"application_name": "switchyard-lock"})
        try:
            for worker_id in self._candidates:
                if await conn.fetchval(q.TRY_WORKER_LOCK, worker_id):
                    previous = await self._record(conn, worker_id)
                    await self._beat(conn, worker_id)
                    self.worker_id, self._conn = worker_id, conn
                    await conn.execute(q.SET_APPLICATION_NAME, self._application_name(worker_id))
                    return Held(worker_id, self._predecessor_gone(previous))
            holder = await conn.fetchrow(q.WORKER, self._candidates[0])
        except BaseException:
            await close_quietly(conn)
            raise
        await close_quietly(conn)
        if self._explicit:
            who = f" (pid {holder['pid']} on {holder['host']})" if holder else ""
            raise WorkerIdTaken(
                f"worker id {self._candidates[0]!r} is held by another live process{who}; "
                "give each process its own dispatcher.worker_id"
            )
        raise WorkerIdTaken(f"all {len(self._candidates)} worker ids of {self._candidates[0]!r} are held")

    async def _record(self, conn: asyncpg.Connection, worker_id: str) -> asyncpg.Record | None:
        """Write our row; returns the previous holder's (host, process), if any."""
        previous: asyncpg.Record | None = await conn.fetchrow(
            q.RECORD_WORKER, worker_id, self.kind, self._host, os.getpid(), self._process, self.url
        )
        return previous if previous is not None and previous["process"] is not None else None

    def _predecessor_gone(self, previous: asyncpg.Record | None) -> bool:
        if previous is None:
            return True  # nobody held this id before
        return bool(previous["host"] == self._host and process_gone(previous["process"]))

    async def _beat(self, conn: asyncpg.Connection, worker_id: str) -> None:
        if self._heartbeat is None:
            await conn.fetchval("SELECT 1")
        else:
            await self._heartbeat(conn, worker_id)

    async def set_url(self, url: str) -> None:
        """Record where this process serves (metrics, WebSocket); best effort: a connection lost
        meanwhile is reopened by :meth:`hold`, which records it then."""
        self.url = url
        if self._conn is not None and not self._conn.is_closed():
            try:
                await self._conn.execute(q.SET_WORKER_URL, self.worker_id, url)
            except DATABASE_ERRORS as exc:
                report(log, "worker_lock.url_not_recorded", exc, worker_id=self.worker_id)

    async def hold(self, on_lost: Callable[[str], None]) -> None:
        """Keep the lock until cancelled; ``on_lost(reason)`` (and return) if another process took it."""
        backoff = Backoff(RECONNECT_BACKOFF, RECONNECT_BACKOFF_MAX)
        while True:
            try:
                if self._conn is None or self._conn.is_closed():
                    reason = await self._relock()
                    if reason is not None:
                        on_lost(reason)
                        return
                    backoff.reset()
                assert self._conn is not None
                await self._watch(self._conn)
            except DATABASE_ERRORS as exc:
                report(log, "worker_lock.unavailable", exc, worker_id=self.worker_id, failures=backoff.failures + 1)
                if self._conn is not None:
                    self._conn.terminate()
                    self._conn = None
                await anyio.sleep(backoff.next())

    async def _watch(self, conn: asyncpg.Connection) -> None:
        """Return (or raise) once the connection is gone."""
        closed = anyio.Event()
        conn.add_termination_listener(lambda _conn: closed.set())
        while not closed.is_set():
            with anyio.move_on_after(HEALTH_INTERVAL):
                await closed.wait()
            if not closed.is_set():
                with anyio.fail_after(HEALTH_TIMEOUT):
                    await self._beat(conn, self.worker_id)
        self._conn = None

    async def _relock(self) -> str | None:
        """Take our id again on a new connection; a reason if another process holds it now."""
        settings = {"application_name": self._application_name(self.worker_id)}
        conn = await connect(self._database_url, server_settings=settings)
        try:
            while not await conn.fetchval(q.TRY_WORKER_LOCK, self.worker_id):
                holder = await conn.fetchrow(q.WORKER_LOCK_HOLDER, self.worker_id)
                if holder is None:
                    continue  # released in between
                if holder["process"] != self._process:
                    return (
                        f"worker id {self.worker_id!r} was taken by pid {holder['pid']} on {holder['host']} "
                        "while this process could not reach the database"
                    )
                # Our own earlier session, which the server has not seen go yet.
                await conn.execute(q.TERMINATE_BACKEND, holder["backend_pid"])
                await anyio.sleep(STALE_RETRY)
            await self._record(conn, self.worker_id)
            await self._beat(conn, self.worker_id)
        except BaseException:
            await close_quietly(conn)
            raise
        self._conn = conn
        log.info("worker_lock.held_again", worker_id=self.worker_id)
        return None

    async def release(self) -> None:
        if self._conn is not None:
            await close_quietly(self._conn)
            self._conn = None


@dataclass(frozen=True)
class WorkerRow:
    """A registered process as ``switchyard status`` shows it."""

    id: str
    kind: str
    host: str
    pid: int
    url: str | None
    started_at: datetime
    # It holds its lock now (its process runs and reaches the database).
    live: bool
    # Tasks running under its id (a gone one's wait for their lease, or its restart).
    running: int


async def list_workers(db: asyncpg.Connection | asyncpg.Pool) -> list[WorkerRow]:
    return [WorkerRow(**dict(row)) for row in await db.fetch(q.WORKERS)]
