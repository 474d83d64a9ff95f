"""Submitting tasks: the single INSERT shared by the CLI, the WebSocket gateway and the README.

An SQL submitter writes exactly the same row: ``INSERT INTO tasks (project_id, input, ...)``.
A ``dispatch_key`` repeated within the project changes nothing and returns that project's
existing task; the same key in another project is another task. A task
submitted here without a session gets a new one in the same transaction (the session the
dispatcher would create when claiming it), so the submitter learns its id at once.

Cancelling (:func:`cancel_task`) is the same UPDATE an SQL user makes,
``UPDATE tasks SET cancel_requested_at = now()``: a pending task ends ``cancelled`` at once,
a running one is aborted by its dispatcher, which the update's NOTIFY reaches.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from orchestrator.dispatch.queue import end_pending_task
from orchestrator.dispatch.turn import session_title
from orchestrator.errors import BadInput, NotFound
from orchestrator.services import queries as q
from ws_gateway import TaskSubmission


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
    """Insert the task; BadInput when its agent options are not what its agent offers."""
    async with _connection(db) as conn:
        if task.agent_options:
            await check_agent_options(conn, task.agent, task.agent_options)
        try:
            async with conn.transaction():
                return await _submit(conn, task)
        except _DispatchKeyTaken:
            pass
        existing = await conn.fetchrow(q.TASK_BY_DISPATCH_KEY, task.project_id, task.dispatch_key)
    return Submitted(existing["id"], created=False, session_id=existing["session_id"])


async def _submit(conn: asyncpg.Connection, task: TaskSubmission) -> Submitted:
    session_id = task.session_id
    if session_id is None:
        if task.dispatch_key is not None:
            existing = await conn.fetchrow(q.TASK_BY_DISPATCH_KEY, task.project_id, task.dispatch_key)
            if existing is not None:
                return Submitted(existing["id"], created=False, session_id=existing["session_id"])
        session_id = await conn.fetchval(
            q.CREATE_SESSION, task.project_id, task.agent, task.model, session_title(task.input)
        )
    task_id = await conn.fetchval(
        q.SUBMIT_TASK,
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
        dict(task.agent_options),
        task.fresh_context,
    )
    if task_id is None:
        raise _DispatchKeyTaken
    return Submitted(task_id, created=True, session_id=session_id)


async def check_agent_options(conn: asyncpg.Connection, agent: str | None, options: Mapping[str, str | bool]) -> None:
    """Refuse options the agent does not offer, as far as the catalogue knows (an agent that has
    advertised nothing yet is checked by its turn, which fails with ``bad_input``)."""
    if agent is None or agent == "native":
        raise BadInput(f"native inference offers no agent options ({', '.join(options)})")
    row = await conn.fetchrow(q.AGENT_CONFIG_OPTIONS, agent)
    if row is None or not row["config_options"]:
        return
    offered: list[Mapping[str, Any]] = row["config_options"]
    for key, value in options.items():
        option = next((o for o in offered if o.get("id") == key), None) or next(
            (o for o in offered if o.get("category") == key), None
        )
        if option is None:
            ids = ", ".join(sorted(str(o.get("id")) for o in offered))
            raise BadInput(f"agent {agent!r} has no option {key!r} (it offers: {ids})")
        if option.get("type") == "boolean":
            if not isinstance(value, bool):
                raise BadInput(f"agent {agent!r} option {key!r} is true or false, not {value!r}")
            continue
        values = [choice.get("value") for choice in _choices(option.get("options") or [])]
        if value not in values:
            raise BadInput(
                f"agent {agent!r} option {key!r} must be one of {', '.join(map(str, values))}, not {value!r}"
            )


def _choices(options: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """A select option's choices, groups flattened."""
    flat: list[Mapping[str, Any]] = []
    for item in options:
        flat += item.get("options") or [] if "group" in item else [item]
    return flat


async def list_tasks(
    conn: asyncpg.Connection | asyncpg.Pool, session_id: int | None = None, state: str | None = None, limit: int = 20
) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(q.LIST_TASKS, session_id, state, limit)
    return rows


async def cancel_task(conn: asyncpg.Connection, task_id: int) -> str:
    """Cancel a task; returns its state now: ``cancelled`` for a pending one, ``running`` while
    its dispatcher aborts it, or the state it had already finished in."""
    async with conn.transaction():
        state: str | None = await conn.fetchval(q.REQUEST_CANCEL, task_id)
        if state is None:
            state = await conn.fetchval(q.TASK_STATE, task_id)
            if state is None:
                raise NotFound(f"no task {task_id}")
            return state
        if state == "pending" and await end_pending_task(conn, task_id) is not None:
            return "cancelled"
    return state
