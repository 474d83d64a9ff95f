"""A turn asks a person: the orchestrator's side of backends.approval's Asker.

When a backend's policy says ``ask``, :class:`TurnAsker` (one per turn) first looks for a grant of
the session ("allow always" earlier) and allows at once if one covers the request. Otherwise, in
one transaction, it writes what the turn has buffered (so the tool call precedes it), inserts the
``permission_requests`` row and appends the ``permission_request`` (or ``question``) frame. Then
it waits: any gateway's client may reply (orchestrator.services.approvals), the first reply
moving the row out of ``pending`` wins, and the row's update NOTIFYs ``permission_replies``,
which the dispatcher's LISTEN connection hands to :class:`ReplyBoard`. The waiting turn reads the
row and answers its agent. With no reply by ``expires_at`` (``[permissions] ask_timeout``) the
turn closes the request itself as ``expired`` and the agent gets the reject option; a cancelled
turn withdraws it. Both write the ``permission_resolved`` (``question_resolved``) frame in the
transaction that closes the row, so every client learns the outcome exactly once.

While it waits, the turn counts as active for the inactivity watch (``TurnSink.waiting``) and
its lease goes on being renewed like any running turn's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import anyio
import asyncpg

from backends import (
    ALLOW_OPTION_KINDS,
    REJECT_OPTION_KINDS,
    ApprovalAnswer,
    ApprovalRequest,
    QuestionAnswer,
    QuestionRequest,
    grant_covers,
    grant_patterns,
)
from kernel import (
    CONNECTION_LOST,
    PermissionRequestPayload,
    PermissionResolvedPayload,
    QuestionPayload,
    QuestionResolvedPayload,
    SessionFrame,
    append_events,
    get_logger,
    report,
)
from orchestrator.dispatch import queries as q
from orchestrator.dispatch.queue import ClaimedTask
from orchestrator.dispatch.sink import Batch, TurnSink

log = get_logger("approvals")

CHANNEL = "permission_replies"
# A waiting turn re-reads its request at least this often (a lost notification costs this much).
RECHECK_INTERVAL = 2.0
# Closing a request when the turn ends (shielded) gets at most this long.
CLOSE_TIMEOUT = 5.0

PERMISSION = "permission"
QUESTION = "question"


class ReplyBoard:
    """The turns of this dispatcher that wait for a reply, woken by ``permission_replies``.

    A notification is the request's id, or the decision itself (schema: a permission's, when it
    is small), which the waiting turn then takes without reading the row again.
    """

    def __init__(self) -> None:
        self._waiting: dict[int, anyio.Event] = {}
        self._decided: dict[int, dict[str, Any]] = {}

    def arm(self, request_id: int) -> anyio.Event:
        event = anyio.Event()
        self._waiting[request_id] = event
        return event

    def disarm(self, request_id: int) -> None:
        self._waiting.pop(request_id, None)
        self._decided.pop(request_id, None)

    def decided(self, request_id: int) -> dict[str, Any] | None:
        return self._decided.get(request_id)

    def on_notify(self, payload: str) -> None:
        try:
            decision = json.loads(payload)
            request_id = int(decision["id"]) if isinstance(decision, dict) else int(decision)
        except (ValueError, KeyError, TypeError):
            log.warning("approvals.bad_notification", payload=payload[:200])
            return
        event = self._waiting.get(request_id)
        if event is not None:
            if isinstance(decision, dict):
                self._decided[request_id] = decision
            event.set()

    def wake_all(self) -> None:
        """After a reconnect of the LISTEN connection: notifications may have been lost."""
        for event in self._waiting.values():
            event.set()


class Approvals:
    """What every turn's asker shares: the pool, the reply board, ``[permissions] ask_timeout``."""

    def __init__(self, pool: asyncpg.Pool, board: ReplyBoard, ask_timeout: float) -> None:
        self.pool = pool
        self.board = board
        self.ask_timeout = ask_timeout

    def asker(self, task: ClaimedTask, sink: TurnSink) -> TurnAsker:
        return TurnAsker(self, task, sink)


