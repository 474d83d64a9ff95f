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

At start-up, tasks this ``worker_id`` left running (a previous run of the same process that
died) are recovered before anything is claimed; ``worker_id`` must therefore be unique among
live dispatchers (the default, ``<hostname>:<pid>``, is).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections import OrderedDict
from functools import partial

import anyio
import asyncpg
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from backends import DEFAULT_ASK_TIMEOUT
from kernel import DATABASE_ERRORS, Backoff, Listener, close_quietly, connect, create_pool, get_logger, report
from orchestrator.dispatch import queue
from orchestrator.dispatch.approvals import CHANNEL as PERMISSION_REPLIES
from orchestrator.dispatch.approvals import Approvals, ReplyBoard, withdraw_orphans
from orchestrator.dispatch.queue import ClaimedTask
from orchestrator.dispatch.routing import Router
from orchestrator.dispatch.settings import DispatcherSettings
from orchestrator.dispatch.sink import FlushScheduler
from orchestrator.dispatch.turn import StopReason, TaskState, TurnHandle, TurnRunner, watch_inactivity
from worktrees import WorktreeManager

log = get_logger("dispatcher")

TASKS_NEW = "tasks_new"
TASK_CANCEL = "task_cancel"
# Pool connections besides one per turn: maintenance, cancellations, spares. (The claim loop and
# the listener have connections of their own.)
POOL_EXTRA = 4
RETRY_BACKOFF = 0.1
RETRY_BACKOFF_MAX = 5.0
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
        ask_timeout: float = DEFAULT_ASK_TIMEOUT,
    ) -> None:
        self.worker_id = settings.worker_id or f"{socket.gethostname()}:{os.getpid()}"
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
        # Created in run(): anyio primitives need the running event loop.
        self._stop: anyio.Event | None = None
        self._claims: Wakeup | None = None
        self._maintenance: Wakeup | None = None
        self._turn_ended: Wakeup | None = None
        self._cancel_queue: MemoryObjectSendStream[int] | None = None
        self._service: TaskGroup | None = None
        listen_settings = {"application_name": self.application_name("listener")}
        self.listener = Listener(
            partial(connect, database_url, server_settings=listen_settings),
            {
                TASKS_NEW: self._on_task,
                TASK_CANCEL: self._on_cancel_notified,
                PERMISSION_REPLIES: self.replies.on_notify,
            },
            name="dispatcher",
            health_interval=settings.poll_interval,
            while_subscribed=self._subscribed,
        )

    def application_name(self, role: str) -> str:
        """How this dispatcher's dedicated connections show in pg_stat_activity."""
        return f"switchyard-{role} {self.worker_id}"[:APPLICATION_NAME_MAX]

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

    async def run(self) -> None:
        self._stop = anyio.Event()
        if self._shutdown_requested:
            self._stop.set()
        self._claims, self._maintenance, self._turn_ended = Wakeup(), Wakeup(), Wakeup()
        send, receive = anyio.create_memory_object_stream[int](CANCEL_QUEUE)
        self._cancel_queue = send
        pool = await self._start()
        if pool is None:
            send.close()
            receive.close()
            return
        log.info("dispatcher.started", worker_id=self.worker_id, max_turns=self._settings.max_concurrent_turns)
        try:
            settings = self._settings
            flusher = FlushScheduler(pool, settings.coalesce_ms / 1000, settings.finalize_timeout)
            approvals = Approvals(pool, self.replies, self._ask_timeout)
            runner = TurnRunner(pool, settings, self._router, self._worktrees, flusher, approvals)
            async with anyio.create_task_group() as service:
                self._service = service
                service.start_soon(self.listener.run)
                service.start_soon(flusher.run)
                service.start_soon(self._maintain, pool)
                service.start_soon(self._cancel_pending, pool, receive)
                if settings.inactivity_timeout > 0:
                    service.start_soon(watch_inactivity, self._running.values, settings.inactivity_timeout)
                async with anyio.create_task_group() as turns:
                    await self._claim_loop(runner, turns)
                    await self._drain()
                service.cancel_scope.cancel()
        finally:
            send.close()
            with anyio.CancelScope(shield=True), anyio.move_on_after(POOL_CLOSE_TIMEOUT) as closing:
                await pool.close()
            if closing.cancelled_caught:
                pool.terminate()
            log.info("dispatcher.stopped", worker_id=self.worker_id)

    async def _start(self) -> asyncpg.Pool | None:
        """Open the pool and recover what this worker left behind, waiting out an unreachable
        database; None if shutdown was requested first."""
        assert self._stop is not None
        backoff = Backoff(RETRY_BACKOFF, RETRY_BACKOFF_MAX)
        while not self._stop.is_set():
            pool: asyncpg.Pool | None = None
            try:
                size = self._settings.max_concurrent_turns + POOL_EXTRA
                pool = await create_pool(self._url, size, reset=_keep_session)
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

    # ------------------------------------------------------------------ claiming

    async def _claim_loop(self, runner: TurnRunner, turns: TaskGroup) -> None:
        assert self._stop is not None and self._claims is not None
        backoff = Backoff(RETRY_BACKOFF, RETRY_BACKOFF_MAX)
        conn: asyncpg.Connection | None = None
        try:
            while not self._stop.is_set():
                free = self._settings.max_concurrent_turns - len(self._running)
                if free > 0:
                    try:
                        if conn is None:
                            conn = await queue.connect_claimer(self._url, self.application_name("claim"))
                        settings = self._settings
                        claimed = await queue.claim_tasks(
                            conn, self.worker_id, settings.lease_seconds, free, settings.history_messages
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
                        turns.start_soon(self._turn, runner, self._register(task))
                    if len(claimed) == free:
                        continue  # there may be more; claim again once a slot is free
                await self._claims.wait(self._settings.poll_interval)
        finally:
            if conn is not None:
                await close_quietly(conn)

    def _register(self, task: ClaimedTask) -> TurnHandle:
        handle = TurnHandle(task)
        self._running[task.id] = handle
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
            del self._running[task.id]
            self._wake_claims()
            if self._turn_ended is not None:
                self._turn_ended.set()
        if result is None:
            return
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
            except Exception as exc:
                report(log, "dispatcher.maintenance_failed", exc)

    async def _extend_leases(self, pool: asyncpg.Pool) -> None:
        handles = list(self._running.values())
        claims = [(h.task.id, h.task.claim_token) for h in handles]
        renewed = await queue.extend_leases(pool, claims, self._settings.lease_seconds)
        for handle in handles:
            cancel_requested = renewed.get(handle.task.id)
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
        for task in recovered:
            log.warning("task.recovered", task_id=task.task_id, state=task.state, attempt=task.attempt, why=task.error)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset: nothing. The dispatcher leaves no session state behind (no SET, LISTEN or
    session advisory lock; asyncpg still rolls back an open transaction), so asyncpg's reset
    query would only cost a round trip per turn step."""
