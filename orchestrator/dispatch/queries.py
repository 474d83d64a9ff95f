"""SQL of the dispatch engine: the queue (claim, leases, recovery, ending tasks) and a turn's writes.

Every change of ``tasks.state`` is one of the queue's statements here (CLAIM_TASKS,
RECOVER_TASKS, END_PENDING_*, FINISH_TURN), run by orchestrator.dispatch.queue only. A turn's
other writes (messages, tool calls, the upstream agent session) run in transactions that also
check the turn's claim.
"""

from __future__ import annotations

# The claim is written (and its connection configured, see CLAIM_CONNECTION_SETTINGS) so that it
# has a single plan: walk tasks_pending_claim_idx in claim order, probe the per-session indexes for
# each row (OFFSET 0 keeps the NOT EXISTS as per-row subplans instead of joins), and stop at the
# first ``$3`` claimable rows. Only a session's oldest pending task qualifies, so every claimed
# row is of a different session. The answer carries what the turn needs from the session too
# (its last ``$4`` complete messages and the agent's upstream session, agent NULL read as
# ``$5``), so a turn costs no further read.
CLAIM_TASKS = """
WITH candidates AS (
    SELECT t.id
      FROM tasks t
     WHERE t.state = 'pending'
       AND (t.not_before IS NULL OR t.not_before <= now())
       AND NOT EXISTS (SELECT 1 FROM tasks r
                        WHERE r.session_id = t.session_id AND r.state = 'running'
                       OFFSET 0)
       AND NOT EXISTS (SELECT 1 FROM tasks o
                        WHERE o.session_id = t.session_id AND o.state = 'pending'
                          AND (o.created_at, o.id) < (t.created_at, t.id)
                       OFFSET 0)
       -- Session affinity: not while its worktree is on another node that holds it (live, not drained).
       AND NOT EXISTS (SELECT 1 FROM session_worktrees w
                        WHERE w.session_id = t.session_id AND w.status = 'active' AND w.node_id <> $6
                          AND switchyard_node_holds(w.node_id)
                       OFFSET 0)
       -- Capabilities: an agent this node runs ($7); else only if no live node runs it, and then
       -- at once for a name nobody knows (unknown_agent), else after $9 s of waiting (agent_unavailable).
       AND (coalesce(t.agent, $5) = ANY ($7::text[])
            OR (NOT EXISTS (SELECT 1 FROM nodes n
                             WHERE coalesce(t.agent, $5) = ANY (n.agents) AND switchyard_node_holds(n.id))
                AND (t.created_at <= now() - make_interval(secs => $9)
                     OR (coalesce(t.agent, $5) <> ALL ($8::text[])
                         AND NOT EXISTS (SELECT 1 FROM nodes n WHERE coalesce(t.agent, $5) = ANY (n.agents))))))
       -- Reach: a project this node can reach ($10: those it cannot), else only when no live node
       -- can (then at once: it fails repository_missing or worktree_error, as on one machine).
       AND (t.project_id <> ALL ($10::bigint[])
            OR NOT EXISTS (SELECT 1 FROM nodes n
                            WHERE t.project_id <> ALL (n.unreachable_projects) AND switchyard_node_holds(n.id)))
     ORDER BY t.priority DESC, t.created_at, t.id
     LIMIT $3
       FOR UPDATE SKIP LOCKED
),
claimed AS (
    UPDATE tasks t
       SET state = 'running',
           attempt = t.attempt + 1,
           claimed_by = $1,
           claim_token = gen_random_uuid(),
           started_at = clock_timestamp(),
           lease_expires_at = clock_timestamp() + make_interval(secs => $2),
           not_before = NULL,
           waiting_for = NULL,
           -- After a turn that overflowed its context, the next one starts fresh.
           fresh_context = t.fresh_context OR coalesce((
               SELECT p.failure_reason = 'context_overflow' FROM tasks p
                WHERE p.session_id = t.session_id AND p.id < t.id AND p.ended_at IS NOT NULL
                ORDER BY p.id DESC LIMIT 1), false)
     WHERE t.id = ANY (ARRAY(SELECT id FROM candidates))
 RETURNING t.*
),
attempts AS (
    INSERT INTO task_attempts (task_id, attempt, worker_id, claim_token, started_at)
    SELECT id, attempt, claimed_by, claim_token, started_at FROM claimed
)
SELECT c.id, c.project_id, c.session_id, c.input, c.agent, c.model, c.mode_id, c.attempt,
       c.max_attempts, c.claim_token, c.agent_options, c.fresh_context,
       c.fresh_context AND coalesce((
           SELECT p.failure_reason = 'context_overflow' FROM tasks p
            WHERE p.session_id = c.session_id AND p.id < c.id AND p.ended_at IS NOT NULL
            ORDER BY p.id DESC LIMIT 1), false) AS after_overflow,
       (SELECT p.name FROM projects p WHERE p.id = c.project_id) AS project_name,
       coalesce(c.expires_at <= now(), false) AS expired,
       c.cancel_requested_at IS NOT NULL AS cancel_requested,
       EXISTS (SELECT 1 FROM projects p WHERE p.id = c.project_id) AS project_exists,
       (SELECT p.repo_path FROM projects p WHERE p.id = c.project_id) AS repo_path,
       extract(epoch FROM c.started_at - c.created_at)::float8 AS claim_wait,
       s.project_id AS session_project_id,
       s.status AS session_status,
       CASE WHEN s.project_id = c.project_id AND NOT c.fresh_context THEN
           (SELECT coalesce(json_agg(json_build_object('role', h.role, 'content', h.content) ORDER BY h.id), '[]')
              FROM (SELECT id, role, content
                      FROM messages
                     WHERE session_id = c.session_id AND status = 'complete' AND task_id IS DISTINCT FROM c.id
                       -- A turn with a fresh context is where the conversation starts over.
                       AND created_at >= coalesce((SELECT max(f.started_at) FROM tasks f
                                                    WHERE f.session_id = c.session_id AND f.fresh_context
                                                      AND f.id < c.id), '-infinity')
                     ORDER BY id DESC
                     LIMIT $4) h)
       END AS history,
       (SELECT json_build_object('upstream_session_id', a.upstream_session_id,
                                 'config_hash', a.config_hash, 'server_key', a.server_key)
          FROM agent_sessions a
         WHERE a.session_id = c.session_id AND a.agent = coalesce(c.agent, $5)
           AND s.project_id = c.project_id AND NOT c.fresh_context) AS agent_session
  FROM claimed c
  LEFT JOIN LATERAL (SELECT project_id, status FROM sessions WHERE id = c.session_id) s ON true
"""


