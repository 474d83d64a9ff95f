"""Client → server frames, validated fail-closed.

A frame is a JSON object with a ``type`` and, optionally, an ``id`` (string or integer) that
the server echoes in its ``ack``/``error``/``pong`` reply. Text that is not a JSON object
raises MalformedFrame (the server closes with 1007); an unknown type, an unknown field, a
missing field or a value of the wrong type or range raises InvalidFrame (an ``error`` frame).
docs/PROTOCOL.md describes every frame.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ws_gateway.actions import ACCEPT_MODES, CHANGE_STATUSES, COMMENT_SIDES, PERMISSION_DECISIONS, REVIEW_ACTIONS
from ws_gateway.errors import InvalidFrame, MalformedFrame

RequestId = str | int

MAX_ID = 2**63 - 1  # bigint
MAX_REQUEST_ID_CHARS = 64
MAX_NAME_CHARS = 200
MAX_SESSIONS_PER_FRAME = 100
MAX_FILES = 1000
MAX_PRIORITY = 2**31 - 1
MAX_ATTEMPTS = 100
# The frame size limit (gateway.max_frame_bytes) is what bounds a prompt.
MAX_INPUT_CHARS = 2**31
MAX_TOKEN_CHARS = 512
MAX_LIST_LIMIT = 200
DEFAULT_LIST_LIMIT = 50
MAX_TEXT_CHARS = 20_000
MAX_HUNK_ID = 1_000_000
# list_sessions' paging cursor: '<last_active_at in microseconds since 1970>:<session id>'.
CURSOR = re.compile(r"-?\d{1,19}:\d{1,19}")
MAX_AGENT_OPTIONS = 32
MAX_OPTION_KEY_CHARS = 64
# question_reply: questions per request, labels per answer, characters per label.
MAX_ANSWERS = 20
MAX_LABELS = 50
MAX_LABEL_CHARS = 2000
# A session id as an object key: a bigint in decimal.
SESSION_ID_KEY = re.compile(r"[1-9][0-9]{0,18}")


@dataclass(frozen=True)
class Subscribe:
    session_ids: tuple[int, ...]
    # None: start with a snapshot. An int applies to every session; a dict names each one
    # (sessions missing from it start with a snapshot).
    since_seq: int | dict[int, int] | None
    id: RequestId | None = None

    def since(self, session_id: int) -> int | None:
        if isinstance(self.since_seq, dict):
            return self.since_seq.get(session_id)
        return self.since_seq


@dataclass(frozen=True)
class Unsubscribe:
    session_ids: tuple[int, ...]
    id: RequestId | None = None


@dataclass(frozen=True)
class Submit:
    input: str
    project_id: int | None = None
    session_id: int | None = None
    agent: str | None = None
    model: str | None = None
    mode_id: str | None = None
    priority: int = 0
    max_attempts: int = 3
    dispatch_key: str | None = None
    # ACP session config options (or opencode's effort), by option id or category.
    agent_options: dict[str, str | bool] | None = None
    fresh_context: bool = False
    id: RequestId | None = None


@dataclass(frozen=True)
class Cancel:
    task_id: int
    id: RequestId | None = None


@dataclass(frozen=True)
class Review:
    change_id: int
    action: str
    files: tuple[str, ...] | None = None
    # path -> hunk ids (as get_diff lists them)
    hunks: dict[str, tuple[int, ...]] | None = None
    mode: str = "apply"
    message: str | None = None
    branch: str | None = None
    id: RequestId | None = None


@dataclass(frozen=True)
class GetDiff:
    """A change's diff (``since_change_id``: the interdiff since that change's snapshot), or with
    ``live`` a session's worktree as it is now."""

    change_id: int | None = None
    since_change_id: int | None = None
    session_id: int | None = None
    live: bool = False
    id: RequestId | None = None


@dataclass(frozen=True)
class Comment:
    change_id: int
    body: str
    path: str | None = None
    line: int | None = None
    side: str = "new"
    id: RequestId | None = None


@dataclass(frozen=True)
class RequestChanges:
    change_id: int
    message: str | None = None
    id: RequestId | None = None


@dataclass(frozen=True)
class Rebase:
    change_id: int
    id: RequestId | None = None


