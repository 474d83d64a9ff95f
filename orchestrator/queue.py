"""The task queue in SQL: claim, leases, recovery, and ending tasks that never ran.

Every state change of a task is one statement here, so any number of dispatcher processes can
share a database. Guarantees, and what provides them:

- One running turn per session: the claim only takes a session's oldest pending task
  (FIFO) and only when the session has no running task; the partial unique index
  ``tasks_one_running_per_session`` refuses whatever a race would let through; the loser
  simply claims again.
- A task runs once per attempt: ``FOR UPDATE SKIP LOCKED`` hands each row to one claimer,
  and every later write of the turn checks ``claim_token``, so a turn whose lease was
  recovered by someone else can no longer change the task.
- Nothing stays running: the owner renews ``lease_expires_at``; once it lapses any
  dispatcher moves the task back to ``pending`` (when attempts remain) or to ``failed`` with
  ``failure_reason = 'interrupted'``.

``tasks.attempt`` counts claims: the claim increments it and writes the ``task_attempts`` row
of that attempt, so a task may be retried while ``attempt < max_attempts``. Timestamps of
attempts come from ``clock_timestamp()``: a turn's ``ended_at`` is taken before its commit
and the next claim's ``started_at`` after its snapshot, so a session's attempts never overlap.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import asyncpg

from backends.base import AgentSession, HistoryMessage
from orchestrator import db, payloads
from orchestrator.payloads import Frame
from orchestrator.routing import NATIVE
from ws_gateway.eventlog import append_events

# A claim that loses the one-running-per-session race is repeated at once this often.
CLAIM_RACE_RETRIES = 3

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
           not_before = NULL
     WHERE t.id = ANY (ARRAY(SELECT id FROM candidates))
 RETURNING t.*
),
attempts AS (
    INSERT INTO task_attempts (task_id, attempt, worker_id, claim_token, started_at)
    SELECT id, attempt, claimed_by, claim_token, started_at FROM claimed
)
SELECT c.id, c.project_id, c.session_id, c.input, c.agent, c.model, c.mode_id, c.attempt,
       c.max_attempts, c.claim_token,
       coalesce(c.expires_at <= now(), false) AS expired,
       c.cancel_requested_at IS NOT NULL AS cancel_requested,
       EXISTS (SELECT 1 FROM projects p WHERE p.id = c.project_id) AS project_exists,
       s.project_id AS session_project_id,
       s.status AS session_status,
       CASE WHEN s.project_id = c.project_id THEN
           (SELECT coalesce(json_agg(json_build_object('role', h.role, 'content', h.content) ORDER BY h.id), '[]')
              FROM (SELECT id, role, content
                      FROM messages
                     WHERE session_id = c.session_id AND status = 'complete' AND task_id IS DISTINCT FROM c.id
                     ORDER BY id DESC
                     LIMIT $4) h)
       END AS history,
       (SELECT json_build_object('upstream_session_id', a.upstream_session_id,
                                 'config_hash', a.config_hash, 'server_key', a.server_key)
          FROM agent_sessions a
         WHERE a.session_id = c.session_id AND a.agent = coalesce(c.agent, $5)
           AND s.project_id = c.project_id) AS agent_session
  FROM claimed c
  LEFT JOIN LATERAL (SELECT project_id, status FROM sessions WHERE id = c.session_id) s ON true
"""

# Planner settings of the connection that claims. With them PostgreSQL cannot fall back to
# scanning and sorting every pending task, which it does when its statistics are stale (a young
# table, a burst of inserts before autovacuum's next ANALYZE) at hundreds of milliseconds per
# claim. They are set on this one connection only.
CLAIM_CONNECTION_SETTINGS = {
    "enable_seqscan": "off",
    "enable_bitmapscan": "off",
    "enable_sort": "off",
    "enable_hashjoin": "off",
    "enable_mergejoin": "off",
    "enable_material": "off",
    # A disabled plan node costs 1e10, which would otherwise trip JIT compilation (~300 ms).
    "jit": "off",
}

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


