"""SQL of the services the CLI and the gateway call: tasks, projects, agents.

A task's state is never written here: a cancel only sets ``cancel_requested_at`` and leaves
ending a pending task to orchestrator.dispatch.queue.
"""

from __future__ import annotations

SUBMIT_TASK = """
INSERT INTO tasks (project_id, session_id, input, agent, model, mode_id, priority,
                   max_attempts, expires_at, dispatch_key, parent_task_id, agent_options, fresh_context)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT (project_id, dispatch_key) DO NOTHING
RETURNING id
"""


TASK_BY_DISPATCH_KEY = "SELECT id, session_id FROM tasks WHERE project_id = $1 AND dispatch_key = $2"

CREATE_SESSION = "INSERT INTO sessions (project_id, agent, model, title) VALUES ($1, $2, $3, $4) RETURNING id"


# Only the first request counts (and NOTIFYs); a finished task is left alone.
REQUEST_CANCEL = """
UPDATE tasks SET cancel_requested_at = coalesce(cancel_requested_at, now())
 WHERE id = $1 AND state IN ('pending', 'running')
RETURNING state
"""


TASK_STATE = "SELECT state FROM tasks WHERE id = $1"


# Whole rows: `switchyard tasks --json` is for programs (the table view shortens the input).
LIST_TASKS = """
SELECT *
  FROM tasks
 WHERE ($1::bigint IS NULL OR session_id = $1)
   AND ($2::text IS NULL OR state = $2)
 ORDER BY id DESC
 LIMIT $3
"""


ADD_PROJECT = """
INSERT INTO projects (name, repo_path, default_branch, remote_url) VALUES ($1, $2, $3, $4)
RETURNING id
"""


LIST_PROJECTS = "SELECT id, name, repo_path, remote_url, default_branch, created_at FROM projects ORDER BY id"


PROJECT_BY_REF = "SELECT id FROM projects WHERE id::text = $1 OR name = $1 ORDER BY id LIMIT 1"


# $7: the models configuration gives the agent (opencode's), or NULL to keep what it advertised.
UPSERT_AVAILABLE_AGENT = """
INSERT INTO available_agents (name, transport, command, version, available, detail, checked_at, models)
VALUES ($1, $2, $3, $4, $5, $6, now(), coalesce($7::jsonb, '[]'::jsonb))
ON CONFLICT (name) DO UPDATE
   SET transport = EXCLUDED.transport, command = EXCLUDED.command, version = EXCLUDED.version,
       available = EXCLUDED.available, detail = EXCLUDED.detail, checked_at = EXCLUDED.checked_at,
       models = coalesce($7::jsonb, available_agents.models)
"""


DELETE_UNCONFIGURED_AGENTS = "DELETE FROM available_agents WHERE NOT (name = ANY($1::text[]))"


LIST_AVAILABLE_AGENTS = """
SELECT name, transport, command, version, available, detail, checked_at, models, modes, config_options
  FROM available_agents ORDER BY name
"""


# The agent, model and mode of the turn that made a change (else the session's), for the task
# a review queues in its session.
REVIEW_TASK_CONTEXT = """
SELECT s.project_id,
       CASE WHEN t.id IS NULL THEN s.agent ELSE t.agent END AS agent,
       CASE WHEN t.id IS NULL THEN s.model ELSE t.model END AS model,
       t.mode_id
  FROM pending_changes c
  JOIN sessions s ON s.id = c.session_id
  LEFT JOIN tasks t ON t.id = c.task_id
 WHERE c.id = $1
"""


LINK_REVIEW_TASK = "UPDATE tasks SET review_change_id = $2 WHERE id = $1"
# ---------------------------------------------------------------------------- approvals
# A person's reply (orchestrator.services.approvals): the request row is locked, so of two
# replies the second sees the first's decision.

LOCK_PERMISSION_REQUEST = """
SELECT r.*, EXISTS (SELECT 1 FROM tasks t
                     WHERE t.id = r.task_id AND t.claim_token = r.claim_token AND t.state = 'running') AS turn_alive
  FROM permission_requests r
 WHERE r.id = $1
   FOR UPDATE OF r
"""

DECIDE_PERMISSION_REQUEST = """
UPDATE permission_requests
   SET state = $2, option_id = $3, remember = $4, answers = $5, decided_by = $6, decided_at = clock_timestamp(),
       reason = $7
 WHERE id = $1 AND state = 'pending'
RETURNING *
"""

INSERT_GRANT = """
INSERT INTO permission_grants (session_id, tool_kind, pattern, request_id, granted_by)
SELECT $1, $2, pattern, $3, $4 FROM unnest($5::text[]) AS pattern
ON CONFLICT DO NOTHING
"""

# The catalogue: what each configured agent offers.
LIST_CATALOGUE = """
SELECT name, transport, version, available, detail, models, modes, config_options, checked_at, advertised_at
  FROM available_agents ORDER BY name
"""

AGENT_CONFIG_OPTIONS = "SELECT config_options FROM available_agents WHERE name = $1"
