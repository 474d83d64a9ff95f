"""The dispatcher: claims tasks from PostgreSQL and runs each as one turn.

Tasks:

- the **claim loop** claims as many runnable tasks as it has free slots
  (``max_concurrent_turns``) in one statement (orchestrator.dispatch.queue), starts a turn for each,
  and sleeps until woken: a ``tasks_new`` notification, a turn ending, a (re)subscribe of the
  listener, or the fallback poll (``poll_interval``);
- the **listener** (kernel.listen) holds the LISTEN connection on ``tasks_new`` and ``task_cancel``;
- **maintenance**, every ``min(poll_interval, lease_seconds / 3)``: renews the leases of
  running turns (and learns about cancel requests and lost claims from the answer), recovers
  tasks whose lease lapsed, and ends pending tasks that expired or were cancelled;
- the **flush scheduler** (orchestrator.dispatch.sink) writing the turns' buffered output, and the
  **inactivity watch** (orchestrator.dispatch.turn) over all running turns;
- **cancellations** of tasks that are not ours: a pending one is cancelled at once;
- each **turn** (orchestrator.dispatch.turn) in a task group of its own, so shutdown can drain it.

``request_shutdown()`` (SIGTERM) stops claiming; running turns get ``shutdown_grace`` seconds
to finish, then are cancelled and handed back (``pending`` while attempts remain, else
``failed`` with ``failure_reason='shutdown'``). ``run`` returns when they are finalized.
Cancelling ``run`` does the same without the grace period.

The ``worker_id`` is held with an advisory lock (orchestrator.db.workers), so no two live
dispatchers share one; the default is derived from the host and the data directory, so a
restarted dispatcher is the same worker. At start-up, tasks its id left running are recovered
before anything is claimed — at once when the previous holder is certainly gone. If another
process takes the id while this one cannot reach the database, every turn is fenced and ``run``
raises WorkerIdLost.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence

import anyio
import asyncpg
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from backends import DEFAULT_ASK_TIMEOUT
from kernel import DATABASE_ERRORS, Backoff, Listener, close_quietly, connect, create_pool, get_logger, report
from orchestrator.db import workers
from orchestrator.db.nodes import NodeBeat
from orchestrator.db.settings import NodeSettings
from orchestrator.dispatch import metrics, queue
from orchestrator.dispatch.approvals import CHANNEL as PERMISSION_REPLIES
from orchestrator.dispatch.approvals import Approvals, ReplyBoard, withdraw_orphans
from orchestrator.dispatch.queue import ClaimedTask
from orchestrator.dispatch.routing import Router
from orchestrator.dispatch.settings import DispatcherSettings
from orchestrator.dispatch.sink import FlushScheduler
from orchestrator.dispatch.turn import StopReason, TaskState, TurnHandle, TurnRunner, watch_turns
from orchestrator.errors import WorkerIdLost
from worktrees import WorktreeManager

log = get_logger("dispatcher")

TASKS_NEW = "tasks_new"
TASK_CANCEL = "task_cancel"
# Pool connections besides one per turn: maintenance, cancellations, spares. (The claim loop and
# the listener have connections of their own.)
POOL_EXTRA = 4
RETRY_BACKOFF = 0.1
RETRY_BACKOFF_MAX = 5.0
# No statement of the dispatcher's pool waits longer than max(this, lease_seconds / 2).
COMMAND_TIMEOUT_MIN = 5.0
# The server ends a write transaction of ours left idle this long (the diff's allows longer).
IDLE_IN_TRANSACTION = 5.0
POOL_CLOSE_TIMEOUT = 5.0
# Cancel notifications for tasks we did not own, remembered in case we claim them right after.
RECENT_CANCELS = 1000
CANCEL_QUEUE = 1000
# PostgreSQL truncates application_name to 63 bytes.
APPLICATION_NAME_MAX = 63


class Wakeup:
    """A level-triggered wake-up: a ``set()`` while nobody waits is not lost."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, at_most: float | None) -> None:
        with anyio.move_on_after(at_most):
            await self._event.wait()
        self._event = anyio.Event()