@dataclass(frozen=True)
class ClaimedTask:
    id: int
    project_id: int | None
    session_id: int | None
    input: str
    agent: str | None
    model: str | None
    mode_id: str | None
    attempt: int
    max_attempts: int
    claim_token: uuid.UUID
    expired: bool
    cancel_requested: bool
    project_exists: bool
    # The referenced session's project and status; None when the session does not exist.
    session_project_id: int | None
    session_status: str | None
    # Earlier complete messages of the session, oldest first (empty unless session_ok).
    history: tuple[HistoryMessage, ...] = ()
    agent_session: AgentSession | None = None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> ClaimedTask:
        fields = dict(row)
        fields["history"] = tuple(HistoryMessage(m["role"], m["content"]) for m in fields["history"] or ())
        found = fields["agent_session"]
        fields["agent_session"] = AgentSession(**found) if found else None
        return cls(**fields)

    @property
    def session_ok(self) -> bool:
        """The task names an existing session of its own project (so its frames may go there)."""
        return (
            self.session_id is not None and self.project_id is not None and self.session_project_id == self.project_id
        )


@dataclass(frozen=True)
class Transition:
    """A task the queue moved on its own (recovered, expired, cancelled while pending)."""

    task_id: int
    session_id: int | None
    state: str
    attempt: int
    failure_reason: str | None
    error: str | None


async def connect_claimer(database_url: str, application_name: str) -> asyncpg.Connection:
    """A connection for :func:`claim_tasks` (see CLAIM_CONNECTION_SETTINGS)."""
    settings = {**CLAIM_CONNECTION_SETTINGS, "application_name": application_name}
    return await db.connect(database_url, server_settings=settings)


async def claim_tasks(
    conn: asyncpg.Connection, worker_id: str, lease_seconds: float, limit: int, history_messages: int
) -> list[ClaimedTask]:
    """Claim up to ``limit`` runnable tasks, each of a different session."""
    for _ in range(CLAIM_RACE_RETRIES):
        try:
            rows = await conn.fetch(CLAIM_TASKS, worker_id, lease_seconds, limit, history_messages, NATIVE)
        except asyncpg.UniqueViolationError:
            # Another dispatcher started a turn in one of these sessions first; look again.
            continue
        return [ClaimedTask.from_row(row) for row in rows]
    return []


async def create_session(conn: asyncpg.Connection | asyncpg.Pool, task: ClaimedTask, title: str) -> int | None:
    """A new session for a claimed task without one; None if the claim is no longer ours."""
    session_id: int | None = await conn.fetchval(CREATE_SESSION, task.id, task.claim_token, title)
    return session_id


async def extend_leases(
    conn: asyncpg.Connection | asyncpg.Pool, claims: Sequence[tuple[int, uuid.UUID]], lease_seconds: float
) -> dict[int, bool]:
    """Renew the leases of our running turns: task id -> cancel requested. Missing ids are lost."""
    if not claims:
        return {}
    rows = await conn.fetch(EXTEND_LEASES, [c[0] for c in claims], [c[1] for c in claims], lease_seconds)
    return {row["id"]: row["cancel_requested"] for row in rows}


async def recover_tasks(
    pool: asyncpg.Pool, *, left_behind_by: str | None, backoff: float, backoff_max: float
) -> list[Transition]:
    """Move running tasks with a lapsed lease (or left behind by ``left_behind_by``) on."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(RECOVER_TASKS, left_behind_by, backoff, backoff_max)
        await _announce(conn, rows)
    return [_transition(row) for row in rows]


async def sweep_pending(pool: asyncpg.Pool) -> list[Transition]:
    """End pending tasks that expired or whose cancel request was missed."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(SWEEP_PENDING)
        await _announce(conn, rows)
    return [_transition(row) for row in rows]


async def end_pending_task(conn: asyncpg.Connection, task_id: int) -> Transition | None:
    """Cancel (or expire) one pending task now; None when it is not pending or is being claimed."""
    async with conn.transaction():
        rows = await conn.fetch(END_PENDING_TASK, task_id)
        await _announce(conn, rows)
    return _transition(rows[0]) if rows else None


def _transition(row: asyncpg.Record) -> Transition:
    return Transition(row["id"], row["session_id"], row["state"], row["attempt"], row["failure_reason"], row["error"])


async def _announce(conn: asyncpg.Connection, rows: Iterable[asyncpg.Record]) -> None:
    """task_state (and, for an interrupted turn, message_complete) frames of moved tasks."""
    by_session: dict[int, list[Frame]] = {}
    for row in rows:
        if not row["frames_ok"]:
            continue
        frames = by_session.setdefault(row["session_id"], [])
        if row["message_id"] is not None:
            frames.append(
                payloads.message_complete(
                    row["message_id"], row["id"], "failed", "interrupted", None, None, row["error"]
                )
            )
        frames.append(payloads.task_state(row["id"], row["state"], row["attempt"], row["failure_reason"], row["error"]))
    for session_id, frames in by_session.items():
        await append_events(conn, session_id, frames)