# Pending tasks that no live node can run say so (waiting_for, NULL again once one can); only
# the rows that change, each with its session for the task_state frame. $1: the agent of NULL.
MARK_WAITING = """
WITH changed AS (
    SELECT t.id, w.why
      FROM tasks t
     CROSS JOIN LATERAL (
           SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM nodes n
                                         WHERE coalesce(t.agent, $1) = ANY (n.agents)
                                           AND switchyard_node_holds(n.id))
                       THEN 'agent ' || coalesce(t.agent, $1) || ': no live node runs it'
                  END AS why) w
     WHERE t.state = 'pending' AND t.waiting_for IS DISTINCT FROM w.why
       -- Only the rows that change are locked (a claim of one of them wins).
       FOR UPDATE OF t SKIP LOCKED
),
marked AS (
    UPDATE tasks t SET waiting_for = c.why
      FROM changed c
     WHERE t.id = c.id
 RETURNING t.id, t.project_id, t.session_id, t.state, t.attempt, t.waiting_for
)
SELECT m.*, s.id IS NOT NULL AS frames_ok
  FROM marked m
  LEFT JOIN sessions s ON s.id = m.session_id AND s.project_id = m.project_id
"""


# A task submitted without a session gets one when it is first claimed.
CREATE_SESSION = """
WITH created AS (
    INSERT INTO sessions (project_id, agent, model, title)
    SELECT t.project_id, t.agent, t.model, $3
      FROM tasks t
     WHERE t.id = $1 AND t.claim_token = $2 AND t.state = 'running' AND t.session_id IS NULL
 RETURNING id
)
UPDATE tasks t SET session_id = created.id
  FROM created
 WHERE t.id = $1
RETURNING t.session_id
"""


