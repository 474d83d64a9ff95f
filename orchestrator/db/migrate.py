"""Applying schema.sql: idempotent, versioned, one transaction under an advisory lock."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import anyio
import asyncpg

from kernel import CONNECTION_LOST, Backoff, SchemaError, close_quietly, connect, get_logger
from orchestrator.db import queries as q

log = get_logger("database")

WAIT_BACKOFF = 0.2
WAIT_BACKOFF_MAX = 5.0

SCHEMA_VERSION = 9
# Any constant works; it only has to be the same for every Switchyard process.
MIGRATE_LOCK_KEY = 0x5357_4954_4348  # "SWITCH"
# How each version block of schema.sql records itself.
VERSION_RECORD = re.compile(r"INSERT INTO schema_version \(version\) VALUES \((\d+)\)")


def schema_sql() -> str:
    """schema.sql from the installed package, else from the repository root."""
    packaged = resources.files("orchestrator").joinpath("schema.sql")
    if packaged.is_file():
        return packaged.read_text()
    source = Path(__file__).resolve().parents[2] / "schema.sql"
    if source.is_file():
        return source.read_text()
    raise SchemaError("schema.sql not found in the package or the repository")


async def migrate(conn: asyncpg.Connection) -> int:
    """Apply schema.sql in one transaction under an advisory lock, unless the database has every
    version block of it already; returns the version."""
    sql = schema_sql()
    async with conn.transaction():
        await conn.execute(q.LOCK_MIGRATION, MIGRATE_LOCK_KEY)
        exists = await conn.fetchval(q.SCHEMA_VERSION_TABLE_EXISTS)
        if exists:
            current = await conn.fetchval(q.SCHEMA_VERSION)
            if current > SCHEMA_VERSION:
                raise SchemaError(
                    f"the database has schema version {current}, newer than this Switchyard "
                    f"({SCHEMA_VERSION}); upgrade Switchyard"
                )
            # Versions are assigned to parallel work and merged in any order, so a database
            # may have the highest version but not one below it: every block must be there.
            present = set(await conn.fetchval(q.SCHEMA_VERSIONS))
            if present.issuperset(int(v) for v in VERSION_RECORD.findall(sql)):
                # Up to date: nothing to run. (Running the file anyway would take table locks
                # for its CREATE INDEX/TRIGGER statements and can deadlock with live turns when a
                # process starts on a busy database.)
                return int(current)
        await conn.execute(sql)
        version: int = await conn.fetchval(q.SCHEMA_VERSION)
    return version


async def migrate_url(url: str, *, wait: bool = False) -> int:
    """Connect, migrate, disconnect: what every command does before it uses the database.

    With ``wait`` (the long-running services), an unreachable database is waited for with
    backoff (and logged), as it would be later on: a dispatcher started during a restart of
    PostgreSQL starts once it is back rather than exiting.
    """
    backoff = Backoff(WAIT_BACKOFF, WAIT_BACKOFF_MAX)
    while True:
        try:
            conn = await connect(url)
            try:
                return await migrate(conn)
            finally:
                await close_quietly(conn)
        except (*CONNECTION_LOST, asyncpg.DeadlockDetectedError) as exc:
            if not wait:
                raise
            delay = backoff.next()
            log.warning("database.unavailable", error=exc, retry_in=delay)
            await anyio.sleep(delay)


async def schema_version(conn: asyncpg.Connection) -> int:
    version: int = await conn.fetchval(q.SCHEMA_VERSION)
    return version
