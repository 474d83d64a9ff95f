"""Tokens: only hashes stored, verification, project scope, and the lookups that authorize actions."""

from __future__ import annotations

import hashlib

import asyncpg
import pytest

from testkit.rows import add_session
from ws_gateway import UnknownProject, create_token, hash_token, verify_token
from ws_gateway.auth import (
    change_project,
    list_tokens,
    project_exists,
    revoke_token,
    session_project,
    task_project,
)

pytestmark = pytest.mark.anyio


async def test_only_the_hash_is_stored(pool: asyncpg.Pool, projects: tuple[int, int]) -> None:
    token = await create_token(pool, "ide", [projects[0]])
    row = await pool.fetchrow("SELECT name, token_hash, project_ids FROM api_tokens")
    assert token.startswith("sy_") and len(token) > 40
    assert row["token_hash"] == hashlib.sha256(token.encode()).hexdigest() == hash_token(token)
    assert token not in str(dict(row))
    assert (row["name"], row["project_ids"]) == ("ide", [projects[0]])
    assert token != await create_token(pool, "ide", [projects[0]])


async def test_verify(pool: asyncpg.Pool, projects: tuple[int, int]) -> None:
    scoped = await create_token(pool, "ide", [projects[0]])
    operator = await create_token(pool, "operator")
    access = await verify_token(pool, scoped)
    assert access is not None
    assert access.name == "ide"
    assert access.sees(projects[0]) and not access.sees(projects[1]) and not access.sees(None)
    everything = await verify_token(pool, operator)
    assert everything is not None and everything.project_ids is None
    assert everything.sees(projects[1])
    for bad in (None, "", scoped + "x", "sy_" + "a" * 43):
        assert await verify_token(pool, bad) is None
    await pool.execute("UPDATE api_tokens SET revoked_at = now() WHERE name = 'ide'")
    assert await verify_token(pool, scoped) is None


async def test_unknown_project_is_refused(pool: asyncpg.Pool, projects: tuple[int, int]) -> None:
    with pytest.raises(UnknownProject, match="no project with id 999"):
        await create_token(pool, "ide", [projects[0], 999])
    assert await pool.fetchval("SELECT count(*) FROM api_tokens") == 0


async def test_project_lookups(pool: asyncpg.Pool, projects: tuple[int, int]) -> None:
    session = await add_session(pool, projects[1])
    by_session = await pool.fetchval("INSERT INTO tasks (session_id, input) VALUES ($1, 'x') RETURNING id", session)
    by_project = await pool.fetchval("INSERT INTO tasks (project_id, input) VALUES ($1, 'x') RETURNING id", projects[0])
    change = await pool.fetchval(
        "INSERT INTO pending_changes (session_id, base_commit, diff) VALUES ($1, $2, '') RETURNING id",
        session,
        "0" * 40,
    )
    assert await project_exists(pool, projects[0]) and not await project_exists(pool, 999)
    assert await session_project(pool, session) == projects[1]
    assert await session_project(pool, 999) is None
    assert await task_project(pool, by_session) == projects[1]
    assert await task_project(pool, by_project) == projects[0]
    assert await task_project(pool, 999) is None
    assert await change_project(pool, change) == projects[1]
    assert await change_project(pool, 999) is None


async def test_list_and_revoke(pool: asyncpg.Pool, projects: tuple[int, int]) -> None:
    token = await create_token(pool, "ide", [projects[0]])
    [row] = await list_tokens(pool)
    assert (row["name"], row["project_ids"], row["revoked_at"]) == ("ide", [projects[0]], None)
    assert token not in str(dict(row))
    assert await revoke_token(pool, row["id"]) is True
    assert await verify_token(pool, token) is None
    assert await revoke_token(pool, row["id"]) is False  # once
    assert await revoke_token(pool, 999) is False
