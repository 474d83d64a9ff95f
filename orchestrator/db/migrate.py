"""Applying schema.sql: idempotent, versioned, one transaction under an advisory lock."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import asyncpg

from kernel import SchemaError, connect
from orchestrator.db import queries as q

SCHEMA_VERSION = 6
# Any constant works; it only has to be the same for every Switchyard process.
MIGRATE_LOCK_KEY = 0x5357_4954_4348  # "SWITCH"


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
    """Apply schema.sql in one transaction under an advisory lock; returns the version."""
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
        await conn.execute(schema_sql())
        version: int = await conn.fetchval(q.SCHEMA_VERSION)
    return version


async def migrate_url(url: str) -> int:
    """Connect, migrate, disconnect: what every command does before it uses the database."""
    conn = await connect(url)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


async def schema_version(conn: asyncpg.Connection) -> int:
    version: int = await conn.fetchval(q.SCHEMA_VERSION)
    return version
