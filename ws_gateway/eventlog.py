"""The durable per-session frame log (``session_events``).

Appending bumps ``sessions.last_seq`` and inserts the rows in one statement: the row lock on
the session orders concurrent writers, and the events commit together with the bump, so a
reader that sees seq N has every seq below it. The insert trigger NOTIFYs
``session_events`` with ``'<session_id>:<seq>'``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

APPEND_EVENTS = """
WITH bumped AS (
    UPDATE sessions
       SET last_seq = last_seq + cardinality($2::text[]), last_active_at = now()
     WHERE id = $1
 RETURNING last_seq - cardinality($2::text[]) AS first_seq
)
INSERT INTO session_events (session_id, seq, type, payload)
SELECT $1, bumped.first_seq + e.ord, e.type, e.payload::jsonb
  FROM bumped, unnest($2::text[], $3::text[]) WITH ORDINALITY AS e(type, payload, ord)
RETURNING seq
"""

READ_EVENTS = """
SELECT seq, type, payload, created_at
  FROM session_events
 WHERE session_id = $1 AND seq > $2
 ORDER BY seq
 LIMIT $3
"""


@dataclass(frozen=True)
class StoredEvent:
    session_id: int
    seq: int
    type: str
    payload: dict[str, Any]


async def append_events(
    conn: asyncpg.Connection | asyncpg.Pool, session_id: int, events: Sequence[tuple[str, dict[str, Any]]]
) -> list[int]:
    """Append events in order; returns their seqs (empty if the session does not exist)."""
    if not events:
        return []
    rows = await conn.fetch(
        APPEND_EVENTS,
        session_id,
        [type_ for type_, _ in events],
        [json.dumps(payload) for _, payload in events],
    )
    return sorted(row["seq"] for row in rows)


async def append_event(
    conn: asyncpg.Connection | asyncpg.Pool, session_id: int, type_: str, payload: dict[str, Any]
) -> int:
    seqs = await append_events(conn, session_id, [(type_, payload)])
    if not seqs:
        raise LookupError(f"session {session_id} does not exist")
    return seqs[0]


async def read_events(
    conn: asyncpg.Connection | asyncpg.Pool, session_id: int, after_seq: int, limit: int = 1000
) -> list[StoredEvent]:
    rows = await conn.fetch(READ_EVENTS, session_id, after_seq, limit)
    return [StoredEvent(session_id, row["seq"], row["type"], row["payload"]) for row in rows]
