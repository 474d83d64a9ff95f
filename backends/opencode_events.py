"""Translate one turn's ``opencode serve`` events into :data:`~backends.base.BackendEvent` values.

Pure and synchronous, so it can be replayed against recorded SSE captures. A
:class:`TurnTranslator` follows one prompt of one opencode session: it only looks at events of
that session, and only at assistant messages answering the prompt's user message (whose id the
backend chose, so trailing events of an earlier, aborted turn are ignored). Subagent sessions the
``task`` tool starts (children of the session) count as activity, and their permission requests
are the turn's to answer; their text stays theirs (the ``task`` tool's result carries it). Streamed text arrives
twice, as ``message.part.delta`` increments and again in ``message.part.updated`` snapshots; the
translator remembers what it emitted per part and only ever emits the missing suffix, which also
makes :meth:`TurnTranslator.reconcile` (replaying ``GET /session/{id}/message`` after a dropped
stream) safe.

Besides events to emit, :meth:`TurnTranslator.handle` returns *signals* the backend acts on:
:class:`PermissionAsked`, :class:`QuestionAsked`, :class:`Retrying`, :class:`Idle` and
:class:`EarlyError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from backends.base import BackendEvent, Plan, ReasoningDelta, TextDelta, ToolCall, ToolStatus, Usage

# opencode tool name -> ACP tool kind (the frames' ``kind``).
TOOL_KINDS = {
    "bash": "execute",
    "edit": "edit",
    "write": "edit",
    "patch": "edit",
    "multiedit": "edit",
    "read": "read",
    "list": "read",
    "glob": "search",
    "grep": "search",
    "codesearch": "search",
    "webfetch": "fetch",
    "websearch": "fetch",
    "task": "think",
    "todowrite": "think",
    "todoread": "think",
}

TOOL_STATUSES = {
    "pending": ToolStatus.PENDING,
    "running": ToolStatus.IN_PROGRESS,
    "completed": ToolStatus.COMPLETED,
    "error": ToolStatus.FAILED,
}

# An assistant message's ``finish`` -> the outcome's stop reason (ACP's vocabulary).
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "content-filter": "refusal"}

# Input keys of opencode's file tools that name the file they touch.
_PATH_KEYS = ("filePath", "path")


@dataclass(frozen=True)
class PermissionAsked:
    """opencode waits for ``POST /permission/{request_id}/reply``."""

    request_id: str
    permission: str
    patterns: tuple[str, ...]
    metadata: Mapping[str, Any]
    tool_call_id: str | None
    # What a reply "always" would allow from now on in the opencode session.
    always: tuple[str, ...] = ()


@dataclass(frozen=True)
class QuestionAsked:
    """The model asks its user (the question tool); opencode waits for ``/question/{id}/reply``."""

    request_id: str
    questions: tuple[Mapping[str, Any], ...]
    tool_call_id: str | None


@dataclass(frozen=True)
class Retrying:
    """opencode failed to reach the model and will retry (it never gives up on its own)."""

    attempt: int
    message: str


@dataclass(frozen=True)
class Idle:
    """The session went idle after this turn's prompt: the turn is over."""


@dataclass(frozen=True)
class SessionError:
    """A ``session.error`` (or an assistant message's ``error``) of this turn."""

    name: str
    message: str
    status_code: int | None = None
    retryable: bool = False


@dataclass(frozen=True)
class EarlyError:
    """A ``session.error`` before the prompt started: opencode refused it (an unknown agent, say),
    or it is a late event of the previous turn; the backend checks which."""

    error: SessionError


Signal = PermissionAsked | QuestionAsked | Retrying | Idle | EarlyError


@dataclass
class _Message:
    tokens: Usage = field(default_factory=Usage)
    finish: str | None = None