class TurnAsker:
    """The ``Turn.asker`` of one turn (backends.approval.Asker)."""

    def __init__(self, approvals: Approvals, task: ClaimedTask, sink: TurnSink) -> None:
        self._approvals = approvals
        self._pool = approvals.pool
        self._task = task
        self._sink = sink
        # The session's grants (tool kind -> [(pattern, granted by)]), read at the first ask. Only
        # this turn's own requests can add any while it runs (one turn per session at a time).
        self._grants: dict[str, list[tuple[str, str]]] | None = None

    # ------------------------------------------------------------------------- permissions

    async def permission(self, request: ApprovalRequest) -> ApprovalAnswer:
        reject = request.option_of(REJECT_OPTION_KINDS)
        try:
            granted = await self._granted(request)
        except CONNECTION_LOST as exc:
            return ApprovalAnswer(False, reject, f"could not ask: the database is unavailable ({exc})")
        if granted is not None:
            allow = request.option_of(ALLOW_OPTION_KINDS)
            return ApprovalAnswer(True, allow, f"allowed always for this session by {granted}", remembered=True)
        columns = request_columns(request)
        row = await self._ask(PERMISSION, columns)
        if row is None:
            return ApprovalAnswer(False, reject, "could not ask: the turn no longer holds its task or the session")
        if row["state"] == "allowed" and row["remember"] == "session" and self._grants is not None:
            kept = self._grants.setdefault(request.tool_kind, [])
            kept += [(pattern, str(row["decided_by"])) for pattern in columns["patterns"]]
        return permission_answer(row, request)

    async def _granted(self, request: ApprovalRequest) -> str | None:
        """Who granted "allow always" for a request like this in the session, if anyone did."""
        session_id = self._sink.session_id
        if session_id is None:
            return None
        if self._grants is None:
            self._grants = {}
            for row in await self._pool.fetch(q.SESSION_GRANTS, session_id):
                self._grants.setdefault(row["tool_kind"], []).append((row["pattern"], row["granted_by"]))
        grants = self._grants.get(request.tool_kind, [])
        people = sorted({by for _, by in grants})
        for person in people:
            if grant_covers([pattern for pattern, by in grants if by == person], request):
                return person
        if grant_covers([pattern for pattern, _ in grants], request):
            return ", ".join(people)
        return None

    # ------------------------------------------------------------------------- questions

    async def question(self, request: QuestionRequest) -> QuestionAnswer:
        columns = {"tool_call_id": request.tool_call_id, "permission": QUESTION, "tool_kind": "other"}
        row = await self._ask(QUESTION, {**columns, "title": "", "questions": list(request.questions)})
        if row is None:
            return QuestionAnswer(None, "could not ask: the turn no longer holds its task or the session")
        answers = row["answers"]
        if row["state"] == "answered" and isinstance(answers, list):
            chosen = tuple(tuple(str(a) for a in one) for one in answers)
            return QuestionAnswer(chosen, f"answered by {row['decided_by']}")
        return QuestionAnswer(None, row["reason"] or row["state"])

    # ------------------------------------------------------------------------- the round trip

    async def _ask(self, kind: str, columns: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """Insert the request, wait for its end; the closed row (None: it could not be asked)."""
        sink = self._sink
        sink.waiting += 1
        try:
            try:
                created = await self._insert(kind, columns)
            except CONNECTION_LOST as exc:
                report(log, "approvals.ask_failed", exc, task_id=self._task.id)
                return None
            if created is None:
                return None
            request_id = created["id"]
            closed: Mapping[str, Any] | None = None
            try:
                closed = await self._wait(request_id, columns)
                return closed
            finally:
                self._approvals.board.disarm(request_id)
                if closed is None:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
                        # Cancelled (or failed) while waiting: nobody may decide it any more.
                        await self._close(request_id, "withdrawn", None, "the turn ended before a reply")
        finally:
            sink.waiting -= 1
            sink.last_activity = anyio.current_time()

    async def _insert(self, kind: str, columns: Mapping[str, Any]) -> asyncpg.Record | None:
        """The request's row and frame, in the transaction that writes what the turn buffered."""
        sink, task = self._sink, self._task
        if sink.session_id is None:
            return None
        async with sink.writing:
            taken = rest = sink.take()
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    if sink.message_id is None:
                        # The message's first write inserts it: the request names it.
                        await sink.write(conn, taken)
                        rest = Batch()
                    created = await conn.fetchrow(
                        q.INSERT_PERMISSION_REQUEST,
                        task.id,
                        task.claim_token,
                        sink.message_id,
                        kind,
                        columns.get("tool_call_id"),
                        columns.get("permission", ""),
                        columns.get("tool_kind", "other"),
                        columns.get("title", ""),
                        columns.get("command"),
                        list(columns.get("paths", ())),
                        list(columns.get("patterns", ())),
                        list(columns.get("options", ())),
                        columns.get("questions"),
                        self._approvals.ask_timeout,
                    )
                    frames = []
                    if created is not None:
                        expires = created["expires_at"]
                        frames.append(asked_frame(kind, created["id"], task.id, sink.message_id, columns, expires))
                    # The buffered frames (the tool call asked about) first, then the request.
                    await sink.write(conn, rest, also=frames)
            except BaseException:
                sink.put_back(taken)
                raise
        return created

    async def _wait(self, request_id: int, columns: Mapping[str, Any]) -> Mapping[str, Any]:
        board = self._approvals.board
        # The row's expires_at tells clients; the turn keeps its own clock (no clock skew).
        deadline = anyio.current_time() + self._approvals.ask_timeout
        while True:
            woken = board.arm(request_id)  # armed before reading: a reply meanwhile is not missed
            row: Mapping[str, Any] | None
            try:
                row = await self._pool.fetchrow(q.READ_PERMISSION_REQUEST, request_id)
            except CONNECTION_LOST as exc:
                report(log, "approvals.read_failed", exc, request_id=request_id)
                row = None
            if row is not None and row["state"] != "pending":
                return row
            left = deadline - anyio.current_time()
            if left <= 0:
                timeout = self._approvals.ask_timeout
                reject = first_option(columns.get("options", ()), REJECT_OPTION_KINDS)
                reason = f"nobody answered within {timeout:g} s (permissions.ask_timeout)"
                closed = await self._close(request_id, "expired", reject, reason)
                if closed is not None:
                    return closed
                continue  # answered at the last moment
            with anyio.move_on_after(min(left, RECHECK_INTERVAL)):
                await woken.wait()
            decided = board.decided(request_id)
            if decided is not None and decided["state"] != "pending":
                return decided  # the notification carried the decision

    async def _close(self, request_id: int, state: str, option_id: str | None, reason: str) -> Mapping[str, Any] | None:
        """End a request still pending (expired, withdrawn) and tell the clients; None if it was not."""
        row: Mapping[str, Any] | None
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(q.CLOSE_PERMISSION_REQUEST, request_id, state, option_id, reason)
                if row is not None:
                    await append_events(conn, row["session_id"], [resolved_frame(row)])
        except CONNECTION_LOST as exc:
            # The sweep of orphaned requests withdraws it once the turn is gone.
            report(log, "approvals.close_failed", exc, request_id=request_id)
            return None
        return row


# ---------------------------------------------------------------------------- rows and frames


def request_columns(request: ApprovalRequest) -> dict[str, Any]:
    return {
        "tool_call_id": request.tool_call_id,
        "permission": request.permission,
        "tool_kind": request.tool_kind,
        "title": request.title,
        "command": request.command,
        "paths": request.paths,
        "patterns": grant_patterns(request),
        "options": [{"option_id": o.option_id, "kind": o.kind, "name": o.name} for o in request.options],
    }


def first_option(options: Any, kinds: tuple[str, ...]) -> str | None:
    for kind in kinds:
        for option in options or ():
            if option.get("kind") == kind:
                return str(option["option_id"])
    return None


def asked_frame(
    kind: str,
    request_id: int,
    task_id: int,
    message_id: int | None,
    columns: Mapping[str, Any],
    expires_at: datetime,
) -> tuple[SessionFrame, Mapping[str, Any]]:
    if kind == QUESTION:
        question = QuestionPayload(
            message_id=message_id,
            request_id=request_id,
            task_id=task_id,
            tool_call_id=columns.get("tool_call_id"),
            questions=list(columns.get("questions") or ()),
            expires_at=expires_at.isoformat(),
        )
        return SessionFrame.QUESTION, question
    payload = PermissionRequestPayload(
        message_id=message_id,
        request_id=request_id,
        task_id=task_id,
        tool_call_id=columns.get("tool_call_id"),
        permission=columns.get("permission", ""),
        tool_kind=columns.get("tool_kind", "other"),
        title=columns.get("title", ""),
        command=columns.get("command"),
        paths=list(columns.get("paths", ())),
        options=list(columns.get("options", ())),
        expires_at=expires_at.isoformat(),
    )
    return SessionFrame.PERMISSION_REQUEST, payload


def resolved_frame(row: Mapping[str, Any]) -> tuple[SessionFrame, Mapping[str, Any]]:
    """The ``permission_resolved`` / ``question_resolved`` frame of a request that left pending."""
    reason = row["reason"] or describe(row)
    if row["kind"] == QUESTION:
        question = QuestionResolvedPayload(
            message_id=row["message_id"],
            request_id=row["id"],
            task_id=row["task_id"],
            state=row["state"],
            answers=row["answers"],
            decided_by=row["decided_by"],
            reason=reason,
        )
        return SessionFrame.QUESTION_RESOLVED, question
    payload = PermissionResolvedPayload(
        message_id=row["message_id"],
        request_id=row["id"],
        task_id=row["task_id"],
        state=row["state"],
        option_id=row["option_id"],
        remember=row["remember"],
        decided_by=row["decided_by"],
        reason=reason,
    )
    return SessionFrame.PERMISSION_RESOLVED, payload


def describe(row: Mapping[str, Any]) -> str:
    """What a person's decision was, in words."""
    who = row["decided_by"] or "nobody"
    match row["state"]:
        case "allowed" if row["remember"] == "session":
            return f"allowed always for this session by {who}"
        case "allowed":
            return f"allowed by {who}"
        case "denied":
            return f"denied by {who}"
        case "answered":
            return f"answered by {who}"
    return str(row["state"])


def permission_answer(row: Mapping[str, Any], request: ApprovalRequest) -> ApprovalAnswer:
    """What the agent is told, from the closed row."""
    reason = row["reason"] or describe(row)
    if row["state"] == "allowed":
        return ApprovalAnswer(True, row["option_id"] or request.option_of(ALLOW_OPTION_KINDS), reason)
    if row["state"] == "withdrawn":
        return ApprovalAnswer(False, None, reason)
    return ApprovalAnswer(False, row["option_id"] or request.option_of(REJECT_OPTION_KINDS), reason)


async def withdraw_orphans(pool: asyncpg.Pool) -> int:
    """Withdraw requests whose asking attempt is gone (a dead dispatcher's turns); their frames too."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(q.WITHDRAW_ORPHAN_REQUESTS)
        for row in rows:
            await append_events(conn, row["session_id"], [resolved_frame(row)])
    return len(rows)
