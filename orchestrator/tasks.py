"""Submitting tasks: the single INSERT shared by the CLI, the WebSocket gateway and the README.

An SQL submitter writes exactly the same row: ``INSERT INTO tasks (project_id, input, ...)``.
A ``dispatch_key`` repeated within the project changes nothing and returns that project's
existing task; the same key in another project is another task.

Cancelling (:func:`cancel_task`) is the same UPDATE an SQL user makes,
``UPDATE tasks SET cancel_requested_at = now()``: a pending task ends ``cancelled`` at once,
a running one is aborted by its dispatcher, which the update's NOTIFY reaches.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from orchestrator.errors import NotFound
from orchestrator.queue import end_pending_task
from ws_gateway.actions import TaskSubmission

SUBMIT_TASK = """
INSERT INTO tasks (project_id, session_id, input, agent, model, mode_id, priority,
                   max_attempts, expires_at, dispatch_key, parent_task_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (project_id, dispatch_key) DO NOTHING
RETURNING id
"""

TASK_BY_DISPATCH_KEY = "SELECT id FROM tasks WHERE project_id = $1 AND dispatch_key = $2"

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


async def submit_task(conn: asyncpg.Connection | asyncpg.Pool, task: TaskSubmission) -> Submitted:
    task_id = await conn.fetchval(
        SUBMIT_TASK,
        task.project_id,
        task.session_id,
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
    if task_id is not None:
        return Submitted(task_id, created=True)
    existing = await conn.fetchval(TASK_BY_DISPATCH_KEY, task.project_id, task.dispatch_key)
    return Submitted(existing, created=False)


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