@dataclass(frozen=True)
class ResolveWithAgent:
    change_id: int
    message: str | None = None
    id: RequestId | None = None


@dataclass(frozen=True)
class ListChanges:
    session_id: int
    # None: every status
    status: str | None = None
    limit: int = DEFAULT_LIST_LIMIT
    id: RequestId | None = None


@dataclass(frozen=True)
class Ping:
    id: RequestId | None = None


@dataclass(frozen=True)
class Auth:
    """Sign-in as the first frame, for clients that cannot set a header (browsers)."""

    token: str
    id: RequestId | None = None


@dataclass(frozen=True)
class ListProjects:
    id: RequestId | None = None


@dataclass(frozen=True)
class ListSessions:
    project_id: int
    limit: int = DEFAULT_LIST_LIMIT
    # The ``next_cursor`` of the previous page; None: the most recently active sessions.
    cursor: str | None = None
    id: RequestId | None = None


@dataclass(frozen=True)
class ListTasks:
    session_id: int
    # None: the session's pending and running tasks, in run order; else these tasks, any state.
    task_ids: tuple[int, ...] | None = None
    id: RequestId | None = None


@dataclass(frozen=True)
class SubscribeProject:
    project_ids: tuple[int, ...]
    id: RequestId | None = None


@dataclass(frozen=True)
class UnsubscribeProject:
    project_ids: tuple[int, ...]
    id: RequestId | None = None


@dataclass(frozen=True)
class PermissionReply:
    """A person decides a ``permission_request``: by the option's id or by the kind of decision."""

    request_id: int
    option_id: str | None = None
    decision: str | None = None
    id: RequestId | None = None


@dataclass(frozen=True)
class QuestionReply:
    """A person answers a ``question`` (one list of labels per question), or dismisses it."""

    request_id: int
    answers: tuple[tuple[str, ...], ...] | None = None
    id: RequestId | None = None


@dataclass(frozen=True)
class ListAgents:
    id: RequestId | None = None


@dataclass(frozen=True)
class ListModels:
    id: RequestId | None = None


DiscoveryFrame = ListProjects | ListSessions | ListTasks | SubscribeProject | UnsubscribeProject
ReviewFrame = Review | GetDiff | Comment | RequestChanges | Rebase | ResolveWithAgent | ListChanges
ReplyFrame = PermissionReply | QuestionReply
ClientFrame = (
    Subscribe
    | Unsubscribe
    | Submit
    | Cancel
    | Ping
    | Auth
    | DiscoveryFrame
    | ReviewFrame
    | ReplyFrame
    | ListAgents
    | ListModels
)


