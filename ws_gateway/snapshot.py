"""The ``snapshot`` frame: where a session stands, for a client that subscribes without a seq.

Read in one repeatable-read transaction, so ``last_seq`` matches the rows: the session's
events up to ``last_seq`` committed together with the bump of ``sessions.last_seq``, and the
client continues from there with every later frame.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from ws_gateway import queries as q
from ws_gateway.frames import ServerFrame, SnapshotFrame


def jsonable(row: asyncpg.Record) -> dict[str, Any]:
    return {key: value.isoformat() if isinstance(value, datetime) else value for key, value in row.items()}


async def read_snapshot(conn: asyncpg.Connection, session_id: int, message_limit: int) -> SnapshotFrame | None:
    """The snapshot frame of a session, or None if it does not exist."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        session = await conn.fetchrow(q.SNAPSHOT_SESSION, session_id)
        if session is None:
            return None
        messages = [jsonable(row) for row in await conn.fetch(q.SNAPSHOT_MESSAGES, session_id, message_limit)]
        parts = await conn.fetch(q.SNAPSHOT_PARTS, [m["id"] for m in messages])
        tasks = await conn.fetch(q.SNAPSHOT_OPEN_TASKS, session_id)
        change = await conn.fetchrow(q.SNAPSHOT_PENDING_CHANGE, session_id)
        requests = await conn.fetch(q.SNAPSHOT_OPEN_REQUESTS, session_id)
    by_message: dict[int, list[dict[str, Any]]] = {m["id"]: [] for m in messages}
    for part in parts:
        by_message[part["message_id"]].append({k: v for k, v in part.items() if k != "message_id"})
    for message in messages:
        message["parts"] = by_message[message["id"]]
    return SnapshotFrame(
        type=ServerFrame.SNAPSHOT,
        session_id=session_id,
        last_seq=session["last_seq"],
        session=jsonable(session),
        messages=messages,
        tasks=[jsonable(row) for row in tasks],
        pending_change=None if change is None else jsonable(change),
        open_requests=[jsonable(row) for row in requests],
    )