# A turn's write transaction starts with this (see queue.hold_claim_of).
HOLD_CLAIM = """
SELECT pg_current_xact_id()::text FROM tasks WHERE id = $1 AND claim_token = $2 AND state = 'running' FOR KEY SHARE
"""


# Did a transaction whose COMMIT went unanswered (the connection died) commit?
TRANSACTION_STATUS = "SELECT pg_xact_status($1::text::xid8)"


# For the rest of the transaction (the dispatcher's connections otherwise allow a few seconds).
ALLOW_IDLE_IN_TRANSACTION = "SELECT set_config('idle_in_transaction_session_timeout', $1, true)"


EXTEND_LEASES = """
UPDATE tasks t
   SET lease_expires_at = clock_timestamp() + make_interval(secs => $3)
  FROM unnest($1::bigint[], $2::uuid[]) AS mine(id, claim_token)
 WHERE t.id = mine.id AND t.claim_token = mine.claim_token AND t.state = 'running'
RETURNING t.id, t.cancel_requested_at IS NOT NULL AS cancel_requested
"""


# Running tasks whose lease lapsed, or (at start-up, $1) that this worker left behind. Retried
# with backoff ($2 base, $3 cap) while attempts remain, else failed; a requested cancel wins.
RECOVER_TASKS = """
WITH expired AS (
    SELECT id,
           CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled'
                WHEN attempt < max_attempts THEN 'pending'
                ELSE 'failed' END AS next_state,
           CASE WHEN claimed_by = $1
                THEN 'left running by an earlier run of dispatcher ' || claimed_by
                ELSE 'dispatcher ' || coalesce(claimed_by, '?') || ' stopped renewing its lease' END AS why
      FROM tasks
     WHERE state = 'running' AND (lease_expires_at < clock_timestamp() OR claimed_by = $1)
       FOR UPDATE SKIP LOCKED
),
recovered AS (
    UPDATE tasks t
       SET state = e.next_state,
           lease_expires_at = NULL,
           not_before = CASE WHEN e.next_state = 'pending'
                             THEN clock_timestamp() + make_interval(secs => least($3, $2 * 2 ^ (t.attempt - 1)))
                        END,
           ended_at = CASE WHEN e.next_state = 'pending' THEN NULL ELSE clock_timestamp() END,
           failure_reason = CASE WHEN e.next_state = 'cancelled' THEN 'cancelled' ELSE 'interrupted' END,
           error = e.why
      FROM expired e
     WHERE t.id = e.id
 RETURNING t.id, t.project_id, t.session_id, t.state, t.attempt, t.failure_reason, t.error
),
attempts AS (
    UPDATE task_attempts a
       SET ended_at = clock_timestamp(), outcome = 'interrupted', failure_reason = 'interrupted', error = r.error
      FROM recovered r
     WHERE a.task_id = r.id AND a.attempt = r.attempt AND a.ended_at IS NULL
),
messages AS (
    UPDATE messages m
       SET status = 'failed', stop_reason = 'interrupted', finished_at = clock_timestamp()
      FROM recovered r
     WHERE m.session_id = r.session_id AND m.task_id = r.id AND m.status = 'streaming'
 RETURNING m.id, m.task_id
)
SELECT r.*, m.id AS message_id, s.id IS NOT NULL AS frames_ok
  FROM recovered r
  LEFT JOIN messages m ON m.task_id = r.id
  LEFT JOIN sessions s ON s.id = r.session_id AND s.project_id = r.project_id
"""


