"""The ``snapshot`` frame: where a session stands, for a client that subscribes without a seq.

Read in one repeatable-read transaction, so ``last_seq`` matches the rows: the session's
events up to ``last_seq`` committed together with the bump of ``sessions.last_seq``, and the
client continues from there with every later frame.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from ws_gateway.frames import ServerFrame

SESSION = """
SELECT id, project_id, title, agent, model, status, last_seq, created_at, last_active_at
  FROM sessions WHERE id = $1
"""
RECENT_MESSAGES = """
SELECT * FROM (
    SELECT id, task_id, role, content, reasoning, status, stop_reason,
           prompt_tokens, completion_tokens, created_at, finished_at
      FROM messages WHERE session_id = $1 ORDER BY id DESC LIMIT $2
) recent ORDER BY id
"""
MESSAGE_PARTS = """
SELECT message_id, tool_call_id, name, kind, status, input, output, locations
  FROM message_parts WHERE message_id = ANY($1::bigint[]) ORDER BY id
"""
OPEN_TASKS = """
SELECT id, state, input, agent, model, mode_id, priority, attempt,
       created_at, started_at, cancel_requested_at
  FROM tasks WHERE session_id = $1 AND state IN ('pending', 'running')
 ORDER BY created_at, id
"""
PENDING_CHANGE = """
SELECT id AS change_id, task_id, agent, status, base_commit, files, truncated, created_at
  FROM pending_changes WHERE session_id = $1 AND status = 'pending'
"""


def jsonable(row: asyncpg.Record) -> dict[str, Any]:
    return {key: value.isoformat() if isinstance(value, datetime) else value for key, value in row.items()}


async def read_snapshot(conn: asyncpg.Connection, session_id: int, message_limit: int) -> dict[str, Any] | None:
    """The snapshot frame of a session, or None if it does not exist."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        session = await conn.fetchrow(SESSION, session_id)
        if session is None:
            return None
        messages = [jsonable(row) for row in await conn.fetch(RECENT_MESSAGES, session_id, message_limit)]
        parts = await conn.fetch(MESSAGE_PARTS, [m["id"] for m in messages])
        tasks = await conn.fetch(OPEN_TASKS, session_id)
        change = await conn.fetchrow(PENDING_CHANGE, session_id)
    by_message: dict[int, list[dict[str, Any]]] = {m["id"]: [] for m in messages}
    for part in parts:
        by_message[part["message_id"]].append({k: v for k, v in part.items() if k != "message_id"})
    for message in messages:
        message["parts"] = by_message[message["id"]]
    return {
        "type": ServerFrame.SNAPSHOT.value,
        "session_id": session_id,
        "last_seq": session["last_seq"],
        "session": jsonable(session),
        "messages": messages,
        "tasks": [jsonable(row) for row in tasks],
        "pending_change": None if change is None else jsonable(change),
    }
