"""The durable per-session frame log (``session_events``): its frame types, their payloads, append, read.

The dispatcher, the review service and the queue write it; the WebSocket gateway reads it and
sends each row as ``{"type": ..., "session_id": ..., "seq": ..., **payload}`` (docs/PROTOCOL.md).

Appending bumps ``sessions.last_seq`` and inserts the rows in one statement: the row lock on
the session orders concurrent writers, and the events commit together with the bump, so a
reader that sees seq N has every seq below it. The insert trigger NOTIFYs
``session_events`` with ``'<session_id>:<seq>'``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, NotRequired, TypedDict

import asyncpg

from kernel import queries as q


class SessionFrame(StrEnum):
    """Frames of a session, durable in session_events, replayable from any seq."""

    TASK_STATE = "task_state"
    MESSAGE_STARTED = "message_started"
    DELTA = "delta"
    REASONING_DELTA = "reasoning_delta"
    TOOL_CALL = "tool_call"
    AGENT_COMMANDS = "agent_commands"
    PLAN = "plan"
    PERMISSION = "permission"
    STATUS = "status"
    MESSAGE_COMPLETE = "message_complete"
    PENDING_CHANGE = "pending_change"
    WORKTREE_CHANGED = "worktree_changed"
    REVIEW_COMMENT = "review_comment"
    CHANGES_REQUESTED = "changes_requested"
    # A turn waits for a person (docs/PROTOCOL.md "Approvals"); every request is resolved once.
    PERMISSION_REQUEST = "permission_request"
    PERMISSION_RESOLVED = "permission_resolved"
    QUESTION = "question"
    QUESTION_RESOLVED = "question_resolved"


# ---------------------------------------------------------------------------- payloads
# Optional keys (``failure_reason``, ``error``) are left out when empty, as PROTOCOL.md says.


class TaskStatePayload(TypedDict):
    task_id: int
    state: str
    attempt: int
    failure_reason: NotRequired[str]
    error: NotRequired[str]
    # A pending task that no live node can run now says why ("" once one can again).
    waiting_for: NotRequired[str]


class MessageStartedPayload(TypedDict):
    message_id: int
    task_id: int
    role: Literal["assistant"]


class TextPayload(TypedDict):
    """``delta`` and ``reasoning_delta``."""

    message_id: int
    text: str


class ToolCallPayload(TypedDict):
    message_id: int
    tool_call_id: str
    name: str
    kind: str | None
    status: str
    input: Any
    output: Any
    locations: list[Any]


class AgentCommandsPayload(TypedDict):
    message_id: int
    commands: list[Any]


class PlanPayload(TypedDict):
    message_id: int
    entries: list[Any]


class PermissionPayload(TypedDict):
    message_id: int
    tool_call_id: str | None
    permission: str
    decision: Literal["allowed", "denied", "cancelled"]
    reason: str


class StatusPayload(TypedDict):
    message_id: int
    state: str
    detail: str


class MessageCompletePayload(TypedDict):
    message_id: int
    task_id: int
    status: str
    stop_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    error: NotRequired[str]


class PendingChangePayload(TypedDict):
    change_id: int
    task_id: int | None
    status: str
    base_commit: str
    files: list[dict[str, Any]]
    truncated: bool
    error: NotRequired[str]
    supersedes: NotRequired[int]
    conflicts: NotRequired[list[str]]
    commit: NotRequired[str]
    branch: NotRequired[str]


class WorktreeChangedPayload(TypedDict):
    """The worktree's diff so far while a turn runs (at most ``files`` are listed)."""

    task_id: int
    files: list[dict[str, Any]]
    total_files: int
    additions: int
    deletions: int


class ReviewCommentPayload(TypedDict):
    """A comment written on a change (``comment_id, change_id, path, side, line, body, ...``)."""

    comment_id: int
    change_id: int
    path: str | None
    side: str | None
    line: int | None
    body: str
    author: str


class ChangesRequestedPayload(TypedDict):
    change_id: int
    task_id: int
    comment_ids: list[int]