class Dispatcher:
    def __init__(
        self,
        database_url: str,
        settings: DispatcherSettings,
        router: Router,
        worktrees: WorktreeManager | None = None,
        *,
        identity_base: str | None = None,
        ask_timeout: float = DEFAULT_ASK_TIMEOUT,
        node: NodeSettings | None = None,
        agents: Callable[[], Sequence[str]] | None = None,
    ) -> None:
        # The worker id: the configured one, else the first free id derived from identity_base
        # (the service passes <host>:<data_dir>; orchestrator.db.workers). The node is the
        # configured one, else identity_base too (orchestrator.db.nodes); ``agents``: what the node
        # runs now (default: every agent the router has a backend for).
        explicit = bool(settings.worker_id)
        base = identity_base or workers.default_base(os.getcwd())
        node = node or NodeSettings()
        self.node = NodeBeat(
            node.id or base,
            node,
            agents or (lambda: router.runnable_names),
            settings.max_concurrent_turns,
        )
        self.node.on_change = self._wake_claims
        self._lock = workers.WorkerLock(
            database_url,
            "dispatcher",
            [settings.worker_id] if explicit else workers.derived_ids(base),
            explicit=explicit,
            application_name=lambda worker_id: self._application_name("lock", worker_id),
            heartbeat=self.node,
        )
        # Turns waiting for a person's reply, woken through the listener (orchestrator.dispatch.approvals).
        self.replies = ReplyBoard()
        self._ask_timeout = ask_timeout
        self._url = database_url
        self._settings = settings
        self._router = router
        self._worktrees = worktrees
        self._running: dict[int, TurnHandle] = {}
        self._recent_cancels: OrderedDict[int, bool] = OrderedDict()
        self._shutdown_requested = False
        # Why this process lost its worker id while running (it then stops; see _identity_lost).
        self._identity_lost_because: str | None = None
        # Created in run(): anyio primitives need the running event loop.
        self._stop: anyio.Event | None = None
        self._claims: Wakeup | None = None
        self._maintenance: Wakeup | None = None
        self._turn_ended: Wakeup | None = None
        self._cancel_queue: MemoryObjectSendStream[int] | None = None
        self._service: TaskGroup | None = None
        self.listener = Listener(
            self._connect_listener,
            {
                TASKS_NEW: self._on_task,
                TASK_CANCEL: self._on_cancel_notified,
                PERMISSION_REPLIES: self.replies.on_notify,
            },
            name="dispatcher",
            health_interval=settings.poll_interval,
            while_subscribed=self._subscribed,
        )

    @property
    def worker_id(self) -> str:
        """The id in tasks.claimed_by; known once ``run`` has started (empty before, unless configured)."""
        return self._lock.worker_id

    @property
    def worker_lock(self) -> workers.WorkerLock:
        return self._lock

    async def _connect_listener(self) -> asyncpg.Connection:
        return await connect(self._url, server_settings={"application_name": self.application_name("listener")})

    def application_name(self, role: str) -> str:
        """How this dispatcher's dedicated connections show in pg_stat_activity."""
        return self._application_name(role, self.worker_id)

    @staticmethod
    def _application_name(role: str, worker_id: str) -> str:
        return f"switchyard-{role} {worker_id}"[:APPLICATION_NAME_MAX]

    @property
    def running_task_ids(self) -> frozenset[int]:
        return frozenset(self._running)

    @property
    def shutdown_requested(self) -> bool:
        return self._shutdown_requested

    def request_shutdown(self) -> None:
        """Stop claiming and drain (see the module docstring); safe to call at any time."""
        self._shutdown_requested = True
        if self._stop is not None:
            self._stop.set()
        self._wake_claims()

    # ------------------------------------------------------------------ the service

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until shut down; ``task_status`` is told once the worker id is held and claiming
        begins. Raises WorkerIdTaken when no id can be held, WorkerIdLost when it was taken away."""
        self._stop = anyio.Event()
        if self._shutdown_requested:
            self._stop.set()
        self._claims, self._maintenance, self._turn_ended = Wakeup(), Wakeup(), Wakeup()
        send, receive = anyio.create_memory_object_stream[int](CANCEL_QUEUE)
        self._cancel_queue = send
        try:
            pool = await self._start()
            if pool is None:
                send.close()
                receive.close()
                task_status.started()
                return
            log.info("dispatcher.started", worker_id=self.worker_id, max_turns=self._settings.max_concurrent_turns)
            task_status.started()
            await self._serve(pool, receive)
        finally:
            send.close()
            with anyio.CancelScope(shield=True):
                await self._lock.release()
        if self._identity_lost_because is not None:
            raise WorkerIdLost(self._identity_lost_because)

    async def _serve(self, pool: asyncpg.Pool, cancels: MemoryObjectReceiveStream[int]) -> None:
        try:
            settings = self._settings
            flusher = FlushScheduler(pool, settings.coalesce_ms / 1000, settings.finalize_timeout)
            # The turns' worktree work (ensure, the diff) uses the dispatcher's own pool too.
            worktrees = self._worktrees.bound(pool) if self._worktrees is not None else None
            approvals = Approvals(pool, self.replies, self._ask_timeout)
            runner = TurnRunner(pool, settings, self._router, worktrees, flusher, approvals)
            async with anyio.create_task_group() as service:
                self._service = service
                service.start_soon(self._lock.hold, self._identity_lost)
                service.start_soon(self.listener.run)
                service.start_soon(flusher.run)
                service.start_soon(self._maintain, pool)
                service.start_soon(self._cancel_pending, pool, cancels)
                service.start_soon(watch_turns, self._running.values, settings.inactivity_timeout)
                async with anyio.create_task_group() as turns:
                    await self._claim_loop(runner, turns)
                    await self._drain()
                service.cancel_scope.cancel()
        finally:
            # The backends' long-lived resources (the native track's connections) end with the turns.
            await self._router.aclose()
            with anyio.CancelScope(shield=True), anyio.move_on_after(POOL_CLOSE_TIMEOUT) as closing:
                await pool.close()
            if closing.cancelled_caught:
                pool.terminate()
            log.info("dispatcher.stopped", worker_id=self.worker_id)

    async def _start(self) -> asyncpg.Pool | None:
        """Hold a worker id, open the pool and recover what this id's previous run left running
        (at once, when that process is certainly gone), waiting out an unreachable database;
        None if shutdown was requested first."""
        assert self._stop is not None
        backoff = Backoff(RETRY_BACKOFF, RETRY_BACKOFF_MAX)
        held: workers.Held | None = None
        while not self._stop.is_set():
            pool: asyncpg.Pool | None = None
            try:
                if held is None:
                    held = await self._lock.acquire()
                    log.info("dispatcher.worker_id", worker_id=held.worker_id, recover_now=held.predecessor_gone)
                pool = await self._create_pool()
                if held.predecessor_gone:
                    await self._recover(pool, left_behind_by=self.worker_id)
                return pool
            except DATABASE_ERRORS as exc:
                if pool is not None:
                    pool.terminate()
                delay = backoff.next()
                log.warning("dispatcher.database_unavailable", error=exc, retry_in=delay)
                with anyio.move_on_after(delay):
                    await self._stop.wait()
        return None

    def _identity_lost(self, reason: str) -> None:
        """Another process holds our worker id now and may recover our tasks at any moment: stop
        every turn without writing, stop claiming, and let ``run`` fail with the reason."""
        log.error("dispatcher.worker_id_lost", worker_id=self.worker_id, why=reason)
        self._identity_lost_because = reason
        for handle in self._running.values():
            handle.fence(StopReason.LEASE_LOST)
        self.request_shutdown()

    async def _create_pool(self) -> asyncpg.Pool:
        """The dispatcher's own pool: turn writes and maintenance, shared with nobody else.

        Every wait is bounded: for a connection (``acquire_timeout``), for a statement
        (``command_timeout``), and on the server a transaction left idle (a partition in the
        middle of a write) is ended, so its claim lock cannot hold off recovery for long.
        """
        s = self._settings
        return await create_pool(
            self._url,
            s.max_concurrent_turns + POOL_EXTRA,
            name="dispatcher",
            acquire_timeout=s.acquire_timeout,
            reset=_keep_session,
            command_timeout=max(COMMAND_TIMEOUT_MIN, s.lease_seconds / 2),
            server_settings={
                "application_name": self.application_name("turns"),
                "idle_in_transaction_session_timeout": str(int(IDLE_IN_TRANSACTION * 1000)),
            },
        )

    # ------------------------------------------------------------------ claiming

    async def _claim_loop(self, runner: TurnRunner, turns: TaskGroup) -> None:
        assert self._stop is not None and self._claims is not None
        backoff = Backoff(RETRY_BACKOFF, RETRY_BACKOFF_MAX)
        conn: asyncpg.Connection | None = None
        try:
            while not self._stop.is_set():
                free = self._settings.max_concurrent_turns - len(self._running)
                # A drained node claims nothing (its heartbeat learns of the drain and of its end).
                if free > 0 and not self.node.draining:
                    try:
                        if conn is None:
                            conn = await queue.connect_claimer(self._url, self.application_name("claim"))
                        settings = self._settings
                        sent = anyio.current_time()
                        claimed = await queue.claim_tasks(
                            conn, self._claimant(), settings.lease_seconds, free, settings.history_messages
                        )
                        backoff.reset()
                    except Exception as exc:
                        if conn is not None:
                            conn.terminate()
                            conn = None
                        delay = backoff.next()
                        report(log, "dispatcher.claim_failed", exc, retry_in=delay)
                        await self._claims.wait(delay)
                        continue
                    for task in claimed:
                        turns.start_soon(self._turn, runner, self._register(task, sent))
                    if len(claimed) == free:
                        continue  # there may be more; claim again once a slot is free
                await self._claims.wait(self._settings.poll_interval)
        finally:
            if conn is not None:
                await close_quietly(conn)

    def _claimant(self) -> queue.Claimant:
        return queue.Claimant(
            self.worker_id,
            self.node.node_id,
            self.node.current_agents,
            self._router.agent_names,
            self._settings.unclaimable_after,
            self.node.unreachable_projects,
        )

    def _register(self, task: ClaimedTask, claimed_at: float) -> TurnHandle:
        # The lease runs from the claim, whose statement was sent at claimed_at (or later).
        handle = TurnHandle(task, self._lease_deadline(claimed_at))
        earlier = self._running.get(task.id)
        if earlier is not None:
            # Our own earlier attempt was fenced and recovered, and is still winding down (its
            # cleanup waiting on the database); it writes nothing and is forgotten here.
            log.warning(
                "task.claimed_while_stopping",
                task_id=task.id,
                attempt=task.attempt,
                earlier_attempt=earlier.task.attempt,
                backend_running=earlier.executing,
            )
            metrics.RUNNING_TURNS.dec()
        self._running[task.id] = handle
        metrics.RUNNING_TURNS.inc()
        log.debug("task.claimed", task_id=task.id, session_id=task.session_id, attempt=task.attempt)
        if task.cancel_requested or self._recent_cancels.pop(task.id, False):
            handle.abort(StopReason.CANCELLED)
        return handle

    async def _turn(self, runner: TurnRunner, handle: TurnHandle) -> None:
        task = handle.task
        started = anyio.current_time()
        try:
            result = await runner.run(handle)
        except Exception:
            # Finalize could not write; the lease lapses and recovery takes the task on.
            log.exception("task.unfinished", task_id=task.id, attempt=task.attempt)
            result = None
        finally:
            if self._running.get(task.id) is handle:
                del self._running[task.id]
                metrics.RUNNING_TURNS.dec()
            self._wake_claims()
            if self._turn_ended is not None:
                self._turn_ended.set()
        metrics.TURN_DURATION.labels(handle.track).observe(anyio.current_time() - started)
        if result is None:
            metrics.FENCED.labels(handle.reason or "unfinished").inc()
            return
        if result.state is TaskState.PENDING:
            metrics.RETRIES.labels(result.failure_reason or "-").inc()
        elif result.state is TaskState.FAILED:
            metrics.FAILURES.labels(result.failure_reason or "-").inc()
        log.info(
            "task.finished",
            task_id=task.id,
            state=result.state.value,
            attempt=task.attempt,
            failure_reason=result.failure_reason or "-",
            ms=round((anyio.current_time() - started) * 1000, 1),
        )
        if result.state is TaskState.PENDING and result.retry_delay > 0 and self._service is not None:
            self._service.start_soon(self._wake_later, result.retry_delay)

    async def _wake_later(self, delay: float) -> None:
        await anyio.sleep(delay)
        self._wake_claims()

    async def _drain(self) -> None:
        assert self._turn_ended is not None
        if self._running:
            log.info("dispatcher.draining", running=len(self._running), grace=self._settings.shutdown_grace)
        with anyio.move_on_after(self._settings.shutdown_grace):
            while self._running:
                await self._turn_ended.wait(None)
        for handle in list(self._running.values()):
            log.warning("task.stopped_by_shutdown", task_id=handle.task.id)
            handle.abort(StopReason.SHUTDOWN)

    # ------------------------------------------------------------------ wake-ups and cancels

    def _wake_claims(self) -> None:
        if self._claims is not None:
            self._claims.set()

    async def _subscribed(self, conn: asyncpg.Connection) -> None:
        """Each (re)subscribe: notifications may have been missed while the connection was down."""
        self._wake_claims()
        self.replies.wake_all()
        if self._maintenance is not None:
            self._maintenance.set()
        await self.listener.check_health(conn)

    def _on_task(self, _payload: str) -> None:
        self._wake_claims()

    def _on_cancel_notified(self, payload: str) -> None:
        try:
            task_id = int(payload)
        except ValueError:
            log.warning("dispatcher.bad_cancel_payload", payload=payload)
            return
        self._on_cancel(task_id)

    def _on_cancel(self, task_id: int) -> None:
        handle = self._running.get(task_id)
        if handle is not None:
            log.info("task.cancel_requested", task_id=task_id)
            handle.abort(StopReason.CANCELLED)
            return
        self._recent_cancels[task_id] = True
        while len(self._recent_cancels) > RECENT_CANCELS:
            self._recent_cancels.popitem(last=False)
        if self._cancel_queue is not None:
            # When full, the sweep ends the task within poll_interval.
            with contextlib.suppress(anyio.WouldBlock):
                self._cancel_queue.send_nowait(task_id)

    async def _cancel_pending(self, pool: asyncpg.Pool, requests: MemoryObjectReceiveStream[int]) -> None:
        async with requests:
            async for task_id in requests:
                try:
                    async with pool.acquire() as conn:
                        ended = await queue.end_pending_task(conn, task_id)
                except Exception as exc:
                    report(log, "task.cancel_failed", exc, task_id=task_id)
                    continue
                if ended is not None:
                    log.info("task.cancelled", task_id=task_id, state=ended.state)

    # ------------------------------------------------------------------ maintenance

    async def _maintain(self, pool: asyncpg.Pool) -> None:
        assert self._maintenance is not None
        interval = min(self._settings.poll_interval, self._settings.lease_seconds / 3)
        while True:
            await self._maintenance.wait(interval)
            try:
                await self._extend_leases(pool)
                await self._recover(pool)
                for ended in await queue.sweep_pending(pool):
                    log.info("task.swept", task_id=ended.task_id, state=ended.state, reason=ended.failure_reason)
                if withdrawn := await withdraw_orphans(pool):
                    log.info("approvals.withdrawn_orphans", requests=withdrawn)
                for marked in await queue.mark_waiting(pool):
                    log.info("task.waiting", task_id=marked["id"], waiting_for=marked["waiting_for"] or "-")
            except Exception as exc:
                report(log, "dispatcher.maintenance_failed", exc)

    def _lease_deadline(self, sent: float) -> float:
        """When a lease renewed by a statement sent at ``sent`` must be renewed again (local time)."""
        return sent + self._settings.lease_seconds - self._settings.fence_margin

    async def _extend_leases(self, pool: asyncpg.Pool) -> None:
        handles = list(self._running.values())
        claims = [(h.task.id, h.task.claim_token) for h in handles]
        sent = anyio.current_time()
        try:
            renewed = await queue.extend_leases(pool, claims, self._settings.lease_seconds)
        except Exception:
            if handles:
                metrics.LEASE_RENEWALS_FAILED.inc()
            raise
        deadline = self._lease_deadline(sent)
        for handle in handles:
            cancel_requested = renewed.get(handle.task.id)
            if cancel_requested is not None:
                handle.lease_deadline = max(handle.lease_deadline, deadline)
            if cancel_requested is None:
                if not handle.finalizing:
                    log.warning("task.lease_lost", task_id=handle.task.id)
                    handle.abort(StopReason.LEASE_LOST)
            elif cancel_requested:
                handle.abort(StopReason.CANCELLED)

    async def _recover(self, pool: asyncpg.Pool, left_behind_by: str | None = None) -> None:
        s = self._settings
        recovered = await queue.recover_tasks(
            pool, left_behind_by=left_behind_by, backoff=s.retry_backoff, backoff_max=s.retry_backoff_max
        )
        metrics.RECOVERED.inc(len(recovered))
        for task in recovered:
            log.warning("task.recovered", task_id=task.task_id, state=task.state, attempt=task.attempt, why=task.error)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset: nothing. The dispatcher leaves no session state behind (no SET, LISTEN or
    session advisory lock; asyncpg still rolls back an open transaction), so asyncpg's reset
    query would only cost a round trip per turn step."""