# Pending tasks that must not run any more: cancel requested, or expires_at passed.
_END_PENDING = """
WITH stale AS (
    SELECT id
      FROM tasks
     WHERE state = 'pending'
       AND (cancel_requested_at IS NOT NULL OR expires_at <= clock_timestamp())
       {only_one}
       FOR UPDATE SKIP LOCKED
),
ended AS (
    UPDATE tasks t
       SET state = CASE WHEN t.cancel_requested_at IS NOT NULL THEN 'cancelled' ELSE 'failed' END,
           failure_reason = CASE WHEN t.cancel_requested_at IS NOT NULL THEN 'cancelled' ELSE 'expired' END,
           error = CASE WHEN t.cancel_requested_at IS NOT NULL THEN 'cancelled before it ran'
                        ELSE 'not started before its expires_at (' || t.expires_at || ')' END,
           ended_at = clock_timestamp(),
           not_before = NULL
      FROM stale
     WHERE t.id = stale.id
 RETURNING t.id, t.project_id, t.session_id, t.state, t.attempt, t.failure_reason, t.error
)
SELECT e.*, NULL::bigint AS message_id, s.id IS NOT NULL AS frames_ok
  FROM ended e
  LEFT JOIN sessions s ON s.id = e.session_id AND s.project_id = e.project_id
"""


SWEEP_PENDING = _END_PENDING.format(only_one="")


END_PENDING_TASK = _END_PENDING.format(only_one="AND id = $1")


# Ends the attempt; nothing happens (no row) if the claim is no longer ours. Returns the
# transaction's id (see TRANSACTION_STATUS).
FINISH_TURN = """
WITH task AS (
    UPDATE tasks
       SET state = $3,
           lease_expires_at = NULL,
           ended_at = CASE WHEN $3 = 'pending' THEN NULL ELSE clock_timestamp() END,
           not_before = CASE WHEN $3 = 'pending' THEN clock_timestamp() + make_interval(secs => $4) END,
           -- A task handed back at shutdown ($10 'interrupted', back to pending) did not fail:
           -- its row says nothing; the attempt row keeps why it stopped.
           failure_reason = CASE WHEN $10 = 'interrupted' AND $3 = 'pending' THEN NULL ELSE $5 END,
           error = CASE WHEN $10 = 'interrupted' AND $3 = 'pending' THEN NULL ELSE $6 END,
           output_summary = coalesce($7, output_summary),
           cost_tokens = coalesce(cost_tokens, 0) + $8,
           execution_path = coalesce($9, execution_path)
     WHERE id = $1 AND claim_token = $2 AND state = 'running'
 RETURNING id, attempt
),
attempt AS (
    UPDATE task_attempts a
       SET ended_at = clock_timestamp(), outcome = $10, failure_reason = $5, error = $6
      FROM task
     WHERE a.task_id = task.id AND a.attempt = task.attempt
)
SELECT pg_current_xact_id()::text FROM task
"""


FAIL_MESSAGE = """
UPDATE messages SET status = 'failed', stop_reason = $2, finished_at = clock_timestamp()
 WHERE id = $1 AND status = 'streaming'
"""


UPSERT_AGENT_SESSION = """
INSERT INTO agent_sessions (session_id, agent, upstream_session_id, config_hash, server_key, updated_at)
VALUES ($1, $2, $3, $4, $5, now())
ON CONFLICT (session_id, agent) DO UPDATE
   SET upstream_session_id = EXCLUDED.upstream_session_id, config_hash = EXCLUDED.config_hash,
       server_key = EXCLUDED.server_key, updated_at = now()
"""


# The user's message (unless an earlier attempt stored it) and the streaming assistant message,
# in this order so ids follow the conversation.
INSERT_MESSAGES = """
INSERT INTO messages (session_id, task_id, role, content, reasoning, status, stop_reason,
                      prompt_tokens, completion_tokens, finished_at)
SELECT $1, $2, m.role, m.content, m.reasoning, m.status, m.stop_reason, m.prompt_tokens,
       m.completion_tokens, CASE WHEN m.status = 'streaming' THEN NULL ELSE clock_timestamp() END
  FROM (VALUES (1, 'user', $3::text, '', 'complete', NULL::text, NULL::int, NULL::int),
               (2, 'assistant', $5::text, $6::text, $7::text, $8::text, $9::int, $10::int))
       AS m(ord, role, content, reasoning, status, stop_reason, prompt_tokens, completion_tokens)
 WHERE m.role = 'assistant'
    OR $4::boolean
    OR NOT EXISTS (SELECT 1 FROM messages WHERE session_id = $1 AND task_id = $2 AND role = 'user')
 ORDER BY m.ord
RETURNING id, role
"""


