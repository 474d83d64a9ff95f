"""Where a turn's backend events go: session frames and message rows, written in batches.

``emit`` (the backend's callback) only buffers, so a backend never waits for the database.
One :class:`FlushScheduler` per dispatcher writes the buffer in a transaction per batch: at once
when the sink was quiet for ``coalesce_ms`` (a model's first token is not held back), else
``coalesce_ms`` after the output arrived. A batch holds the assistant message (inserted with the
user's message on the first write), its content and reasoning, upserted tool calls, and the
frames, so a reader never sees a frame whose row is not there yet. Consecutive deltas in a batch
become one frame. Whatever is still buffered when the turn ends is written by finalize in the
transaction that ends the task; a flush the scheduler had not started by then is dropped, so an
instant turn usually costs no flush of its own. ``TurnSink.writing`` orders flushes and that
last write.

Frames are written only when the task's session exists and belongs to its project; a bad
row must not put frames into somebody else's session.

Fencing: a flush's transaction first locks the turn's claim (``queue.hold_claim``), so output of
a turn whose task was recovered elsewhere is never stored (the sink calls ``on_claim_lost``);
the final write is fenced by ``FINISH_TURN`` in the same way. A fenced sink (:meth:`TurnSink.fence`)
drops what it holds and writes nothing more.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import asyncpg

from backends import (
    AgentAdvertised,
    AgentCommands,
    BackendEvent,
    PermissionDecision,
    Plan,
    ReasoningDelta,
    Status,
    TextDelta,
    ToolCall,
    Usage,
)
from kernel import (
    CONNECTION_LOST,
    Event,
    SessionFrame,
    TaskStatePayload,
    WorktreeChangedPayload,
    append_events,
    exponential,
    get_logger,
    message_complete,
    report,
)
from orchestrator.dispatch import queries as q
from orchestrator.dispatch import queue
from orchestrator.dispatch.queue import ClaimLost

log = get_logger("sink")

# tasks.output_summary keeps this much of the reply.
SUMMARY_CHARS = 200
FLUSH_RETRY = 0.05
FLUSH_RETRY_MAX = 2.0


@dataclass(frozen=True)
class MessageEnd:
    status: str  # complete, failed or cancelled
    stop_reason: str | None
    usage: Usage | None
    error: str | None


@dataclass
class _Frame:
    type: SessionFrame
    # The payload (kernel.eventlog's shape for the type) without message_id, which is added
    # when the frame is written: the assistant message's id is unknown until it is inserted.
    payload: dict[str, Any]
    # Gets the assistant message's id (unknown until the message is inserted) when written.
    of_message: bool = True


@dataclass
class Batch:
    frames: list[_Frame] = field(default_factory=list)
    text: str = ""
    reasoning: str = ""
    tools: dict[str, ToolCall] = field(default_factory=dict)
    end: MessageEnd | None = None
    inserted_message: bool = False
    # What the agent advertised (for available_agents).
    advertised: AgentAdvertised | None = None

    @property
    def empty(self) -> bool:
        return not (self.frames or self.text or self.reasoning or self.tools or self.end or self.advertised)


@dataclass(frozen=True)
class MessageUpdate:
    """What one batch adds to the assistant message's row (None: leave that column as it is)."""

    batch: Batch
    text: str
    reasoning: str
    status: str | None
    stop_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None

    @classmethod
    def of(cls, batch: Batch) -> MessageUpdate:
        end = batch.end
        usage = end.usage if end else None
        return cls(
            batch=batch,
            text=batch.text,
            reasoning=batch.reasoning,
            status=end.status if end else None,
            stop_reason=end.stop_reason if end else None,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
        )

    @property
    def empty(self) -> bool:
        return (
            not (self.text or self.reasoning)
            and self.status is None
            and self.stop_reason is None
            and (self.prompt_tokens is None and self.completion_tokens is None)
        )