class _Fields:
    """Takes fields out of a frame one by one; whatever is left over is an unknown field."""

    def __init__(self, frame: dict[str, Any], request_id: RequestId | None) -> None:
        self._frame = frame
        self.request_id = request_id

    def fail(self, message: str) -> InvalidFrame:
        return InvalidFrame(message, self.request_id)

    def _take(self, key: str, required: bool) -> Any:
        if key not in self._frame or (self._frame[key] is None and not required):
            if required:
                raise self.fail(f"missing field {key!r}")
            self._frame.pop(key, None)
            return None
        return self._frame.pop(key)

    def has(self, key: str) -> bool:
        return self._frame.get(key) is not None

    def integer(self, key: str, *, required: bool = True, minimum: int = 1, maximum: int = MAX_ID) -> int | None:
        value = self._take(key, required)
        if value is None:
            return None
        return _check_int(value, key, minimum, maximum, self)

    def text(self, key: str, *, required: bool = False, max_chars: int = MAX_NAME_CHARS) -> str | None:
        value = self._take(key, required)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise self.fail(f"{key!r} must be a non-empty string")
        if len(value) > max_chars:
            raise self.fail(f"{key!r} is longer than {max_chars} characters")
        return value

    def ids(self, key: str, what: str = "sessions") -> tuple[int, ...]:
        value = self._take(key, True)
        if not isinstance(value, list) or not value:
            raise self.fail(f"{key!r} must be a non-empty list of ids")
        if len(value) > MAX_SESSIONS_PER_FRAME:
            raise self.fail(f"{key!r} may name at most {MAX_SESSIONS_PER_FRAME} {what}")
        return tuple(dict.fromkeys(_check_int(v, key, 1, MAX_ID, self) for v in value))

    def since_seq(self, key: str) -> int | dict[int, int] | None:
        value = self._take(key, False)
        if value is None:
            return None
        if isinstance(value, dict):
            since: dict[int, int] = {}
            for sid, seq in value.items():
                # ASCII digits only: str.isdigit() accepts "²", which int() refuses.
                if not SESSION_ID_KEY.fullmatch(sid):
                    raise self.fail(f"{key!r} keys must be session ids")
                since[_check_int(int(sid), key, 1, MAX_ID, self)] = _check_int(seq, key, 0, MAX_ID, self)
            return since
        return _check_int(value, key, 0, MAX_ID, self)

    def files(self, key: str) -> tuple[str, ...] | None:
        value = self._take(key, False)
        if value is None:
            return None
        if not isinstance(value, list) or not value or len(value) > MAX_FILES:
            raise self.fail(f"{key!r} must be a list of 1 to {MAX_FILES} paths")
        if not all(isinstance(v, str) and v for v in value):
            raise self.fail(f"{key!r} must hold non-empty strings")
        return tuple(value)

    def flag(self, key: str) -> bool:
        value = self._take(key, False)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self.fail(f"{key!r} must be true or false")
        return value

    def choice(self, key: str, choices: tuple[str, ...]) -> str | None:
        value = self.text(key)
        if value is not None and value not in choices:
            raise self.fail(f"{key!r} must be one of {', '.join(choices)}")
        return value

    def hunks(self, key: str) -> dict[str, tuple[int, ...]] | None:
        value = self._take(key, False)
        if value is None:
            return None
        if not isinstance(value, dict) or not value or len(value) > MAX_FILES:
            raise self.fail(f"{key!r} must be an object of 1 to {MAX_FILES} paths, each with a list of hunk ids")
        out: dict[str, tuple[int, ...]] = {}
        for path, ids in value.items():
            if not path or not isinstance(ids, list) or not ids or len(ids) > MAX_HUNK_ID:
                raise self.fail(f"{key!r} must map each path to a non-empty list of hunk ids")
            out[path] = tuple(dict.fromkeys(_check_int(i, key, 1, MAX_HUNK_ID, self) for i in ids))
        return out

    def agent_options(self, key: str) -> dict[str, str | bool] | None:
        value = self._take(key, False)
        if value is None:
            return None
        if not isinstance(value, dict) or len(value) > MAX_AGENT_OPTIONS:
            raise self.fail(f"{key!r} must be an object of at most {MAX_AGENT_OPTIONS} options")
        for name, option in value.items():
            if not name or len(name) > MAX_OPTION_KEY_CHARS:
                raise self.fail(f"{key!r} keys must be 1 to {MAX_OPTION_KEY_CHARS} characters")
            if not isinstance(option, bool) and not (isinstance(option, str) and 0 < len(option) <= MAX_NAME_CHARS):
                raise self.fail(f"{key!r} values must be true, false or a string of 1 to {MAX_NAME_CHARS} characters")
        return value

    def answers(self, key: str) -> tuple[tuple[str, ...], ...] | None:
        value = self._take(key, False)
        if value is None:
            return None
        if not isinstance(value, list) or not 0 < len(value) <= MAX_ANSWERS:
            raise self.fail(f"{key!r} must be a list of 1 to {MAX_ANSWERS} answers")
        for answer in value:
            if not isinstance(answer, list) or not 0 < len(answer) <= MAX_LABELS:
                raise self.fail(f"{key!r} must hold lists of 1 to {MAX_LABELS} labels")
            if not all(isinstance(label, str) and 0 < len(label) <= MAX_LABEL_CHARS for label in answer):
                raise self.fail(f"{key!r} labels must be strings of 1 to {MAX_LABEL_CHARS} characters")
        return tuple(tuple(answer) for answer in value)

    def done(self) -> None:
        if self._frame:
            raise self.fail(f"unknown field {sorted(self._frame)[0]!r}")


