"""One turn of a session: prepare -> execute -> finalize.

- **prepare** checks the claimed row (a bad row fails with a clear ``failure_reason``), routes
  it to a backend, gives a session-less task its new session, ensures the worktree when the
  backend edits files, and queues the ``task_state: running`` and ``message_started`` frames
  (and a ``status: fresh_context`` frame for a turn that starts over). The claim already brought
  the session's history and the agent's upstream session along (neither for a fresh context).
  The turn gets an asker (orchestrator.dispatch.approvals) for permissions a person decides.
  -> :class:`TurnContext`
- **execute** runs ``backend.run_turn`` inside the turn's cancel scope (turn timeout as its
  deadline, cancellation, shutdown; :func:`watch_turns` aborts it when the backend is silent
  too long or the turn's lease deadline passed). Its output goes to the sink, which the
  dispatcher's FlushScheduler writes. Beside a backend that edits the worktree runs the live
  diff (``worktree_changed`` frames, worktrees.live), stopped before finalize.
  -> :class:`TurnResult`
- **finalize** runs shielded with a fresh ``finalize_timeout`` whatever ended the turn: for a
  backend with a worktree it writes the reply and records the worktree's diff while the task
  still holds the session; then, in one transaction, it ends the assistant message, the task
  (or sends it back to ``pending`` for a retry) and its ``task_attempts`` row, stores the
  agent's upstream session, and appends the remaining frames. It retries while the database
  is unreachable; the claim token makes it a no-op if another dispatcher recovered the task.

**Fencing.** Every write of a turn (a flush of its output, its diff, its end) runs in a
transaction that first locks its claim (``queue.hold_claim``): a turn whose task was recovered
elsewhere writes nothing, and a recovery cannot slip in between the check and the commit. A turn
also keeps a local lease deadline (last successful renewal sent + ``lease_seconds`` -
``lease_margin``): :func:`watch_turns` fences a turn that reaches it — the backend is stopped,
its buffered output dropped, its finalize abandoned — before any other dispatcher may recover
the task, so two attempts of one session never run at the same time, not even in its worktree.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from enum import StrEnum

import anyio
import asyncpg

from backends import AgentSession, Backend, OutcomeStatus, Status, Turn, TurnOutcome, Usage
from kernel import (
    CONNECTION_LOST,
    Backoff,
    SessionFrame,
    TaskStatePayload,
    WorktreeError,
    append_event,
    exponential,
    get_logger,
    task_state,
)
from orchestrator.dispatch import metrics, queue
from orchestrator.dispatch import queries as q
from orchestrator.dispatch.approvals import Approvals
from orchestrator.dispatch.queue import AttemptEnd, ClaimedTask, ClaimLost
from orchestrator.dispatch.routing import NATIVE, Router
from orchestrator.dispatch.settings import DispatcherSettings
from orchestrator.dispatch.sink import Batch, FlushScheduler, MessageEnd, TurnSink
from orchestrator.errors import TaskRejected
from worktrees import WorktreeManager

log = get_logger("turn")

SESSION_TITLE_CHARS = 80
FINALIZE_RETRY = 0.1
FINALIZE_RETRY_MAX = 2.0
# The watch over running turns (inactivity, lease deadlines) looks this often (seconds).
WATCH_INTERVAL = 0.25
# The diff's transaction may stay idle this much longer than the snapshot may take.
SNAPSHOT_IDLE_SLACK = 5.0
# The status frame of a turn that starts without the session's earlier conversation.
FRESH_CONTEXT = "fresh_context"
FRESH_ON_REQUEST = "this turn starts with a fresh context, as the task asked (fresh_context)"
FRESH_AFTER_OVERFLOW = (
    "the previous turn overflowed the model's context (context_overflow): this turn starts with a fresh context"
)


class TaskState(StrEnum):
    PENDING = "pending"  # back in the queue for another attempt
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StopReason(StrEnum):
    """Why the dispatcher stopped a turn from outside the backend."""

    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    INACTIVE = "inactive"
    SHUTDOWN = "shutdown"
    # Another dispatcher recovered the task: this turn may write nothing more.
    LEASE_LOST = "lease_lost"
    # The lease could not be renewed before its local deadline: stop and write nothing more.
    LEASE_EXPIRED = "lease_expired"


# Stops after which the turn writes nothing: the task is someone else's (or will be).
FENCED = (StopReason.LEASE_LOST, StopReason.LEASE_EXPIRED)


class TurnHandle:
    """A turn as the dispatcher holds it: the claimed task and the means to stop it."""

    def __init__(self, task: ClaimedTask, lease_deadline: float = math.inf) -> None:
        self.task = task
        self.scope = anyio.CancelScope()
        self.reason: StopReason | None = None
        # Set once the turn is being finalized: it can no longer be stopped (except by fencing),
        # and its row may leave 'running' (ending the lease) before the dispatcher forgets it.
        self.finalizing = False
        # The finalize's own (shielded) scope, so fencing can abandon it too.
        self.finalize_scope: anyio.CancelScope | None = None
        # The turn's sink (for the inactivity watch, and to drop its output when fenced).
        self.sink: TurnSink | None = None
        self.executing = False
        # anyio time by which the lease must have been renewed again (see the module docstring).
        self.lease_deadline = lease_deadline
        # The backend's execution path once routed (for metrics).
        self.track = "none"

    @property
    def fenced(self) -> bool:
        return self.reason in FENCED

    def abort(self, reason: StopReason) -> None:
        """Stop the turn (works before it started, too); the first reason given wins, except that
        a fencing stop always wins: then nothing more may be written."""
        if reason in FENCED:
            self.fence(reason)
            return
        if self.reason is None:
            self.reason = reason
        self.scope.cancel()

    def fence(self, reason: StopReason) -> None:
        """No more writes: stop the backend, drop buffered output, abandon a running finalize."""
        if not self.fenced:
            self.reason = reason
        if self.sink is not None:
            self.sink.fence()
        self.scope.cancel()
        if self.finalize_scope is not None:
            self.finalize_scope.cancel()


@dataclass(frozen=True)
class TurnContext:
    task: ClaimedTask
    session_id: int
    backend: Backend
    turn: Turn


@dataclass(frozen=True)
class TurnResult:
    state: TaskState
    # task_attempts.outcome: completed, failed, cancelled, retry or interrupted.
    attempt_outcome: str
    failure_reason: str | None = None
    error: str | None = None
    stop_reason: str | None = None
    usage: Usage | None = None
    retry_delay: float = 0.0
    agent_session: AgentSession | None = None

    @property
    def message_status(self) -> str:
        return {TaskState.COMPLETED: "complete", TaskState.CANCELLED: "cancelled"}.get(self.state, "failed")


@dataclass
class _End:
    """What one attempt at writing a turn's end wrote: its result and its transaction's id."""

    result: TurnResult
    xid: str | None = None


class _SnapshotOverran(Exception):
    """The worktree snapshot took longer than snapshot_timeout (its transaction is rolled back)."""


def failed(reason: str, error: str, usage: Usage | None = None) -> TurnResult:
    return TurnResult(TaskState.FAILED, "failed", reason, error, stop_reason=reason, usage=usage)


class TurnRunner:
    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: DispatcherSettings,
        router: Router,
        worktrees: WorktreeManager | None,
        flusher: FlushScheduler,
        approvals: Approvals | None = None,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._router = router
        self._worktrees = worktrees
        self._flusher = flusher
        self._approvals = approvals

    async def run(self, handle: TurnHandle) -> TurnResult | None:
        """Run the claimed task to its end; None when the claim was lost (or fenced) on the way."""
        task = handle.task
        session = task.session_id if task.session_ok else None
        sink = TurnSink(
            task.id,
            session,
            task.input,
            task.attempt,
            on_output=self._flusher.schedule,
            claim_token=task.claim_token,
            on_claim_lost=lambda: handle.fence(StopReason.LEASE_LOST),
            agent=task.agent,
        )
        handle.sink = sink
        if handle.fenced:
            sink.fence()
        ctx: TurnContext | None = None
        result: TurnResult | None = None
        try:
            with handle.scope:
                if self._settings.turn_timeout > 0:
                    handle.scope.deadline = anyio.current_time() + self._settings.turn_timeout
                # A turn stopped before it started (cancelled while being claimed) ends here.
                await anyio.lowlevel.checkpoint()
                ctx = await self.prepare(task, sink)
                handle.track = ctx.backend.execution_path
                if task.attempt == 1:
                    metrics.CLAIM_LATENCY.labels(handle.track).observe(task.claim_wait)
                result = await self.execute(ctx, sink, handle)
        except TaskRejected as exc:
            result = failed(exc.reason, exc.message)
        except ClaimLost:
            handle.fence(StopReason.LEASE_LOST)
        except CONNECTION_LOST as exc:
            result = self._retry_or_fail("database_unavailable", f"database error while preparing: {exc}", task)
        except Exception as exc:
            log.exception("turn.crashed", task_id=task.id)
            result = failed("dispatcher_error", f"{type(exc).__name__}: {exc}")
        finally:
            # Also reached when the dispatcher itself is cancelled (result None, no reason).
            result = self._settle(handle, result, sink)
            handle.finalizing = True
            if result is not None:
                result = await self._finalize_shielded(handle, ctx, sink, result)
        return result

    async def _finalize_shielded(
        self, handle: TurnHandle, ctx: TurnContext | None, sink: TurnSink, result: TurnResult
    ) -> TurnResult | None:
        """Finalize with a fresh ``finalize_timeout``, whatever ended the turn; only fencing stops it."""
        with anyio.CancelScope(shield=True) as scope:
            handle.finalize_scope = scope
            scope.deadline = anyio.current_time() + self._settings.finalize_timeout
            if handle.fenced:
                scope.cancel()
            written = await self.finalize(handle.task, ctx, sink, result)
        handle.finalize_scope = None
        if handle.fenced:
            log.warning("turn.fenced", task_id=handle.task.id, attempt=handle.task.attempt, why=handle.reason)
            return None
        if scope.cancelled_caught:
            log.error("turn.finalize_timeout", task_id=handle.task.id, timeout=self._settings.finalize_timeout)
            return None
        return written

    # ------------------------------------------------------------------ prepare

    async def prepare(self, task: ClaimedTask, sink: TurnSink) -> TurnContext:
        project_id = _check_task(task)
        backend = self._router.route(task.agent)
        _check_input_size(task, backend)
        session_id = task.session_id
        if session_id is None:
            session_id = await queue.create_session(self._pool, task, session_title(task.input))
            if session_id is None:
                raise ClaimLost
            sink.session_id = session_id
        workdir = git_dir = None
        if backend.needs_worktree:
            if self._worktrees is None:
                raise TaskRejected(
                    "agent_unavailable", f"agent {task.agent!r} edits files but this dispatcher has no worktrees"
                )
            await _check_repository(task)
            try:
                worktree = await self._worktrees.ensure(session_id)
            except WorktreeError as exc:
                raise TaskRejected("worktree_error", f"cannot prepare the session's worktree: {exc}") from exc
            workdir, git_dir = worktree.path, worktree.git_dir
        turn = Turn(
            task_id=task.id,
            session_id=session_id,
            project_id=project_id,
            input=task.input,
            agent=task.agent,
            model=task.model,
            mode_id=task.mode_id,
            attempt=task.attempt,
            workdir=workdir,
            git_dir=git_dir,
            history=task.history,
            agent_session=task.agent_session,
            agent_options=task.agent_options,
            project_name=task.project_name or "",
            asker=None if self._approvals is None else self._approvals.asker(task, sink),
        )
        sink.add_task_state(task_state(task.id, "running", task.attempt))
        sink.open_message()
        if task.fresh_context:
            why = FRESH_AFTER_OVERFLOW if task.after_overflow else FRESH_ON_REQUEST
            await sink.emit(Status(FRESH_CONTEXT, why))
        return TurnContext(task, session_id, backend, turn)

    # ------------------------------------------------------------------ execute

    async def execute(self, ctx: TurnContext, sink: TurnSink, handle: TurnHandle) -> TurnResult:
        sink.last_activity = anyio.current_time()
        handle.executing = True
        try:
            async with self._live_diff(ctx, sink):
                outcome = await ctx.backend.run_turn(ctx.turn, sink.emit)
        except Exception as exc:
            log.exception("turn.backend_crashed", task_id=ctx.task.id, path=ctx.backend.execution_path)
            outcome = TurnOutcome.failed("backend_error", f"{type(exc).__name__}: {exc}")
        finally:
            handle.executing = False
        return self._from_outcome(ctx.task, outcome, sink)

    @asynccontextmanager
    async def _live_diff(self, ctx: TurnContext, sink: TurnSink) -> AsyncIterator[None]:
        """``worktree_changed`` frames while the backend edits the worktree (worktrees.live);
        stopped before finalize, so none follows the turn's message_complete."""
        worktrees = self._worktrees
        if worktrees is None or ctx.turn.workdir is None or worktrees.settings.live_diff_interval <= 0:
            yield
            return
        task_id = ctx.task.id
        async with anyio.create_task_group() as tg:
            tg.start_soon(worktrees.follow, ctx.session_id, lambda files: sink.add_worktree_changed(task_id, files))
            try:
                yield
            finally:
                tg.cancel_scope.cancel()

    def _from_outcome(self, task: ClaimedTask, outcome: TurnOutcome, sink: TurnSink) -> TurnResult:
        usage = outcome.usage or sink.usage
        if outcome.status is OutcomeStatus.COMPLETED:
            return TurnResult(
                TaskState.COMPLETED, "completed", stop_reason=outcome.stop_reason, usage=usage,
                agent_session=outcome.agent_session,
            )  # fmt: skip
        if outcome.status is OutcomeStatus.CANCELLED:
            return TurnResult(
                TaskState.CANCELLED, "cancelled", "cancelled", outcome.error or "the backend cancelled the turn",
                stop_reason=outcome.stop_reason, usage=usage, agent_session=outcome.agent_session,
            )  # fmt: skip
        reason = outcome.stop_reason or "backend_failed"
        error = outcome.error or "the backend failed without saying why"
        if outcome.transient:
            delay = outcome.retry_after
            result = self._retry_or_fail(reason, error, task, delay)
        else:
            result = failed(reason, error)
        return replace(result, usage=usage, agent_session=outcome.agent_session)

    def _retry_or_fail(self, reason: str, error: str, task: ClaimedTask, delay: float | None = None) -> TurnResult:
        if task.attempt >= task.max_attempts:
            return failed(reason, f"{error} (attempt {task.attempt} of {task.max_attempts})")
        if delay is None:
            delay = exponential(task.attempt, self._settings.retry_backoff, self._settings.retry_backoff_max)
        return TurnResult(TaskState.PENDING, "retry", reason, error, stop_reason=reason, retry_delay=max(0.0, delay))

    def _settle(self, handle: TurnHandle, result: TurnResult | None, sink: TurnSink) -> TurnResult | None:
        """The result once stops from outside (cancel, timeout, shutdown, lost lease) are counted."""
        stop = handle.reason
        if stop is None and handle.scope.cancelled_caught:
            stop = StopReason.TIMEOUT  # the only cancellation without a reason: the deadline
        if stop is None and result is None:
            stop = StopReason.SHUTDOWN  # the dispatcher was cancelled from outside
        if stop in FENCED:
            return None
        # A backend that finished before the stop landed keeps its result.
        finished_first = (
            result is not None and result.state is TaskState.COMPLETED and not handle.scope.cancelled_caught
        )
        if stop is None or finished_first:
            return result
        usage = sink.usage
        settings = self._settings
        match stop:
            case StopReason.CANCELLED:
                return TurnResult(
                    TaskState.CANCELLED, "cancelled", "cancelled", "cancelled on request", "cancelled", usage
                )
            case StopReason.TIMEOUT:
                return failed(
                    "timeout", f"the turn ran longer than {settings.turn_timeout:g} s (dispatcher.turn_timeout)", usage
                )
            case StopReason.INACTIVE:
                return failed(
                    "inactive",
                    f"no event from the backend for {settings.inactivity_timeout:g} s (dispatcher.inactivity_timeout)",
                    usage,
                )
        # Shutdown: hand the task back (no backoff) if it may run again.
        error = "the dispatcher shut down during the turn"
        if handle.task.attempt < handle.task.max_attempts:
            return TurnResult(TaskState.PENDING, "interrupted", "shutdown", error, stop_reason="shutdown", usage=usage)
        return replace(failed("shutdown", error, usage), attempt_outcome="interrupted")

    # ------------------------------------------------------------------ finalize

    async def finalize(
        self, task: ClaimedTask, ctx: TurnContext | None, sink: TurnSink, result: TurnResult
    ) -> TurnResult | None:
        """Write the end of the turn; returns what was written, None if the claim was lost.

        One transaction writes it all: the rest of the output with the message's end, for a
        worktree turn its diff (``pending_change``, between the reply and the task's state), the
        task, its attempt and ``task_state``. So a reply is ``complete`` only if its task is, and a
        turn interrupted before that commit is retried with nothing of it marked done. A commit
        whose answer was lost is looked up (``pg_xact_status``) rather than written again.
        """
        self._flusher.forget(sink)
        sink.end_message(MessageEnd(result.message_status, result.stop_reason, result.usage, result.error))
        with_diff = ctx is not None and ctx.backend.needs_worktree and self._worktrees is not None
        if not with_diff:
            sink.add_task_state(self._task_state(task, result))
        backoff = Backoff(FINALIZE_RETRY, FINALIZE_RETRY_MAX)
        refused = False
        while True:
            delay = 0.0
            async with sink.writing:
                batch = sink.take()
                end = _End(result)
                try:
                    async with self._pool.acquire() as conn, conn.transaction():
                        await self._write_end(conn, task, ctx, sink, batch, end, refused, with_diff)
                    return end.result
                except _SnapshotOverran:
                    sink.put_back(batch)
                    log.error("turn.diff_timeout", task_id=task.id, timeout=self._settings.snapshot_limit)
                    result = self._diff_failed(result, "diff_timeout", self._overrun_error())
                    with_diff = False
                    sink.add_task_state(self._task_state(task, result))
                    continue
                except ClaimLost:
                    log.warning("turn.claim_lost", task_id=task.id, attempt=task.attempt)
                    return None
                except CONNECTION_LOST as exc:
                    if await self._committed(end.xid):
                        return end.result  # only the answer to the commit was lost
                    sink.put_back(batch)  # the transaction did not happen
                    delay = backoff.next()
                    log.warning("turn.finalize_retry", task_id=task.id, error=exc, retry_in=delay)
                except asyncpg.PostgresError as exc:
                    if refused:
                        raise
                    # The database refused the turn's output: end the task without it (and no frames).
                    log.exception("turn.output_refused", task_id=task.id)
                    result = failed("output_refused", f"the turn's output could not be stored: {exc}", result.usage)
                    refused = True
                    with_diff = False
                    sink.session_id = None
            await anyio.sleep(delay)

    async def _write_end(
        self,
        conn: asyncpg.Connection,
        task: ClaimedTask,
        ctx: TurnContext | None,
        sink: TurnSink,
        batch: Batch,
        end: _End,
        refused: bool,
        with_diff: bool,
    ) -> None:
        """The rest of the output, the diff, the task and its attempt, the upstream session."""
        if with_diff:
            assert ctx is not None
            end.xid = await queue.hold_claim(conn, task)
            if end.xid is None:
                raise ClaimLost
            await sink.write(conn, batch)
            end.result = await self._record_diff(conn, ctx, end.result)
            if await queue.finish_attempt(conn, task, self._attempt_end(ctx, sink, end.result)) is None:
                raise ClaimLost
            if sink.session_id is not None:
                await append_event(conn, sink.session_id, SessionFrame.TASK_STATE, self._task_state(task, end.result))
        else:
            end.xid = await queue.finish_attempt(conn, task, self._attempt_end(ctx, sink, end.result))
            if end.xid is None:
                raise ClaimLost
            await sink.write(conn, batch)
        result = end.result
        if refused and sink.message_id is not None:
            await conn.execute(q.FAIL_MESSAGE, sink.message_id, result.failure_reason)
        if result.agent_session is None and ctx is not None and task.fresh_context:
            # The spoiled upstream session must not be continued by the next turn either.
            await conn.execute(q.FORGET_AGENT_SESSION, ctx.session_id, task.agent or NATIVE)
        if result.agent_session is not None and ctx is not None:
            upstream = result.agent_session
            await conn.execute(
                q.UPSERT_AGENT_SESSION,
                ctx.session_id,
                task.agent or NATIVE,
                upstream.upstream_session_id,
                upstream.config_hash,
                upstream.server_key,
            )

    @staticmethod
    def _task_state(task: ClaimedTask, result: TurnResult) -> TaskStatePayload:
        return task_state(task.id, result.state, task.attempt, result.failure_reason, result.error)

    @staticmethod
    def _attempt_end(ctx: TurnContext | None, sink: TurnSink, result: TurnResult) -> AttemptEnd:
        return AttemptEnd(
            state=result.state.value,
            outcome=result.attempt_outcome,
            failure_reason=result.failure_reason,
            error=result.error,
            retry_delay=result.retry_delay,
            output_summary=sink.reply_head or None,
            cost_tokens=result.usage.total if result.usage else 0,
            execution_path=ctx.backend.execution_path if ctx else None,
        )

    async def _committed(self, xid: str | None) -> bool:
        """Whether the transaction ``xid`` committed, asked again while the database is away."""
        if xid is None:
            return False
        backoff = Backoff(FINALIZE_RETRY, FINALIZE_RETRY_MAX)
        while True:
            try:
                status = await queue.transaction_status(self._pool, xid)
            except CONNECTION_LOST:
                status = "in progress"  # unknown yet
            if status != "in progress":
                return status == "committed"
            await anyio.sleep(backoff.next())

    async def _record_diff(self, conn: asyncpg.Connection, ctx: TurnContext, result: TurnResult) -> TurnResult:
        """The worktree's diff becomes the session's pending change, inside the end's transaction.

        Within ``snapshot_timeout``: a snapshot that takes longer is abandoned (_SnapshotOverran:
        the end is written again without it, the turn failed ``diff_timeout``, its edits left in
        the worktree), rather than outliving the finalize and the turn running again.
        """
        assert self._worktrees is not None
        limit = self._settings.snapshot_limit
        # The snapshot runs (in git) while this transaction waits.
        await conn.execute(q.ALLOW_IDLE_IN_TRANSACTION, str(int((limit + SNAPSHOT_IDLE_SLACK) * 1000)))
        try:
            with anyio.move_on_after(limit) as snapshot:
                await self._worktrees.bound(conn).record_turn(ctx.session_id, task_id=ctx.task.id, agent=ctx.task.agent)
        except CONNECTION_LOST:
            raise
        except (WorktreeError, asyncpg.PostgresError) as exc:
            # record_turn's own savepoint is rolled back: the rest of the end still goes in.
            log.error("turn.diff_failed", task_id=ctx.task.id, error=exc)
            return self._diff_failed(result, "diff_failed", f"the turn's changes could not be recorded: {exc}")
        if snapshot.cancelled_caught:
            raise _SnapshotOverran
        return result

    def _overrun_error(self) -> str:
        return (
            f"recording the worktree's changes took longer than {self._settings.snapshot_limit:g} s "
            "(dispatcher.snapshot_timeout); the edits stay in the worktree and the session's next turn records them"
        )

    @staticmethod
    def _diff_failed(result: TurnResult, reason: str, error: str) -> TurnResult:
        """A completed turn whose changes were not recorded fails; any other ending stays as it is."""
        if result.state is TaskState.COMPLETED:
            return failed(reason, error, result.usage)
        return result


