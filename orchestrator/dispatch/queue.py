"""The task queue in SQL: claim, leases, recovery, and ending tasks that never ran.

Every state change of a task is one statement here, so any number of dispatcher processes can
share a database. Guarantees, and what provides them:

- One running turn per session: the claim only takes a session's oldest pending task
  (FIFO) and only when the session has no running task; the partial unique index
  ``tasks_one_running_per_session`` refuses whatever a race would let through; the loser
  simply claims again.
- A task runs once per attempt: ``FOR UPDATE SKIP LOCKED`` hands each row to one claimer,
  and every later write of the turn locks its ``claim_token`` in the same transaction
  (:func:`hold_claim`, or ``FINISH_TURN`` itself), so a turn whose lease was recovered by
  someone else can no longer change the task, its session's log or its messages.
- Nothing stays running: the owner renews ``lease_expires_at``; once it lapses any
  dispatcher moves the task back to ``pending`` (when attempts remain) or to ``failed`` with
  ``failure_reason = 'interrupted'``.

- Several machines (orchestrator.db.nodes): the claim leaves a session pinned to another live
  node, and a task whose agent this node does not run while a live node does (or until
  ``unclaimable_after`` when none does); :func:`mark_waiting` keeps ``waiting_for`` saying so.

``tasks.attempt`` counts claims: the claim increments it and writes the ``task_attempts`` row
of that attempt, so a task may be retried while ``attempt < max_attempts``. Timestamps of
attempts come from ``clock_timestamp()``: a turn's ``ended_at`` is taken before its commit
and the next claim's ``started_at`` after its snapshot, so a session's attempts never overlap.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import asyncpg

from backends import AgentSession, HistoryMessage
from kernel import Event, SessionFrame, append_events, connect, message_complete, task_state
from orchestrator.dispatch import queries as q
from orchestrator.dispatch.routing import NATIVE

TASK_STATES = ("pending", "running", "completed", "failed", "cancelled")
# A claim that loses the one-running-per-session race is repeated at once this often.
CLAIM_RACE_RETRIES = 3


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
    # The project's repository (None when the project does not exist).
    repo_path: str | None = None
    # Seconds from the task's insert to this claim.
    claim_wait: float = 0.0
    # Earlier complete messages of the session, oldest first (empty unless session_ok).
    history: tuple[HistoryMessage, ...] = ()
    agent_session: AgentSession | None = None
    agent_options: dict[str, str | bool] = field(default_factory=dict)
    # No upstream session and no history for this turn; later turns continue from it.
    fresh_context: bool = False
    # ... because the session's previous turn overflowed its context (not asked for).
    after_overflow: bool = False
    project_name: str | None = None

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


class ClaimLost(Exception):
    """The task is no longer ours (its lease lapsed and someone recovered it): write nothing."""


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
    return await connect(database_url, server_settings=settings)


@dataclass(frozen=True)
class Claimant:
    """Who claims: the worker, its node, what the node runs and what it knows of (see CLAIM_TASKS)."""

    worker_id: str
    node_id: str
    agents: Sequence[str]
    known_agents: Sequence[str]
    unclaimable_after: float
    # Projects the node cannot reach now (orchestrator.db.nodes).
    unreachable_projects: Sequence[int] = ()


async def claim_tasks(
    conn: asyncpg.Connection, claimant: Claimant, lease_seconds: float, limit: int, history_messages: int
) -> list[ClaimedTask]:
    """Claim up to ``limit`` runnable tasks, each of a different session, that this node may run:
    sessions not pinned to another live node, agents it has and projects it reaches (or that no
    live node has or reaches)."""
    c = claimant
    args = (c.node_id, list(c.agents), list(c.known_agents), c.unclaimable_after, list(c.unreachable_projects))
    for _ in range(CLAIM_RACE_RETRIES):
        try:
            rows = await conn.fetch(q.CLAIM_TASKS, c.worker_id, lease_seconds, limit, history_messages, NATIVE, *args)
        except asyncpg.UniqueViolationError:
            # Another dispatcher started a turn in one of these sessions first; look again.
            continue
        return [ClaimedTask.from_row(row) for row in rows]
    return []


async def create_session(conn: asyncpg.Connection | asyncpg.Pool, task: ClaimedTask, title: str) -> int | None:
    """A new session for a claimed task without one; None if the claim is no longer ours."""
    session_id: int | None = await conn.fetchval(q.CREATE_SESSION, task.id, task.claim_token, title)
    return session_id


async def hold_claim_of(conn: asyncpg.Connection, task_id: int, claim_token: uuid.UUID) -> str | None:
    """Inside a turn's write transaction: lock the claim until commit; returns the transaction's
    id (for :func:`transaction_status`), None if the claim is not ours.

    ``FOR KEY SHARE`` lets our own lease renewal through but holds off recovery (which locks
    ``FOR UPDATE SKIP LOCKED``), so nobody can take the task between this check and the commit.
    """
    xid: str | None = await conn.fetchval(q.HOLD_CLAIM, task_id, claim_token)
    return xid


async def hold_claim(conn: asyncpg.Connection, task: ClaimedTask) -> str | None:
    return await hold_claim_of(conn, task.id, task.claim_token)


async def transaction_status(db: asyncpg.Pool | asyncpg.Connection, xid: str) -> str:
    """``committed``, ``aborted`` or ``in progress`` (PostgreSQL's pg_xact_status; unknown: aborted)."""
    status: str | None = await db.fetchval(q.TRANSACTION_STATUS, xid)
    return status or "aborted"


async def extend_leases(
    conn: asyncpg.Connection | asyncpg.Pool, claims: Sequence[tuple[int, uuid.UUID]], lease_seconds: float
) -> dict[int, bool]:
    """Renew the leases of our running turns: task id -> cancel requested. Missing ids are lost."""
    if not claims:
        return {}
    rows = await conn.fetch(q.EXTEND_LEASES, [c[0] for c in claims], [c[1] for c in claims], lease_seconds)
    return {row["id"]: row["cancel_requested"] for row in rows}


async def recover_tasks(
    pool: asyncpg.Pool, *, left_behind_by: str | None, backoff: float, backoff_max: float
) -> list[Transition]:
    """Move running tasks with a lapsed lease (or left behind by ``left_behind_by``) on."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(q.RECOVER_TASKS, left_behind_by, backoff, backoff_max)
        await _announce(conn, rows)
    return [_transition(row) for row in rows]


async def sweep_pending(pool: asyncpg.Pool) -> list[Transition]:
    """End pending tasks that expired or whose cancel request was missed."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(q.SWEEP_PENDING)
        await _announce(conn, rows)
    return [_transition(row) for row in rows]


async def end_pending_task(conn: asyncpg.Connection, task_id: int) -> Transition | None:
    """Cancel (or expire) one pending task now; None when it is not pending or is being claimed."""
    async with conn.transaction():
        rows = await conn.fetch(q.END_PENDING_TASK, task_id)
        await _announce(conn, rows)
    return _transition(rows[0]) if rows else None


async def mark_waiting(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """Pending tasks no live node can run get their ``waiting_for`` (and a ``task_state`` frame);
    it is cleared once one can. Returns the rows that changed."""
    async with pool.acquire() as conn, conn.transaction():
        rows: list[asyncpg.Record] = await conn.fetch(q.MARK_WAITING, NATIVE)
        frames = [
            (r["session_id"], task_state(r["id"], r["state"], r["attempt"], waiting_for=r["waiting_for"] or ""))
            for r in rows
            if r["frames_ok"]
        ]
        for session_id, frame in frames:
            await append_events(conn, session_id, [(SessionFrame.TASK_STATE, frame)])
    return rows


@dataclass(frozen=True)
class AttemptEnd:
    """How a turn ends its attempt: the task's new state and what the attempt row records."""

    state: str
    # task_attempts.outcome: completed, failed, cancelled, retry or interrupted.
    outcome: str
    failure_reason: str | None
    error: str | None
    # Back to pending: not before this many seconds.
    retry_delay: float = 0.0
    output_summary: str | None = None
    cost_tokens: int = 0
    execution_path: str | None = None


async def finish_attempt(conn: asyncpg.Connection, task: ClaimedTask, end: AttemptEnd) -> str | None:
    """End the task's running attempt (run inside the turn's last transaction); returns the
    transaction's id, None when the claim is no longer ours (and then nothing was changed)."""
    xid: str | None = await conn.fetchval(
        q.FINISH_TURN,
        task.id,
        task.claim_token,
        end.state,
        end.retry_delay,
        end.failure_reason,
        end.error,
        end.output_summary,
        end.cost_tokens,
        end.execution_path,
        end.outcome,
    )
    return xid


def _transition(row: asyncpg.Record) -> Transition:
    return Transition(row["id"], row["session_id"], row["state"], row["attempt"], row["failure_reason"], row["error"])


async def _announce(conn: asyncpg.Connection, rows: Iterable[asyncpg.Record]) -> None:
    """task_state (and, for an interrupted turn, message_complete) frames of moved tasks."""
    by_session: dict[int, list[Event]] = {}
    for row in rows:
        if not row["frames_ok"]:
            continue
        frames = by_session.setdefault(row["session_id"], [])
        if row["message_id"] is not None:
            ended = message_complete(row["message_id"], row["id"], "failed", "interrupted", None, None, row["error"])
            frames.append((SessionFrame.MESSAGE_COMPLETE, ended))
        state = task_state(row["id"], row["state"], row["attempt"], row["failure_reason"], row["error"])
        frames.append((SessionFrame.TASK_STATE, state))
    for session_id, frames in by_session.items():
        await append_events(conn, session_id, frames)


@dataclass(frozen=True)
class QueueSummary:
    """How many tasks are in each state, how many pending ones may run now, the oldest one's age."""

    states: dict[str, int]
    runnable: int
    oldest_pending_seconds: float | None


async def queue_summary(db: asyncpg.Connection | asyncpg.Pool) -> QueueSummary:
    rows = await db.fetch(q.COUNT_TASKS)
    states = {state: 0 for state in TASK_STATES}
    states.update({row["state"]: row["count"] for row in rows})
    oldest = await db.fetchval(q.OLDEST_PENDING)
    return QueueSummary(states, sum(row["runnable"] for row in rows), oldest)