def _check_int(value: Any, key: str, minimum: int, maximum: int, fields: _Fields) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise fields.fail(f"{key!r} must be an integer")
    if not minimum <= value <= maximum:
        raise fields.fail(f"{key!r} must be between {minimum} and {maximum}")
    return value


def _request_id(frame: dict[str, Any]) -> RequestId | None:
    value = frame.pop("id", None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidFrame("'id' must be a string or an integer")
    if isinstance(value, str) and len(value) > MAX_REQUEST_ID_CHARS:
        raise InvalidFrame(f"'id' is longer than {MAX_REQUEST_ID_CHARS} characters")
    return value


def _required(value: int | None) -> int:
    assert value is not None  # _Fields.integer(required=True) never returns None
    return value


def _parse_fields(type_: str, f: _Fields) -> ClientFrame:
    rid = f.request_id
    if type_ == "subscribe":
        session_ids = f.ids("session_ids")
        since = f.since_seq("since_seq")
        if isinstance(since, dict) and not since.keys() <= set(session_ids):
            raise f.fail("'since_seq' names a session that is not in 'session_ids'")
        return Subscribe(session_ids, since, rid)
    if type_ == "unsubscribe":
        return Unsubscribe(f.ids("session_ids"), rid)
    if type_ == "submit":
        input_ = f.text("input", required=True, max_chars=MAX_INPUT_CHARS)
        assert input_ is not None
        return Submit(
            input=input_,
            project_id=f.integer("project_id", required=False),
            session_id=f.integer("session_id", required=False),
            agent=f.text("agent"),
            model=f.text("model"),
            mode_id=f.text("mode_id"),
            priority=f.integer("priority", required=False, minimum=-MAX_PRIORITY, maximum=MAX_PRIORITY) or 0,
            max_attempts=f.integer("max_attempts", required=False, maximum=MAX_ATTEMPTS) or 3,
            dispatch_key=f.text("dispatch_key"),
            agent_options=f.agent_options("agent_options"),
            fresh_context=f.flag("fresh_context"),
            id=rid,
        )
    if type_ == "cancel":
        return Cancel(_required(f.integer("task_id")), rid)
    if type_ == "ping":
        return Ping(rid)
    if type_ == "auth":
        token = f.text("token", required=True, max_chars=MAX_TOKEN_CHARS)
        assert token is not None
        return Auth(token, rid)
    return _parse_review(type_, f)


def _parse_review(type_: str, f: _Fields) -> ClientFrame:
    rid = f.request_id
    if type_ == "review":
        return _review(f)
    if type_ == "get_diff":
        live = f.flag("live")
        if live:
            if f.has("change_id") or f.has("since_change_id"):
                raise f.fail("'live' takes a 'session_id', not a change")
            return GetDiff(session_id=_required(f.integer("session_id")), live=True, id=rid)
        if f.has("session_id"):
            raise f.fail("'session_id' goes with 'live': true; a change's diff takes 'change_id'")
        change_id = _required(f.integer("change_id"))
        return GetDiff(change_id, f.integer("since_change_id", required=False), id=rid)
    if type_ == "comment":
        change_id = _required(f.integer("change_id"))
        body = f.text("body", required=True, max_chars=MAX_TEXT_CHARS)
        assert body is not None
        path = f.text("path", max_chars=4096)
        line = f.integer("line", required=False, maximum=2**31 - 1)
        side = f.choice("side", COMMENT_SIDES)
        if (path is None) != (line is None) or (side is not None and path is None):
            raise f.fail("a comment names 'path' and 'line' (and maybe 'side'), or none of them")
        return Comment(change_id, body, path, line, side or "new", rid)
    if type_ in ("request_changes", "resolve_with_agent"):
        change_id = _required(f.integer("change_id"))
        message = f.text("message", max_chars=MAX_TEXT_CHARS)
        return (RequestChanges if type_ == "request_changes" else ResolveWithAgent)(change_id, message, rid)
    if type_ == "rebase":
        return Rebase(_required(f.integer("change_id")), rid)
    if type_ == "list_changes":
        session_id = _required(f.integer("session_id"))
        status = f.choice("status", (*CHANGE_STATUSES, "all"))
        limit = f.integer("limit", required=False, maximum=MAX_LIST_LIMIT) or DEFAULT_LIST_LIMIT
        return ListChanges(session_id, None if status in (None, "all") else status, limit, rid)
    return _parse_discovery(type_, f)


def _review(f: _Fields) -> Review:
    change_id = _required(f.integer("change_id"))
    action = f.choice("action", REVIEW_ACTIONS)
    if action is None:
        raise f.fail("missing field 'action'")
    files, hunks = f.files("files"), f.hunks("hunks")
    mode = f.choice("mode", ACCEPT_MODES)
    message = f.text("message", max_chars=MAX_TEXT_CHARS)
    branch = f.text("branch", max_chars=MAX_NAME_CHARS)
    if action == "reject" and (mode or message or branch):
        raise f.fail("'mode', 'message' and 'branch' go with 'accept'")
    if message is not None and mode not in ("commit", "branch"):
        raise f.fail("'message' goes with mode 'commit' or 'branch'")
    if (mode == "branch") != (branch is not None):
        raise f.fail("mode 'branch' needs 'branch', and 'branch' needs mode 'branch'")
    return Review(change_id, action, files, hunks, mode or "apply", message, branch, f.request_id)


def _parse_discovery(type_: str, f: _Fields) -> ClientFrame:
    rid = f.request_id
    if type_ == "list_projects":
        return ListProjects(rid)
    if type_ == "list_sessions":
        project_id = _required(f.integer("project_id"))
        limit = f.integer("limit", required=False, maximum=MAX_LIST_LIMIT) or DEFAULT_LIST_LIMIT
        cursor = f.text("cursor", max_chars=64)
        if cursor is not None and not CURSOR.fullmatch(cursor):
            raise f.fail("'cursor' must be the 'next_cursor' of an earlier list_sessions answer")
        return ListSessions(project_id, limit, cursor, rid)
    if type_ == "list_tasks":
        session_id = _required(f.integer("session_id"))
        task_ids = f.ids("task_ids", "tasks") if f.has("task_ids") else None
        return ListTasks(session_id, task_ids, rid)
    if type_ == "subscribe_project":
        return SubscribeProject(f.ids("project_ids", "projects"), rid)
    if type_ == "unsubscribe_project":
        return UnsubscribeProject(f.ids("project_ids", "projects"), rid)
    return _parse_interactive(type_, f)


def _parse_interactive(type_: str, f: _Fields) -> ClientFrame:
    rid = f.request_id
    if type_ == "permission_reply":
        request_id = _required(f.integer("request_id"))
        option_id, decision = f.text("option_id"), f.text("decision")
        if (option_id is None) == (decision is None):
            raise f.fail("permission_reply needs exactly one of 'option_id' and 'decision'")
        if decision is not None and decision not in PERMISSION_DECISIONS:
            raise f.fail(f"'decision' must be one of {', '.join(PERMISSION_DECISIONS)}")
        return PermissionReply(request_id, option_id, decision, rid)
    if type_ == "question_reply":
        request_id = _required(f.integer("request_id"))
        answers, dismiss = f.answers("answers"), f.flag("dismiss")
        if (answers is None) != dismiss:
            raise f.fail("question_reply needs either 'answers' or 'dismiss': true")
        return QuestionReply(request_id, answers, rid)
    if type_ == "list_agents":
        return ListAgents(rid)
    if type_ == "list_models":
        return ListModels(rid)
    raise f.fail(f"unknown frame type {type_!r}")


def parse_client_frame(text: str) -> ClientFrame:
    try:
        frame = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise MalformedFrame(f"not JSON: {exc}") from None
    if not isinstance(frame, dict):
        raise MalformedFrame("a frame must be a JSON object")
    request_id = _request_id(frame)
    type_ = frame.pop("type", None)
    if not isinstance(type_, str):
        raise InvalidFrame("missing field 'type'", request_id)
    fields = _Fields(frame, request_id)
    parsed = _parse_fields(type_, fields)
    fields.done()
    return parsed


def encode_frame(frame: Mapping[str, Any]) -> bytes:
    """The wire form of a server frame: compact JSON text, UTF-8 encoded once for every client."""
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False, default=str).encode()
