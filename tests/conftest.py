"""Suite-wide fixtures: one real PostgreSQL cluster per run, a fresh database per test.

The cluster comes from orchestrator.embedded_pg, the module `switchyard up` uses. Each test
database is cloned from a template that already has schema.sql applied, which takes a few
milliseconds instead of re-running the schema.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from kernel.db import connect, create_pool
from orchestrator.db.embedded import EmbeddedPostgres
from orchestrator.db.migrate import migrate
from orchestrator.services import ReviewService
from testkit.cluster import temporary_cluster
from testkit.repos import sample_repo
from worktrees import WorktreeSettings

TEMPLATE = "switchyard_template"
_db_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def pg() -> Iterator[EmbeddedPostgres]:
    with temporary_cluster() as cluster:
        asyncio.run(_create_template(cluster))
        yield cluster


async def _create_template(cluster: EmbeddedPostgres) -> None:
    conn = await connect(cluster.url("postgres"))
    try:
        await conn.execute(f"CREATE DATABASE {TEMPLATE}")
    finally:
        await conn.close()
    conn = await connect(cluster.url(TEMPLATE))
    try:
        await migrate(conn)
    finally:
        await conn.close()


async def _admin(cluster: EmbeddedPostgres, sql: str) -> None:
    conn = await asyncpg.connect(cluster.url("postgres"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def db_url(pg: EmbeddedPostgres) -> Iterator[str]:
    """URL of a fresh database with the schema applied; dropped after the test."""
    name = f"test_{os.getpid()}_{next(_db_numbers)}"
    asyncio.run(_admin(pg, f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
    try:
        yield pg.url(name)
    finally:
        asyncio.run(_admin(pg, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(db_url, size=10)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A project checkout: a real repository with text, binary and ignored files (testkit.repos)."""
    return sample_repo(tmp_path / "project")


@pytest.fixture
def worktree_settings(tmp_path: Path) -> WorktreeSettings:
    return WorktreeSettings(root=tmp_path / "worktrees")


@pytest.fixture
def review(pool: asyncpg.Pool, worktree_settings: WorktreeSettings) -> ReviewService:
    return ReviewService(pool, worktree_settings)
