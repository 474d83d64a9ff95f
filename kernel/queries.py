"""SQL of the kernel: the session event log."""

from __future__ import annotations

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
