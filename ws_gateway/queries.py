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
PROJECT_OF_REQUEST = "SELECT project_id FROM permission_requests WHERE id = $1"
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
# Requests of the session waiting for a person (their permission_request / question frames are in
# the log too).
SNAPSHOT_OPEN_REQUESTS = """
SELECT id AS request_id, kind, task_id, message_id, tool_call_id, permission, tool_kind, title, command, paths,
       options, questions, created_at, expires_at
  FROM permission_requests WHERE session_id = $1 AND state = 'pending'
 ORDER BY id
"""
SNAPSHOT_PENDING_CHANGE = """
SELECT id AS change_id, task_id, agent, status, base_commit, files, truncated, created_at
  FROM pending_changes WHERE session_id = $1 AND status = 'pending'
"""

# Discovery: projects, session summaries, a session's tasks (ws_gateway.discovery).
LIST_PROJECTS = """
SELECT p.id, p.name, p.repo_path, p.default_branch, p.created_at,
       (SELECT count(*) FROM sessions s WHERE s.project_id = p.id) AS sessions
  FROM projects p
 WHERE $1::bigint[] IS NULL OR p.id = ANY($1::bigint[])
 ORDER BY p.name, p.id
"""

PROJECTS_EXISTING = "SELECT id FROM projects WHERE id = ANY($1::bigint[])"

# Session summaries: what a session list shows. One statement for every use, its filters
# NULL when unused: the sessions of some projects ($1), only some sessions ($2), only those
# changed since ($3: active, created, or with queued tasks), the page after a cursor ($4, $5),
# at most $6 rows. ``cursor_us`` orders pages exactly (microseconds, as PostgreSQL stores them).
SESSION_SUMMARIES = """
SELECT s.id, s.project_id, s.title, s.agent, s.model, s.status, s.last_seq, s.created_at, s.last_active_at,
       (extract(epoch FROM s.last_active_at) * 1000000)::bigint AS cursor_us,
       (SELECT json_build_object('task_id', t.id, 'state', t.state, 'attempt', t.attempt,
                                 'failure_reason', t.failure_reason, 'error', t.error,
                                 'created_at', t.created_at, 'ended_at', t.ended_at)
          FROM tasks t WHERE t.session_id = s.id ORDER BY t.id DESC LIMIT 1) AS last_task,
       (SELECT t.id FROM tasks t WHERE t.session_id = s.id AND t.state = 'running') AS running_task_id,
       (SELECT count(*) FROM tasks t WHERE t.session_id = s.id AND t.state = 'pending') AS queued_tasks,
       (SELECT json_build_object('change_id', c.id, 'task_id', c.task_id, 'files', jsonb_array_length(c.files),
                                 'additions', (SELECT coalesce(sum((f->>'additions')::bigint), 0)
                                                 FROM jsonb_array_elements(c.files) f),
                                 'deletions', (SELECT coalesce(sum((f->>'deletions')::bigint), 0)
                                                 FROM jsonb_array_elements(c.files) f),
                                 'created_at', c.created_at)
          FROM pending_changes c WHERE c.session_id = s.id AND c.status = 'pending') AS pending_change
  FROM sessions s
 WHERE s.project_id = ANY($1::bigint[])
   AND ($2::bigint[] IS NULL OR s.id = ANY($2::bigint[]))
   AND ($3::timestamptz IS NULL OR s.last_active_at >= $3 OR s.created_at >= $3
        OR EXISTS (SELECT 1 FROM tasks t WHERE t.session_id = s.id AND t.state = 'pending'))
   AND ($4::bigint IS NULL
        OR ((extract(epoch FROM s.last_active_at) * 1000000)::bigint, s.id) < ($4::bigint, $5::bigint))
 ORDER BY s.last_active_at DESC, s.id DESC
 LIMIT $6
"""

TASKS_BY_ID = """
SELECT id, state, input, agent, model, mode_id, priority, attempt, failure_reason, error,
       created_at, started_at, ended_at, cancel_requested_at
  FROM tasks WHERE session_id = $1 AND id = ANY($2::bigint[])
 ORDER BY id
"""

DATABASE_NOW = "SELECT now()"
