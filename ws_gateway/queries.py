"""SQL of the gateway: tokens and what they see, session heads, new events, snapshots.

The gateway only reads, except for ``api_tokens`` (created, revoked).
"""

from __future__ import annotations

INSERT_TOKEN = """
INSERT INTO api_tokens (name, token_hash, project_ids) VALUES ($1, $2, $3)
RETURNING id
"""
MISSING_PROJECTS = """
SELECT p.id FROM unnest($1::bigint[]) AS p(id)
 WHERE NOT EXISTS (SELECT 1 FROM projects WHERE projects.id = p.id)
"""
TOKEN_BY_HASH = """
SELECT id, name, project_ids FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL
"""
LIST_TOKENS = "SELECT id, name, project_ids, created_at, revoked_at FROM api_tokens ORDER BY id"
REVOKE_TOKEN = """
UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING id
"""
REVOKED_AMONG = "SELECT id FROM api_tokens WHERE id = ANY($1::bigint[]) AND revoked_at IS NOT NULL"

# Which project a session, task or change belongs to (what a token's access is checked by).
PROJECT_EXISTS = "SELECT EXISTS (SELECT 1 FROM projects WHERE id = $1)"
PROJECT_OF_SESSION = "SELECT project_id FROM sessions WHERE id = $1"
# A task may name no project (its session decides) or a bad one (the dispatcher fails it).
PROJECT_OF_TASK = """
SELECT coalesce(t.project_id, s.project_id) AS project_id
  FROM tasks t LEFT JOIN sessions s ON s.id = t.session_id
 WHERE t.id = $1
"""
PROJECT_OF_CHANGE = """
SELECT s.project_id FROM pending_changes c JOIN sessions s ON s.id = c.session_id WHERE c.id = $1
"""

SESSION_HEADS = "SELECT id, project_id, last_seq FROM sessions WHERE id = ANY($1::bigint[])"
# Events of several sessions, each in the range (after_seq, upto_seq], in one round trip.
READ_NEW_EVENTS = """
SELECT e.session_id, e.seq, e.type, e.payload
  FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS r(session_id, after_seq, upto_seq)
  JOIN session_events e
    ON e.session_id = r.session_id AND e.seq > r.after_seq AND e.seq <= r.upto_seq
 ORDER BY e.session_id, e.seq
"""

# The snapshot frame, read in one repeatable-read transaction.
SNAPSHOT_SESSION = """
SELECT id, project_id, title, agent, model, status, last_seq, created_at, last_active_at
  FROM sessions WHERE id = $1
"""
SNAPSHOT_MESSAGES = """
SELECT * FROM (
    SELECT id, task_id, role, content, reasoning, status, stop_reason,
           prompt_tokens, completion_tokens, created_at, finished_at
      FROM messages WHERE session_id = $1 ORDER BY id DESC LIMIT $2
) recent ORDER BY id
"""
SNAPSHOT_PARTS = """
SELECT message_id, tool_call_id, name, kind, status, input, output, locations
  FROM message_parts WHERE message_id = ANY($1::bigint[]) ORDER BY id
"""
SNAPSHOT_OPEN_TASKS = """
SELECT id, state, input, agent, model, mode_id, priority, attempt,
       created_at, started_at, cancel_requested_at
  FROM tasks WHERE session_id = $1 AND state IN ('pending', 'running')
 ORDER BY created_at, id
"""
SNAPSHOT_PENDING_CHANGE = """
SELECT id AS change_id, task_id, agent, status, base_commit, files, truncated, created_at
  FROM pending_changes WHERE session_id = $1 AND status = 'pending'
"""
