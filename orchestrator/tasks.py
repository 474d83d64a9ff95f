"""Submitting tasks: the single INSERT shared by the CLI, the WebSocket gateway and the README.

An SQL submitter writes exactly the same row: ``INSERT INTO tasks (project_id, input, ...)``.
A repeated ``dispatch_key`` changes nothing and returns the existing task's id. A task
submitted here without a session gets a new one in the same transaction (the session the
dispatcher would create when claiming it), so the submitter learns its id at once.

Cancelling (:func:`cancel_task`) is the same UPDATE an SQL user makes,
``UPDATE tasks SET cancel_requested_at = now()``: a pending task ends ``cancelled`` at once,
a running one is aborted by its dispatcher, which the update's NOTIFY reaches.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg

from orchestrator.errors import NotFound
from orchestrator.queue import end_pending_task
from orchestrator.turn import session_title
from ws_gateway.actions import TaskSubmission

SUBMIT_TASK = """
INSERT INTO tasks (project_id, session_id, input, agent, model, mode_id, priority,
                   max_attempts, expires_at, dispatch_key, parent_task_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (dispatch_key) DO NOTHING
RETURNING id
"""

TASK_BY_DISPATCH_KEY = "SELECT id, session_id FROM tasks WHERE dispatch_key = $1"
CREATE_SESSION = "INSERT INTO sessions (project_id, agent, model, title) VALUES ($1, $2, $3, $4) RETURNING id"

# Only the first request counts (and NOTIFYs); a finished task is left alone.
REQUEST_CANCEL = """
UPDATE tasks SET cancel_requested_at = coalesce(cancel_requested_at, now())
 WHERE id = $1 AND state IN ('pending', 'running')
RETURNING state
"""
TASK_STATE = "SELECT state FROM tasks WHERE id = $1"

LIST_TASKS = """
SELECT id, project_id, session_id, state, agent, model, attempt, created_at, ended_at,
       failure_reason, error, left(input, 60) AS input
  FROM tasks
 WHERE ($1::bigint IS NULL OR session_id = $1)
   AND ($2::text IS NULL OR state = $2)
 ORDER BY id DESC
 LIMIT $3
"""


@dataclass(frozen=True)
class Submitted:
    task_id: int
    # False when the dispatch_key was already taken and nothing was inserted.
    created: bool
    # None only for an existing task (dispatch_key seen) that was inserted without a session
    # and has not been claimed yet.
    session_id: int | None = None


class _DispatchKeyTaken(Exception):
    """Another submitter inserted the same dispatch_key meanwhile: undo our new session."""


@contextlib.asynccontextmanager
async def _connection(db: asyncpg.Connection | asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            yield conn
    else:
        yield db


async def submit_task(db: asyncpg.Connection | asyncpg.Pool, task: TaskSubmission) -> Submitted:
    async with _connection(db) as conn:
        try:
            async with conn.transaction():
                return await _submit(conn, task)
        except _DispatchKeyTaken:
            pass
        existing = await conn.fetchrow(TASK_BY_DISPATCH_KEY, task.dispatch_key)
    return Submitted(existing["id"], created=False, session_id=existing["session_id"])


async def _submit(conn: asyncpg.Connection, task: TaskSubmission) -> Submitted:
    session_id = task.session_id
    if session_id is None:
        if task.dispatch_key is not None:
            existing = await conn.fetchrow(TASK_BY_DISPATCH_KEY, task.dispatch_key)
            if existing is not None:
                return Submitted(existing["id"], created=False, session_id=existing["session_id"])
        session_id = await conn.fetchval(
            CREATE_SESSION, task.project_id, task.agent, task.model, session_title(task.input)
        )
    task_id = await conn.fetchval(
        SUBMIT_TASK,
        task.project_id,
        session_id,
        task.input,
        task.agent,
        task.model,
        task.mode_id,
        task.priority,
        task.max_attempts,
        task.expires_at,
        task.dispatch_key,
        task.parent_task_id,
    )
    if task_id is None:
        raise _DispatchKeyTaken
    return Submitted(task_id, created=True, session_id=session_id)


async def list_tasks(
    conn: asyncpg.Connection | asyncpg.Pool, session_id: int | None = None, state: str | None = None, limit: int = 20
) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(LIST_TASKS, session_id, state, limit)
    return rows


async def cancel_task(conn: asyncpg.Connection, task_id: int) -> str:
    """Cancel a task; returns its state now: ``cancelled`` for a pending one, ``running`` while
    its dispatcher aborts it, or the state it had already finished in."""
    async with conn.transaction():
        state: str | None = await conn.fetchval(REQUEST_CANCEL, task_id)
        if state is None:
            state = await conn.fetchval(TASK_STATE, task_id)
            if state is None:
                raise NotFound(f"no task {task_id}")
            return state
        if state == "pending" and await end_pending_task(conn, task_id) is not None:
            return "cancelled"
    return state
