"""Connections to PostgreSQL, and what a database error means.

Every connection Switchyard opens decodes json/jsonb to Python objects, so callers pass and
receive dicts and lists. Failures fall in two classes, and code that talks to the database
treats them differently:

- :data:`CONNECTION_LOST`: the server went away, is restarting, or never answered; the same
  request can succeed later, so loops wait and retry.
- :data:`VALUE_REFUSED`: the server refused what was sent (a bad value, a violated constraint);
  retrying cannot help, the caller's input is at fault.

:data:`DATABASE_ERRORS` is both plus any other error PostgreSQL reports: what a loop that must
never die catches.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import asyncpg

from kernel.errors import DatabaseUnavailable
from kernel.logs import EventLogger, redact

CONNECT_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0

CONNECTION_LOST: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now
    # asyncpg's protocol state after the server dropped the connection mid-query.
    asyncpg.InternalClientError,
    DatabaseUnavailable,
)
VALUE_REFUSED: tuple[type[Exception], ...] = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)
DATABASE_ERRORS: tuple[type[Exception], ...] = (*CONNECTION_LOST, asyncpg.PostgresError)


async def init_connection(conn: asyncpg.Connection) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(typename, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def connect(url: str, **kwargs: Any) -> asyncpg.Connection:
    try:
        conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S, **kwargs)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise DatabaseUnavailable(f"cannot connect to {redact(url)}: {exc}") from exc
    await init_connection(conn)
    return conn


async def create_pool(url: str, size: int = 10, **kwargs: Any) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(
            url, min_size=1, max_size=size, init=init_connection, timeout=CONNECT_TIMEOUT_S, **kwargs
        )
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise DatabaseUnavailable(f"cannot connect to {redact(url)}: {exc}") from exc
    assert pool is not None
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