class TurnTranslator:
    """State of one prompt's translation: what was emitted, the usage, the finish and the error."""

    def __init__(self, session_id: str, user_message_id: str) -> None:
        self.session_id = session_id
        self.user_message_id = user_message_id
        # The session and its subagent sessions (and theirs).
        self._family = {session_id}
        # Assistant messages answering our prompt, in order of appearance.
        self._messages: dict[str, _Message] = {}
        self._part_types: dict[str, str] = {}
        self._emitted_text: dict[str, str] = {}
        self._snapshot_only: set[str] = set()
        self._tools: dict[str, ToolCall] = {}
        self._plan: tuple[Mapping[str, Any], ...] | None = None
        self._asked: set[str] = set()
        # True once opencode shows our prompt's message: an idle (or busy) seen earlier belongs to
        # an earlier turn.
        self.started = False
        self.idle = False
        self.error: SessionError | None = None

    # ------------------------------------------------------------------------------------ state

    @property
    def usage(self) -> Usage:
        total = Usage()
        for message in self._messages.values():
            total += message.tokens
        return total

    @property
    def stop_reason(self) -> str:
        finishes = [m.finish for m in self._messages.values() if m.finish]
        last = finishes[-1] if finishes else "stop"
        return STOP_REASONS.get(last, last)

    def is_own(self, event: Mapping[str, Any]) -> bool:
        """Whether ``event`` concerns this session or a subagent's (what re-arms the watchdog)."""
        return _session_of(event.get("properties")) in self._family

    # ----------------------------------------------------------------------------------- events

    def handle(self, event: Mapping[str, Any]) -> list[BackendEvent | Signal]:
        """Everything to emit or act on for one ``/event`` payload ``{type, properties}``.

        After the turn's idle nothing is: opencode keeps sending late snapshots (and after an abort
        a second idle) that belong to no turn anymore.
        """
        props = event.get("properties")
        if self.idle or not isinstance(props, Mapping):
            return []
        kind = event.get("type")
        if kind == "session.created":
            self._adopt_subagent(props)
            return []
        session = _session_of(props)
        if session not in self._family:
            return []
        if session != self.session_id:
            # A subagent of this turn: only its permission requests (and questions) are ours.
            if kind in ("permission.asked", "question.asked"):
                return self._HANDLERS[kind](self, props)
            return []
        handler = self._HANDLERS.get(kind) if isinstance(kind, str) else None
        return handler(self, props) if handler is not None else []

    def reconcile(self, messages: Sequence[Mapping[str, Any]]) -> list[BackendEvent]:
        """Catch up from ``GET /session/{id}/message`` (``[{info, parts}]``) after a dropped stream.

        The snapshot may already contain deltas that the new stream delivers again, so parts seen
        here are followed by their snapshots only from now on.
        """
        out: list[BackendEvent] = []
        for entry in messages:
            info = entry.get("info")
            if not isinstance(info, Mapping):
                continue
            if info.get("id") == self.user_message_id:
                self.started = True
            self._on_message(info)
            parts = entry.get("parts")
            if info.get("id") in self._messages and isinstance(parts, list):
                for part in parts:
                    if isinstance(part, Mapping):
                        out += [e for e in self._on_part(part) if not isinstance(e, Signal)]
                        if isinstance(part.get("id"), str):
                            self._snapshot_only.add(part["id"])
        return out

    # ---------------------------------------------------------------------------------- private

    def _adopt_subagent(self, props: Mapping[str, Any]) -> None:
        """A session created by one of ours (a subagent): its events belong to the turn too."""
        info = props.get("info")
        if isinstance(info, Mapping) and info.get("parentID") in self._family and isinstance(info.get("id"), str):
            self._family.add(info["id"])

    def _part_updated(self, props: Mapping[str, Any]) -> list[BackendEvent | Signal]:
        part = props.get("part")
        return self._on_part(part) if isinstance(part, Mapping) else []

    def _message_updated(self, props: Mapping[str, Any]) -> list[BackendEvent | Signal]:
        info = props.get("info")
        if isinstance(info, Mapping):
            self._on_message(info)
        return []

    def _on_error(self, props: Mapping[str, Any]) -> list[BackendEvent | Signal]:
        error = _session_error(props.get("error"))
        if not self.started:
            return [EarlyError(error)]
        self.error = self.error or error
        return []

    def _on_message(self, info: Mapping[str, Any]) -> None:
        message_id = info.get("id")
        if not isinstance(message_id, str):
            return
        if message_id == self.user_message_id:
            self.started = True
            return
        if info.get("role") != "assistant" or info.get("parentID") != self.user_message_id:
            return
        self.started = True
        message = self._messages.setdefault(message_id, _Message())
        message.tokens = _usage(info.get("tokens"))
        if isinstance(info.get("finish"), str):
            message.finish = info["finish"]
        error = info.get("error")
        if isinstance(error, Mapping) and self.error is None:
            self.error = _session_error(error)

    def _on_status(self, status: Any) -> list[BackendEvent | Signal]:
        kind = status.get("type") if isinstance(status, Mapping) else None
        if kind == "idle":
            return self._on_idle()
        if kind == "retry":
            attempt = status.get("attempt")
            message = str(status.get("message") or "model request failed")
            number = attempt if isinstance(attempt, int) else 0
            return [Retrying(number, message)]
        return []

    def _on_idle(self) -> list[BackendEvent | Signal]:
        if not self.started or self.idle:
            return []
        self.idle = True
        return [Idle()]

    def _on_delta(self, props: Mapping[str, Any]) -> list[BackendEvent | Signal]:
        part_id, delta = props.get("partID"), props.get("delta")
        if props.get("messageID") not in self._messages or not isinstance(part_id, str):
            return []
        if part_id in self._snapshot_only or props.get("field", "text") != "text":
            return []
        if not isinstance(delta, str) or not delta:
            return []
        self._emitted_text[part_id] = self._emitted_text.get(part_id, "") + delta
        return [_text_event(self._part_types.get(part_id, "text"), delta)]

    def _on_part(self, part: Mapping[str, Any]) -> list[BackendEvent | Signal]:
        part_id, kind = part.get("id"), part.get("type")
        if part.get("messageID") not in self._messages or not isinstance(part_id, str) or not isinstance(kind, str):
            return []
        self._part_types[part_id] = kind
        if kind in ("text", "reasoning"):
            if part.get("synthetic") or part.get("ignored"):
                return []
            return self._on_text_snapshot(part_id, kind, part.get("text"))
        if kind == "tool":
            return self._on_tool(part)
        return []

    def _on_text_snapshot(self, part_id: str, kind: str, text: Any) -> list[BackendEvent | Signal]:
        if not isinstance(text, str):
            return []
        emitted = self._emitted_text.get(part_id, "")
        if len(text) <= len(emitted) or not text.startswith(emitted):
            # Nothing new, or a rewrite of text already streamed: never send it twice.
            return []
        self._emitted_text[part_id] = text
        return [_text_event(kind, text[len(emitted) :])]

    def _on_tool(self, part: Mapping[str, Any]) -> list[BackendEvent | Signal]:
        call = _tool_call(part)
        if call is None or self._tools.get(call.tool_call_id) == call:
            return []
        self._tools[call.tool_call_id] = call
        return [call]

    def _on_permission(self, props: Mapping[str, Any]) -> list[BackendEvent | Signal]:
        request_id = props.get("id")
        if not isinstance(request_id, str) or request_id in self._asked:
            return []
        self._asked.add(request_id)
        tool = props.get("tool")
        call_id = tool.get("callID") if isinstance(tool, Mapping) else None
        patterns = props.get("patterns")
        always = props.get("always")
        metadata = props.get("metadata")
        return [
            PermissionAsked(
                request_id=request_id,
                permission=str(props.get("permission") or "unknown"),
                patterns=tuple(str(p) for p in patterns) if isinstance(patterns, list) else (),
                metadata=metadata if isinstance(metadata, Mapping) else {},
                tool_call_id=call_id if isinstance(call_id, str) else None,
                always=tuple(str(p) for p in always) if isinstance(always, list) else (),
            )
        ]

    def _on_question(self, props: Mapping[str, Any]) -> list[BackendEvent | Signal]:
        request_id = props.get("id")
        questions = props.get("questions")
        if not isinstance(request_id, str) or request_id in self._asked or not isinstance(questions, list):
            return []
        self._asked.add(request_id)
        tool = props.get("tool")
        call_id = tool.get("callID") if isinstance(tool, Mapping) else None
        asked = tuple(q for q in questions if isinstance(q, Mapping))
        return [QuestionAsked(request_id, asked, call_id if isinstance(call_id, str) else None)]

    def _on_todos(self, todos: Any) -> list[BackendEvent | Signal]:
        if not isinstance(todos, list):
            return []
        entries = tuple(
            {"content": t.get("content", ""), "priority": t.get("priority", "medium"), "status": t.get("status", "")}
            for t in todos
            if isinstance(t, Mapping)
        )
        if entries == self._plan:
            return []
        self._plan = entries
        return [Plan(entries)]

    # ------------------------------------------------------------------------------------ helpers

    # What each event type of the turn's own session becomes.
    _HANDLERS: ClassVar[dict[str, Callable[[TurnTranslator, Mapping[str, Any]], list[BackendEvent | Signal]]]] = {
        "message.part.delta": lambda self, props: self._on_delta(props),
        "message.part.updated": lambda self, props: self._part_updated(props),
        "message.updated": lambda self, props: self._message_updated(props),
        "session.status": lambda self, props: self._on_status(props.get("status")),
        "session.idle": lambda self, _props: self._on_idle(),
        "session.error": lambda self, props: self._on_error(props),
        "permission.asked": lambda self, props: self._on_permission(props),
        "question.asked": lambda self, props: self._on_question(props),
        "todo.updated": lambda self, props: self._on_todos(props.get("todos")),
    }