def _check_task(task: ClaimedTask) -> int:
    """Refuse rows that cannot run, each with its own failure_reason; returns the project."""
    if task.project_id is None or not task.project_exists:
        raise TaskRejected("project_not_found", f"project {task.project_id} does not exist")
    if task.session_id is not None:
        if task.session_project_id is None:
            raise TaskRejected("session_not_found", f"session {task.session_id} does not exist")
        if task.session_project_id != task.project_id:
            raise TaskRejected(
                "session_project_mismatch",
                f"session {task.session_id} belongs to another project than project {task.project_id}",
            )
        if task.session_status == "archived":
            raise TaskRejected("session_archived", f"session {task.session_id} is archived")
    if not task.input.strip():
        raise TaskRejected("empty_input", "the task's input is empty")
    if task.expired:
        raise TaskRejected("expired", "the task was claimed after its expires_at")
    return task.project_id


def _check_input_size(task: ClaimedTask, backend: Backend) -> None:
    """A backend that takes the prompt in a bounded way (a PTY agent: one command-line argument)
    refuses a longer one by name, rather than failing to start its agent."""
    limit: int | None = getattr(backend, "max_input_bytes", None)
    size = len(task.input.encode())
    if limit is not None and size > limit:
        raise TaskRejected(
            "input_too_long",
            f"the prompt is {size:,} bytes; agent {task.agent!r} ({backend.execution_path}) takes at most "
            f"{limit:,} bytes (it gets the prompt as one command-line argument); shorten it or use an ACP agent",
        )


