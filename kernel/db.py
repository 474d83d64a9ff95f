"""Connections to PostgreSQL, and what a database error means.

Every connection Switchyard opens decodes json/jsonb to Python objects, so callers pass and
receive dicts and lists. Failures fall in two classes, and code that talks to the database
treats them differently:

- :data:`CONNECTION_LOST`: the server went away, is restarting, or never answered (refused,
  reset, timed out, a name that does not resolve, a pool with no free connection in time); the
  same request can succeed later, so loops wait and retry. A plain ``OSError`` is *not* in it: a
  missing file or directory is the caller's input at fault, not the network. (Connecting, which
  may also fail with a bare ``OSError``, is wrapped: :func:`connect` and the pools' connections
  raise :class:`DatabaseUnavailable` instead.)
- :data:`VALUE_REFUSED`: the server refused what was sent (a bad value, a violated constraint);
  retrying cannot help, the caller's input is at fault.

:data:`DATABASE_ERRORS` is both plus any other error PostgreSQL reports: what a loop that must
never die catches.
"""

from __future__ import annotations

import json
import socket
import weakref
from typing import Any

import anyio
import asyncpg

from kernel.errors import DatabaseUnavailable
from kernel.logs import EventLogger, redact

CONNECT_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0

CONNECTION_LOST: tuple[type[Exception], ...] = (
    ConnectionError,  # refused, reset, aborted, broken pipe
    TimeoutError,
    socket.gaierror,
    socket.herror,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now
    # asyncpg's protocol state after the server dropped the connection mid-query.
    asyncpg.InternalClientError,
    DatabaseUnavailable,
)
VALUE_REFUSED: tuple[type[Exception], ...] = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)
DATABASE_ERRORS: tuple[type[Exception], ...] = (*CONNECTION_LOST, asyncpg.PostgresError)


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"no answer within {CONNECT_TIMEOUT_S:g} s"
    return str(exc) or type(exc).__name__


async def init_connection(conn: asyncpg.Connection) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(typename, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def connect(url: str, **kwargs: Any) -> asyncpg.Connection:
    try:
        conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S, **kwargs)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise DatabaseUnavailable(f"cannot connect to {redact(url)}: {_why(exc)}") from exc
    await init_connection(conn)
    return conn


class PoolExhausted(DatabaseUnavailable):
    """No connection of a pool became free within its acquire timeout."""


class BoundedPool(asyncpg.Pool):  # type: ignore[misc]
    """A pool whose ``acquire`` gives up after ``acquire_timeout`` (unless the caller says otherwise).

    Every user of one pool waits for the same connections; a bound turns a starved pool into an
    error the caller handles (``PoolExhausted``, a lost connection) instead of a wait without end.
    """

    def __init__(self, *args: Any, name: str, acquire_timeout: float | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.name = name
        self.acquire_timeout = acquire_timeout
        _pools.add(self)

    async def _acquire(self, timeout: float | None) -> Any:  # noqa: ASYNC109 - asyncpg's own signature
        timeout = self.acquire_timeout if timeout is None else timeout
        try:
            return await super()._acquire(timeout)
        except TimeoutError:
            raise PoolExhausted(
                f"no free connection in the {self.name} pool ({self.get_max_size()}) within {timeout:g} s"
            ) from None


# Every pool of the process that is still referenced (for kernel.metrics).
_pools: weakref.WeakSet[BoundedPool] = weakref.WeakSet()


def live_pools() -> list[BoundedPool]:
    return [pool for pool in list(_pools) if not pool._closed]


async def _pool_connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
    """A pool's new connection; failing to connect is DatabaseUnavailable, as for :func:`connect`."""
    try:
        return await asyncpg.connect(*args, **kwargs)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise DatabaseUnavailable(f"cannot connect: {_why(exc)}") from exc


async def create_pool(
    url: str,
    size: int = 10,
    *,
    name: str = "database",
    acquire_timeout: float | None = None,
    min_size: int = 1,
    **kwargs: Any,
) -> BoundedPool:
    """A pool of at most ``size`` connections; ``acquire_timeout`` bounds every wait for one."""
    pool = BoundedPool(
        url,
        name=name,
        acquire_timeout=acquire_timeout,
        connect=_pool_connect,
        min_size=min(min_size, size),
        max_size=size,
        max_queries=50000,
        max_inactive_connection_lifetime=300.0,
        init=init_connection,
        setup=None,
        reset=kwargs.pop("reset", None),
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        timeout=CONNECT_TIMEOUT_S,
        **kwargs,
    )
    try:
        await pool
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        pool.terminate()
        raise DatabaseUnavailable(f"cannot connect to {redact(url)}: {_why(exc)}") from exc
    except DatabaseUnavailable as exc:
        pool.terminate()
        raise DatabaseUnavailable(f"cannot connect to {redact(url)}: {exc.__cause__ or exc}") from exc
    return pool


async def close_quietly(conn: asyncpg.Connection) -> None:
    """Close politely if the server answers in time, else drop the socket."""
    if conn.is_closed():
        return
    with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT_S):
        try:
            await conn.close()
            return
        except DATABASE_ERRORS:
            pass
    conn.terminate()


def report(log: EventLogger, event: str, exc: Exception, **fields: object) -> None:
    """A failure a loop survives: database trouble as a warning, anything else with its traceback."""
    if isinstance(exc, DATABASE_ERRORS):
        log.warning(event, error=exc, **fields)
    else:
        log.exception(event, error=exc, **fields)