UPDATE_MESSAGE = """
UPDATE messages
   SET content = content || $2,
       reasoning = reasoning || $3,
       status = coalesce($4, status),
       stop_reason = coalesce($5, stop_reason),
       prompt_tokens = coalesce($6, prompt_tokens),
       completion_tokens = coalesce($7, completion_tokens),
       finished_at = CASE WHEN $4::text IS NULL THEN finished_at ELSE clock_timestamp() END
 WHERE id = $1
"""


UPSERT_TOOL_CALL = """
INSERT INTO message_parts (message_id, session_id, tool_call_id, name, kind, status, input, output, locations)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (message_id, tool_call_id) DO UPDATE
   SET name = EXCLUDED.name, kind = EXCLUDED.kind, status = EXCLUDED.status, input = EXCLUDED.input,
       output = EXCLUDED.output, locations = EXCLUDED.locations, updated_at = clock_timestamp()
"""


# Tasks by state (metrics, `switchyard status`); runnable: pending and due now.
COUNT_TASKS = """
SELECT state, count(*) AS count,
       count(*) FILTER (WHERE state = 'pending' AND (not_before IS NULL OR not_before <= now())) AS runnable
  FROM tasks
 GROUP BY state
"""

OLDEST_PENDING = "SELECT extract(epoch FROM now() - min(created_at))::float8 FROM tasks WHERE state = 'pending'"

# ---------------------------------------------------------------------------- approvals
# A turn asks a person (orchestrator.dispatch.approvals). The request is inserted only while the
# asking attempt still holds the task; whoever moves it out of 'pending' first decides it (a
# reply, the timeout, a withdrawal), and the trigger NOTIFYs permission_replies on that update.

INSERT_PERMISSION_REQUEST = """
INSERT INTO permission_requests (task_id, claim_token, session_id, project_id, message_id, kind, tool_call_id,
                                 permission, tool_kind, title, command, paths, patterns, options, questions,
                                 expires_at)
SELECT t.id, t.claim_token, s.id, s.project_id, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
       clock_timestamp() + make_interval(secs => $14)
  FROM tasks t JOIN sessions s ON s.id = t.session_id
 WHERE t.id = $1 AND t.claim_token = $2 AND t.state = 'running'
RETURNING id, expires_at
"""

READ_PERMISSION_REQUEST = "SELECT * FROM permission_requests WHERE id = $1"

# The turn's own ending of a request nobody decided: expired at its deadline, or withdrawn.
CLOSE_PERMISSION_REQUEST = """
UPDATE permission_requests
   SET state = $2, option_id = $3, decided_at = clock_timestamp(), reason = $4
 WHERE id = $1 AND state = 'pending'
RETURNING *
"""

SESSION_GRANTS = "SELECT tool_kind, pattern, granted_by FROM permission_grants WHERE session_id = $1"

# Requests whose attempt no longer runs (its dispatcher died, the task was recovered): withdrawn.
WITHDRAW_ORPHAN_REQUESTS = """
UPDATE permission_requests r
   SET state = 'withdrawn', decided_at = clock_timestamp(), reason = 'the turn that asked is gone'
 WHERE r.state = 'pending'
   AND NOT EXISTS (SELECT 1 FROM tasks t
                    WHERE t.id = r.task_id AND t.claim_token = r.claim_token AND t.state = 'running')
RETURNING *
"""

# A fresh turn's upstream session is not continued by later turns unless it made a new one.
FORGET_AGENT_SESSION = "DELETE FROM agent_sessions WHERE session_id = $1 AND agent = $2"

# The catalogue: what an agent's session advertised (written only when it changed).
ADVERTISE_AGENT = """
UPDATE available_agents
   SET models = CASE WHEN jsonb_array_length($2::jsonb) > 0 THEN $2::jsonb ELSE models END,
       modes = $3::jsonb, config_options = $4::jsonb, advertised_at = now()
 WHERE name = $1
   AND (models IS DISTINCT FROM (CASE WHEN jsonb_array_length($2::jsonb) > 0 THEN $2::jsonb ELSE models END)
        OR modes IS DISTINCT FROM $3::jsonb OR config_options IS DISTINCT FROM $4::jsonb)
"""
