"""The contract every track implements: ``await backend.run_turn(turn, emit) -> TurnOutcome``.

A backend receives a :class:`Turn` (everything it may need, loaded by the orchestrator),
streams :data:`BackendEvent` values through ``emit`` as they happen, and returns one
:class:`TurnOutcome`. It never touches the database: whatever must persist across turns
(an upstream agent session id) travels in ``Turn.agent_session`` and back in
``TurnOutcome.agent_session``.

Cancellation and timeouts arrive as anyio cancellation of ``run_turn``. A backend cleans up
in a shielded, time-bounded ``finally`` (ACP ``session/cancel``, OpenCode ``abort``, killing a
process group) and lets the cancellation propagate; the orchestrator records ``cancelled``
(or the timeout) itself. Expected failures are returned as a failed outcome, not raised.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Protocol

from backends.approval import Asker

# ---------------------------------------------------------------------------- the turn


@dataclass(frozen=True)
class HistoryMessage:
    role: Literal["user", "assistant", "system"]
    content: str


@dataclass(frozen=True)
class AgentSession:
    """An upstream agent's session that a later turn of the same Switchyard session reuses."""

    upstream_session_id: str
    config_hash: str
    server_key: str | None = None


@dataclass(frozen=True)
class Turn:
    task_id: int
    session_id: int
    project_id: int
    input: str
    agent: str | None = None
    model: str | None = None
    mode_id: str | None = None
    attempt: int = 1
    # The session's worktree, <worktrees root>/<project_id>/<session_id>; agents run here and may
    # write nowhere else.
    workdir: Path | None = None
    # The project repository's git directory (the worktree's objects and refs): agents in the
    # sandbox may read it, never write it.
    git_dir: Path | None = None
    # Earlier messages of the session, oldest first (bounded by the orchestrator; empty for a
    # turn with a fresh context, which gets no agent_session either).
    history: tuple[HistoryMessage, ...] = ()
    agent_session: AgentSession | None = None
    # The task's agent options (``tasks.agent_options``), checked against what the agent offers.
    agent_options: Mapping[str, str | bool] = field(default_factory=dict)
    # The project's name (per-project permission overrides).
    project_name: str = ""
    # Asks a person when the policy says ``ask``; None: nobody can be asked.
    asker: Asker | None = None


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    text: str


class ToolStatus(StrEnum):
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True)
class ToolCall:
    """The full merged snapshot of one tool call, sent again whenever it changes."""

    tool_call_id: str
    name: str
    status: ToolStatus = ToolStatus.PENDING
    kind: str | None = None
    input: Any = None
    output: Any = None
    locations: Sequence[Mapping[str, Any]] = ()


@dataclass(frozen=True)
class AgentCommands:
    """Slash commands the agent offers (ACP ``available_commands_update``)."""

    commands: Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class Plan:
    """The agent's whole current plan; each one replaces the last."""

    entries: Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class PermissionDecision:
    """A permission the agent asked for and what the policy answered."""

    tool_call_id: str | None
    permission: str
    decision: Literal["allowed", "denied", "cancelled"]
    reason: str = ""


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens)


@dataclass(frozen=True)
class Status:
    """Progress worth showing that is not content: "retrying", "waiting for model", ..."""

    state: str
    detail: str = ""


@dataclass(frozen=True)
class AgentAdvertised:
    """What the agent offers, as its session told (ACP ``session/new``): the catalogue keeps it."""

    models: tuple[str, ...] = ()
    # [{id, name, description?}]
    modes: tuple[Mapping[str, Any], ...] = ()
    # ACP session config options as the agent sent them ({id, name, category, type, options, ...}).
    config_options: tuple[Mapping[str, Any], ...] = ()


BackendEvent = (
    TextDelta | ReasoningDelta | ToolCall | AgentCommands | Plan | PermissionDecision | Usage | Status | AgentAdvertised
)
Emit = Callable[[BackendEvent], Awaitable[None]]

# ---------------------------------------------------------------------------- the outcome


class OutcomeStatus(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class TurnOutcome:
    status: OutcomeStatus
    # Why the model stopped (``end_turn``, ``length``, ...) or, for a failure, a short
    # machine-readable reason (``model_error``, ``agent_crashed``, ``timeout``, ...).
    stop_reason: str | None = None
    usage: Usage | None = None
    error: str | None = None
    # Worth retrying (connection refused, 5xx, 429); the dispatcher applies its policy.
    transient: bool = False
    retry_after: float | None = None
    agent_session: AgentSession | None = None

    @classmethod
    def completed(
        cls, stop_reason: str | None = "end_turn", usage: Usage | None = None, agent_session: AgentSession | None = None
    ) -> TurnOutcome:
        return cls(OutcomeStatus.COMPLETED, stop_reason=stop_reason, usage=usage, agent_session=agent_session)

    @classmethod
    def failed(
        cls,
        reason: str,
        error: str,
        *,
        transient: bool = False,
        retry_after: float | None = None,
        usage: Usage | None = None,
        agent_session: AgentSession | None = None,
    ) -> TurnOutcome:
        return cls(
            OutcomeStatus.FAILED,
            stop_reason=reason,
            error=error,
            transient=transient,
            retry_after=retry_after,
            usage=usage,
            agent_session=agent_session,
        )

    @classmethod
    def cancelled(cls, usage: Usage | None = None) -> TurnOutcome:
        return cls(OutcomeStatus.CANCELLED, stop_reason="cancelled", usage=usage)


# ---------------------------------------------------------------------------- the backend


class Backend(Protocol):
    # The tasks.execution_path this backend records: noop, native, acp, pty or opencode_server.
    execution_path: str
    # True when the agent edits files: the turn then runs in the session's worktree and its
    # diff becomes the session's pending change.
    needs_worktree: bool

    async def run_turn(self, turn: Turn, emit: Emit) -> TurnOutcome: ...


# ---------------------------------------------------------------------------- conversations

# The failure reason of a turn whose context no longer fits the model; the next turn of the
# session starts with a fresh context.
CONTEXT_OVERFLOW = "context_overflow"
_OVERFLOW = re.compile(
    r"context[ _-]?(length|window|overflow|limit)|maximum context|too many tokens|prompt is too long", re.IGNORECASE
)
# A transcript of earlier turns given to an agent that cannot resume its own session keeps at
# most this many characters (the most recent ones).
TRANSCRIPT_CHARS = 20_000


def is_context_overflow(text: str) -> bool:
    """Does a model's or agent's error say the context is too long?"""
    return bool(_OVERFLOW.search(text))


def transcript(history: Sequence[HistoryMessage], limit: int = TRANSCRIPT_CHARS) -> str:
    """Earlier turns as context for an agent that does not remember them; '' without history."""
    lines: list[str] = []
    size = 0
    for message in reversed(history):
        line = f"{message.role}: {message.content}"
        if size + len(line) > limit:
            break
        lines.append(line)
        size += len(line) + 2
    if not lines:
        return ""
    return "Earlier conversation in this session (for context):\n\n" + "\n\n".join(reversed(lines))