class PermissionOptionPayload(TypedDict):
    option_id: str
    # allow_once, allow_always, reject_once or reject_always (ACP's option kinds).
    kind: str
    name: str


class PermissionRequestPayload(TypedDict):
    message_id: int | None
    request_id: int
    task_id: int
    tool_call_id: str | None
    permission: str
    tool_kind: str
    title: str
    command: str | None
    paths: list[str]
    options: list[PermissionOptionPayload]
    expires_at: str


class PermissionResolvedPayload(TypedDict):
    message_id: int | None
    request_id: int
    task_id: int
    # allowed, denied, expired (nobody answered in time) or withdrawn (the turn ended first).
    state: str
    option_id: str | None
    remember: str | None
    decided_by: str | None
    reason: str


class QuestionPayload(TypedDict):
    message_id: int | None
    request_id: int
    task_id: int
    tool_call_id: str | None
    # [{question, header, options: [{label, description}], multiple}]
    questions: list[Any]
    expires_at: str


class QuestionResolvedPayload(TypedDict):
    message_id: int | None
    request_id: int
    task_id: int
    # answered, denied (dismissed), expired or withdrawn.
    state: str
    answers: list[list[str]] | None
    decided_by: str | None
    reason: str


SessionPayload = (
    TaskStatePayload
    | MessageStartedPayload
    | TextPayload
    | ToolCallPayload
    | AgentCommandsPayload
    | PlanPayload
    | PermissionPayload
    | StatusPayload
    | MessageCompletePayload
    | PendingChangePayload
    | WorktreeChangedPayload
    | ReviewCommentPayload
    | ChangesRequestedPayload
    | PermissionRequestPayload
    | PermissionResolvedPayload
    | QuestionPayload
    | QuestionResolvedPayload
)
# One frame to append: its type and payload.
Event = tuple[SessionFrame, Mapping[str, Any]]


def task_state(
    task_id: int,
    state: str,
    attempt: int,
    failure_reason: str | None = None,
    error: str | None = None,
    *,
    waiting_for: str | None = None,
) -> TaskStatePayload:
    payload = TaskStatePayload(task_id=task_id, state=state, attempt=attempt)
    if failure_reason:
        payload["failure_reason"] = failure_reason
    if error:
        payload["error"] = error
    if waiting_for is not None:
        payload["waiting_for"] = waiting_for
    return payload


def message_complete(
    message_id: int,
    task_id: int,
    status: str,
    stop_reason: str | None,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    error: str | None = None,
) -> MessageCompletePayload:
    payload = MessageCompletePayload(
        message_id=message_id,
        task_id=task_id,
        status=status,
        stop_reason=stop_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )
    if error:
        payload["error"] = error
    return payload


# ---------------------------------------------------------------------------- the log


@dataclass(frozen=True)
class StoredEvent:
    session_id: int
    seq: int
    type: str
    payload: dict[str, Any]


async def append_events(conn: asyncpg.Connection | asyncpg.Pool, session_id: int, events: Sequence[Event]) -> list[int]:
    """Append events in order; returns their seqs (empty if the session does not exist)."""
    if not events:
        return []
    rows = await conn.fetch(
        q.APPEND_EVENTS,
        session_id,
        [str(type_) for type_, _ in events],
        [json.dumps(payload) for _, payload in events],
    )
    return sorted(row["seq"] for row in rows)


async def append_event(
    conn: asyncpg.Connection | asyncpg.Pool, session_id: int, type_: SessionFrame, payload: Mapping[str, Any]
) -> int:
    seqs = await append_events(conn, session_id, [(type_, payload)])
    if not seqs:
        raise LookupError(f"session {session_id} does not exist")
    return seqs[0]


async def read_events(
    conn: asyncpg.Connection | asyncpg.Pool, session_id: int, after_seq: int, limit: int = 1000
) -> list[StoredEvent]:
    rows = await conn.fetch(q.READ_EVENTS, session_id, after_seq, limit)
    return [StoredEvent(session_id, row["seq"], row["type"], row["payload"]) for row in rows]
