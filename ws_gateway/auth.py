"""API tokens and what a token may see.

Only the sha256 of a token is stored (``api_tokens.token_hash``), so the table leaks nothing
usable. A token with ``project_ids`` NULL sees every project (the operator's token); any other
sees only the listed projects. Every session, task and pending change is checked through the
project it belongs to.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from ws_gateway import queries as q
from ws_gateway.errors import UnknownProject

TOKEN_PREFIX = "sy_"  # noqa: S105 - a marker, not a secret
TOKEN_BYTES = 32


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenAccess:
    token_id: int
    name: str
    # None: every project.
    project_ids: frozenset[int] | None

    def sees(self, project_id: int | None) -> bool:
        if project_id is None:
            return False
        return self.project_ids is None or project_id in self.project_ids


async def create_token(
    conn: asyncpg.Connection | asyncpg.Pool, name: str, project_ids: Sequence[int] | None = None
) -> str:
    """Store a new token for ``project_ids`` (None: every project) and return its text, shown once."""
    if project_ids is not None:
        missing = await conn.fetch(q.MISSING_PROJECTS, list(project_ids))
        if missing:
            raise UnknownProject(f"no project with id {', '.join(str(r['id']) for r in missing)}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    ids = None if project_ids is None else sorted(set(project_ids))
    await conn.fetchval(q.INSERT_TOKEN, name, hash_token(token), ids)
    return token


async def verify_token(conn: asyncpg.Connection | asyncpg.Pool, token: str | None) -> TokenAccess | None:
    """The token's access, or None when it is missing, unknown or revoked."""
    if not token:
        return None
    row = await conn.fetchrow(q.TOKEN_BY_HASH, hash_token(token))
    if row is None:
        return None
    ids = row["project_ids"]
    return TokenAccess(row["id"], row["name"], None if ids is None else frozenset(ids))


async def list_tokens(conn: asyncpg.Connection | asyncpg.Pool) -> list[asyncpg.Record]:
    """Every token's id, name, projects and dates (never its text, which is not stored)."""
    rows: list[asyncpg.Record] = await conn.fetch(q.LIST_TOKENS)
    return rows


async def revoke_token(conn: asyncpg.Connection | asyncpg.Pool, token_id: int) -> bool:
    """Revoke a token; False when there is no such token or it was revoked already. The
    gateway closes connections that use it at its next check (``gateway.poll_interval``)."""
    return await conn.fetchval(q.REVOKE_TOKEN, token_id) is not None


async def revoked_among(conn: asyncpg.Connection | asyncpg.Pool, token_ids: Sequence[int]) -> set[int]:
    """Which of these tokens have been revoked."""
    rows = await conn.fetch(q.REVOKED_AMONG, list(token_ids))
    return {row["id"] for row in rows}


async def project_exists(conn: asyncpg.Connection | asyncpg.Pool, project_id: int) -> bool:
    exists: bool = await conn.fetchval(q.PROJECT_EXISTS, project_id)
    return exists


async def session_project(conn: asyncpg.Connection | asyncpg.Pool, session_id: int) -> int | None:
    project_id: int | None = await conn.fetchval(q.PROJECT_OF_SESSION, session_id)
    return project_id


async def task_project(conn: asyncpg.Connection | asyncpg.Pool, task_id: int) -> int | None:
    project_id: int | None = await conn.fetchval(q.PROJECT_OF_TASK, task_id)
    return project_id


async def change_project(conn: asyncpg.Connection | asyncpg.Pool, change_id: int) -> int | None:
    project_id: int | None = await conn.fetchval(q.PROJECT_OF_CHANGE, change_id)
    return project_id


async def request_project(conn: asyncpg.Connection | asyncpg.Pool, request_id: int) -> int | None:
    """The project of a permission request or question."""
    project_id: int | None = await conn.fetchval(q.PROJECT_OF_REQUEST, request_id)
    return project_id