async def _check_repository(task: ClaimedTask) -> None:
    """The project's repository must still be there: a moved or deleted directory is the user's
    doing, reported once and at once, not retried as if the database had gone away."""
    path = task.repo_path
    if path is not None and not await anyio.to_thread.run_sync(os.path.isdir, path):
        raise TaskRejected(
            "repository_missing",
            f"project {task.project_id}'s repository {path} does not exist any more (moved or deleted?); "
            "restore it, or register the new location with `switchyard project add`",
        )


def session_title(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()[:SESSION_TITLE_CHARS]


async def watch_turns(handles: Callable[[], Iterable[TurnHandle]], idle_limit: float) -> None:
    """One loop over all turns of a dispatcher: fence a turn whose lease deadline passed, abort
    one whose backend has sent no event for ``idle_limit`` seconds (0: never) unless it waits for
    a person (the asker bounds that wait)."""
    while True:
        await anyio.sleep(WATCH_INTERVAL)
        now = anyio.current_time()
        for handle in list(handles()):
            if now >= handle.lease_deadline and not handle.fenced:
                log.error(
                    "task.lease_expired",
                    task_id=handle.task.id,
                    attempt=handle.task.attempt,
                    why="the lease could not be renewed in time; the turn stops and writes nothing more",
                )
                handle.fence(StopReason.LEASE_EXPIRED)
                continue
            sink = handle.sink
            waiting = sink is not None and sink.waiting
            if (
                idle_limit > 0
                and handle.executing
                and sink is not None
                and not waiting
                and now - sink.last_activity >= idle_limit
            ):
                handle.abort(StopReason.INACTIVE)
