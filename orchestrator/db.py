"""Database access: connections, the pool, and applying schema.sql.

JSON and JSONB columns are decoded to Python objects on every connection we open, so
callers pass and receive dicts and lists.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg

from orchestrator.errors import DatabaseUnavailable, SchemaError
from orchestrator.logs import redact

SCHEMA_VERSION = 3
# Any constant works; it only has to be the same for every Switchyard process.
MIGRATE_LOCK_KEY = 0x5357_4954_4348  # "SWITCH"
CONNECT_TIMEOUT_S = 10.0

SQL_SCHEMA_VERSION = "SELECT coalesce(max(version), 0) FROM schema_version"


def schema_sql() -> str:
    """schema.sql from the installed package, else from the repository root."""
    packaged = resources.files("orchestrator").joinpath("schema.sql")
    if packaged.is_file():
        return packaged.read_text()
    source = Path(__file__).resolve().parent.parent / "schema.sql"
    if source.is_file():
        return source.read_text()
    raise SchemaError("schema.sql not found in the package or the repository")


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


async def migrate(conn: asyncpg.Connection) -> int:
    """Apply schema.sql in one transaction under an advisory lock; returns the version."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK_KEY)
        exists = await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
        if exists:
            current = await conn.fetchval(SQL_SCHEMA_VERSION)
            if current > SCHEMA_VERSION:
                raise SchemaError(
                    f"the database has schema version {current}, newer than this Switchyard "
                    f"({SCHEMA_VERSION}); upgrade Switchyard"
                )
        await conn.execute(schema_sql())
        version: int = await conn.fetchval(SQL_SCHEMA_VERSION)
    return version