class TurnSink:
    def __init__(
        self,
        task_id: int,
        session_id: int | None,
        user_input: str,
        attempt: int,
        on_output: Callable[[TurnSink], None] | None = None,
        *,
        claim_token: uuid.UUID | None = None,
        on_claim_lost: Callable[[], None] | None = None,
        agent: str | None = None,
    ) -> None:
        self.task_id = task_id
        # The claim every flush locks first (None: unfenced, for tests of the sink alone).
        self.claim_token = claim_token
        self._on_claim_lost = on_claim_lost
        # Set once the turn may write nothing more (its claim is lost or its lease ran out).
        self.fenced = False
        # The task's agent, whose catalogue entry an AgentAdvertised updates.
        self.agent = agent
        # None: nothing may be written to any session (see the module docstring).
        self.session_id = session_id
        self._user_input = user_input
        self._first_attempt = attempt == 1
        self.message_id: int | None = None
        self.message_opened = False
        self.usage: Usage | None = None
        self.reply_head = ""
        self.last_activity = anyio.current_time()
        # Requests of this turn waiting for a person: the inactivity watch leaves the turn alone.
        self.waiting = 0
        # Held by whoever writes a batch, so batches reach the log in the order they were taken.
        self.writing = anyio.Lock()
        # Consecutive failed flushes (for the retry delay); closed once finalize has taken over.
        self.flush_failures = 0
        self.closed = False
        # When the scheduler last started flushing this sink (leading-edge coalescing).
        self.flushed_at = -math.inf
        self._on_output = on_output
        self._buffer = Batch()

    # ------------------------------------------------------------------ filling the buffer

    def add_task_state(self, payload: TaskStatePayload) -> None:
        """The task's state: the one frame that is not about the message."""
        self._push(_Frame(SessionFrame.TASK_STATE, dict(payload), of_message=False))

    def add_worktree_changed(self, task_id: int, files: dict[str, Any]) -> None:
        """The worktree's diff so far (orchestrator.dispatch.turn's live diff): not about the message."""
        payload = WorktreeChangedPayload(
            task_id=task_id,
            files=files["files"],
            total_files=files["total_files"],
            additions=files["additions"],
            deletions=files["deletions"],
        )
        self._push(_Frame(SessionFrame.WORKTREE_CHANGED, dict(payload), of_message=False))

    def open_message(self) -> None:
        self.message_opened = True
        self._push(_Frame(SessionFrame.MESSAGE_STARTED, {"task_id": self.task_id, "role": "assistant"}))

    def end_message(self, end: MessageEnd) -> None:
        if not self.message_opened:
            return
        self._buffer.end = end
        usage = end.usage
        payload: dict[str, Any] = dict(
            message_complete(
                0,
                self.task_id,
                end.status,
                end.stop_reason,
                usage.prompt_tokens if usage else None,
                usage.completion_tokens if usage else None,
                end.error,
            )
        )
        del payload["message_id"]  # added when written
        self._push(_Frame(SessionFrame.MESSAGE_COMPLETE, payload))

    async def emit(self, event: BackendEvent) -> None:
        """The ``emit`` a backend gets: buffers, never waits for the database."""
        self.last_activity = anyio.current_time()
        match event:
            case TextDelta(text=text):
                text = _clean(text)
                self._buffer.text += text
                if len(self.reply_head) < SUMMARY_CHARS:
                    self.reply_head = (self.reply_head + text)[:SUMMARY_CHARS]
                self._push_delta(SessionFrame.DELTA, text)
            case ReasoningDelta(text=text):
                text = _clean(text)
                self._buffer.reasoning += text
                self._push_delta(SessionFrame.REASONING_DELTA, text)
            case ToolCall():
                self._buffer.tools[event.tool_call_id] = event
                self._push_tool_call(event)
            case AgentCommands(commands=commands):
                self._push(_Frame(SessionFrame.AGENT_COMMANDS, {"commands": _plain(list(commands))}))
            case Plan(entries=entries):
                self._push(_Frame(SessionFrame.PLAN, {"entries": _plain(list(entries))}))
            case PermissionDecision():
                payload = {
                    "tool_call_id": event.tool_call_id,
                    "permission": event.permission,
                    "decision": event.decision,
                    "reason": event.reason,
                }
                self._push(_Frame(SessionFrame.PERMISSION, payload))
            case Status(state=state, detail=detail):
                self._push(_Frame(SessionFrame.STATUS, {"state": state, "detail": detail}))
            case Usage():
                self.usage = event if self.usage is None else self.usage + event
            case AgentAdvertised():
                if self.agent is not None:
                    self._buffer.advertised = event
                    if self._on_output is not None:
                        self._on_output(self)

    def fence(self) -> None:
        """Write nothing more: what is buffered is dropped, later output too."""
        self.fenced = True
        self._buffer = Batch()

    def _push(self, frame: _Frame) -> None:
        if self.session_id is None or self.fenced:
            return
        self._buffer.frames.append(frame)
        if self._on_output is not None:
            self._on_output(self)

    def _push_delta(self, type_: SessionFrame, text: str) -> None:
        if not text:
            return
        frames = self._buffer.frames
        if frames and frames[-1].type == type_:
            frames[-1].payload["text"] += text
            return
        self._push(_Frame(type_, {"text": text}))

    def _push_tool_call(self, call: ToolCall) -> None:
        payload = {
            "tool_call_id": call.tool_call_id,
            "name": call.name,
            "kind": call.kind,
            "status": call.status.value,
            "input": _plain(call.input),
            "output": _plain(call.output),
            "locations": _plain(list(call.locations)),
        }
        frames = self._buffer.frames
        # A newer snapshot of the same call replaces one that was not written yet.
        last = frames[-1] if frames else None
        if last and last.type == SessionFrame.TOOL_CALL and last.payload["tool_call_id"] == call.tool_call_id:
            last.payload = payload
            return
        self._push(_Frame(SessionFrame.TOOL_CALL, payload))

    # ------------------------------------------------------------------ writing

    def take(self) -> Batch:
        batch, self._buffer = self._buffer, Batch()
        return batch

    def put_back(self, batch: Batch) -> None:
        """A batch whose transaction failed goes back in front of anything newer."""
        if batch.inserted_message:
            self.message_id = None
            batch.inserted_message = False
        newer = self._buffer
        self._buffer = Batch(
            frames=batch.frames + newer.frames,
            text=batch.text + newer.text,
            reasoning=batch.reasoning + newer.reasoning,
            tools={**batch.tools, **newer.tools},
            end=newer.end or batch.end,
            advertised=newer.advertised or batch.advertised,
        )

    async def write(self, conn: asyncpg.Connection, batch: Batch, also: Sequence[Event] = ()) -> None:
        """Write ``batch`` inside the caller's transaction: the message's rows, then its frames
        and the frames ``also`` (complete payloads), in one append."""
        session_id = self.session_id
        if self.fenced:
            return
        if batch.advertised is not None and self.agent is not None:
            offered = batch.advertised
            await conn.execute(
                q.ADVERTISE_AGENT,
                self.agent,
                list(offered.models),
                _plain(list(offered.modes)),
                _plain(list(offered.config_options)),
            )
        if session_id is None or (batch.empty and not also):
            return
        if self.message_opened:
            await self._write_message(conn, session_id, MessageUpdate.of(batch))
            if batch.tools:
                rows = [_tool_row(self.message_id, session_id, call) for call in batch.tools.values()]
                await conn.executemany(q.UPSERT_TOOL_CALL, rows)
        events = [
            (f.type, {"message_id": self.message_id, **f.payload} if f.of_message else f.payload)
            for f in batch.frames
            if self.message_id is not None or not f.of_message
        ]
        await append_events(conn, session_id, [*events, *also])

    async def _write_message(self, conn: asyncpg.Connection, session_id: int, update: MessageUpdate) -> None:
        """Insert the assistant message (and the user's) on the first write, else append to it."""
        if self.message_id is None:
            rows = await conn.fetch(
                q.INSERT_MESSAGES,
                session_id,
                self.task_id,
                self._user_input,
                self._first_attempt,
                update.text,
                update.reasoning,
                update.status or "streaming",
                update.stop_reason,
                update.prompt_tokens,
                update.completion_tokens,
            )
            self.message_id = next(row["id"] for row in rows if row["role"] == "assistant")
            update.batch.inserted_message = True
        elif not update.empty:
            await conn.execute(
                q.UPDATE_MESSAGE,
                self.message_id,
                update.text,
                update.reasoning,
                update.status,
                update.stop_reason,
                update.prompt_tokens,
                update.completion_tokens,
            )

    async def flush(self, pool: asyncpg.Pool, *, unless_closed: bool = False) -> None:
        """Write what is buffered in a transaction of its own (put back if it fails).

        With ``unless_closed`` (the scheduler's flushes) nothing happens once finalize owns the
        sink: a batch finalize put back after a failed attempt must go out with the task's end.
        """
        async with self.writing:
            if (unless_closed and self.closed) or self.fenced:
                return
            batch = self.take()
            if batch.empty:
                return
            xid: str | None = None
            try:
                async with pool.acquire() as conn, conn.transaction():
                    if self.claim_token is not None:
                        xid = await queue.hold_claim_of(conn, self.task_id, self.claim_token)
                        if xid is None:
                            raise ClaimLost
                    await self.write(conn, batch)
            except ClaimLost:
                self.fence()
                if self._on_claim_lost is not None:
                    self._on_claim_lost()
                raise
            except CONNECTION_LOST:
                # Written again only if it did not commit (the answer to a COMMIT can be lost).
                if xid is not None and await _committed(pool, xid):
                    return
                if not self.fenced:
                    self.put_back(batch)
                raise
            except BaseException:
                if not self.fenced:
                    self.put_back(batch)
                raise