def _session_of(props: Any) -> str | None:
    if not isinstance(props, Mapping):
        return None
    for holder in (props, props.get("part"), props.get("info")):
        if isinstance(holder, Mapping) and isinstance(holder.get("sessionID"), str):
            return str(holder["sessionID"])
    return None


def _text_event(kind: str, text: str) -> BackendEvent:
    return ReasoningDelta(text) if kind == "reasoning" else TextDelta(text)


def _usage(tokens: Any) -> Usage:
    if not isinstance(tokens, Mapping):
        return Usage()
    cache = tokens.get("cache")
    cache = cache if isinstance(cache, Mapping) else {}
    prompt = _int(tokens.get("input")) + _int(cache.get("read")) + _int(cache.get("write"))
    return Usage(prompt_tokens=prompt, completion_tokens=_int(tokens.get("output")) + _int(tokens.get("reasoning")))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _session_error(error: Any) -> SessionError:
    if not isinstance(error, Mapping):
        return SessionError("UnknownError", "opencode reported an error without details")
    data = error.get("data")
    data = data if isinstance(data, Mapping) else {}
    status = data.get("statusCode")
    return SessionError(
        name=str(error.get("name") or "UnknownError"),
        message=str(data.get("message") or error.get("name") or "unknown error"),
        status_code=status if isinstance(status, int) else None,
        retryable=bool(data.get("isRetryable")),
    )


def _tool_call(part: Mapping[str, Any]) -> ToolCall | None:
    call_id, name, state = part.get("callID"), part.get("tool"), part.get("state")
    if not isinstance(call_id, str) or not isinstance(name, str) or not isinstance(state, Mapping):
        return None
    status = TOOL_STATUSES.get(str(state.get("status")), ToolStatus.PENDING)
    tool_input = state.get("input")
    if status is ToolStatus.COMPLETED:
        output = state.get("output")
    elif status is ToolStatus.FAILED:
        output = state.get("error")
    else:
        # A running bash tool streams its output so far in metadata.
        metadata = state.get("metadata")
        output = metadata.get("output") if isinstance(metadata, Mapping) else None
    locations: tuple[Mapping[str, Any], ...] = ()
    if isinstance(tool_input, Mapping):
        locations = tuple({"path": tool_input[k]} for k in _PATH_KEYS if isinstance(tool_input.get(k), str))[:1]
    return ToolCall(
        tool_call_id=call_id,
        name=name,
        status=status,
        kind=TOOL_KINDS.get(name, "other"),
        input=tool_input or None,
        output=output,
        locations=locations,
    )