async def _committed(pool: asyncpg.Pool, xid: str) -> bool:
    """Whether a flush whose connection died committed; not known yet counts as not committed
    only once the database answers again (within the flush's own deadline)."""
    delay = FLUSH_RETRY
    while True:
        try:
            status = await queue.transaction_status(pool, xid)
        except CONNECTION_LOST:
            status = "in progress"
        if status != "in progress":
            return status == "committed"
        await anyio.sleep(delay)
        delay = min(delay * 2, FLUSH_RETRY_MAX)


class FlushScheduler:
    """One scheduler for every running turn's sink, flushing each in a task of its own.

    Leading edge: a sink that has not been flushed for ``coalesce`` seconds is flushed at once,
    so a turn's first output (a model's first token) reaches clients without waiting. Output
    that follows within ``coalesce`` is batched and flushed by one timer. A failed flush is put
    back and retried with backoff.
    """

    def __init__(self, pool: asyncpg.Pool, coalesce: float, flush_limit: float) -> None:
        self._pool = pool
        self._coalesce = coalesce
        self._flush_limit = flush_limit
        self._now: dict[TurnSink, None] = {}
        self._due: dict[TurnSink, None] = {}
        self._timer_armed = False
        self._wake = anyio.Event()

    def schedule(self, sink: TurnSink) -> None:
        """The sink's ``on_output``."""
        if sink.closed or sink.fenced or sink in self._now or sink in self._due:
            return
        if anyio.current_time() - sink.flushed_at >= self._coalesce:
            self._now[sink] = None
        else:
            self._due[sink] = None
        self._wake.set()

    def forget(self, sink: TurnSink) -> None:
        """Finalize writes the rest itself."""
        sink.closed = True
        self._now.pop(sink, None)
        self._due.pop(sink, None)

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                now, self._now = self._now, {}
                for sink in now:
                    tg.start_soon(self._flush, sink)
                if self._due and not self._timer_armed:
                    self._timer_armed = True
                    tg.start_soon(self._flush_due_later, tg)

    async def _flush_due_later(self, tg: anyio.abc.TaskGroup) -> None:
        await anyio.sleep(self._coalesce)
        self._timer_armed = False
        due, self._due = self._due, {}
        for sink in due:
            tg.start_soon(self._flush, sink)

    async def _flush(self, sink: TurnSink) -> None:
        sink.flushed_at = anyio.current_time()
        error: Exception | None = None
        # Never cut in half by the end of the turn: finalize waits for it (TurnSink.writing).
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._flush_limit) as deadline:
            try:
                await sink.flush(self._pool, unless_closed=True)
            except ClaimLost:
                log.warning("turn.claim_lost", task_id=sink.task_id)
                return
            except Exception as exc:
                error = exc
        if sink.fenced:
            return
        if error is None and not deadline.cancelled_caught:
            sink.flush_failures = 0
            return
        sink.flush_failures += 1
        delay = exponential(sink.flush_failures, FLUSH_RETRY, FLUSH_RETRY_MAX)
        error = error or TimeoutError(f"no answer within {self._flush_limit:g} s")
        report(log, "turn.flush_failed", error, task_id=sink.task_id, retry_in=delay)
        await anyio.sleep(delay)
        self.schedule(sink)


def _tool_row(message_id: int | None, session_id: int, call: ToolCall) -> tuple[Any, ...]:
    return (
        message_id,
        session_id,
        call.tool_call_id,
        call.name,
        call.kind,
        call.status.value,
        _plain(call.input),
        _plain(call.output),
        _plain(list(call.locations)),
    )


def _clean(text: str) -> str:
    # PostgreSQL text cannot hold NUL.
    return text.replace("\x00", "")


def _plain(value: Any) -> Any:
    """JSON-ready copy of a backend's value (anything unknown becomes its string)."""
    return json.loads(json.dumps(value, default=str).replace("\\u0000", ""))
