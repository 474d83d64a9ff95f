"""Client actions that change state, injected into the gateway.

The gateway authorizes every action (the token must see the project of the task, change or
session) and then calls an implementation of :class:`GatewayActions`; the orchestrator's
``orchestrator.gateway_actions`` adapts its task and review services to it, so a WebSocket
``submit`` or ``review`` does exactly what the CLI does. An implementation refuses with
:class:`ws_gateway.errors.ActionRejected`; the client gets an ``error`` frame with its code.
Results are JSON-ready dicts sent back in the ``ack`` frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, TypedDict

ReviewAction = Literal["accept", "reject"]
REVIEW_ACTIONS: tuple[ReviewAction, ...] = ("accept", "reject")
# Where an accept puts the change: the checkout's files, a commit on its branch, another branch.
ACCEPT_MODES = ("apply", "commit", "branch")
COMMENT_SIDES = ("new", "old")
CHANGE_STATUSES = ("pending", "superseded", "accepted", "rejected", "conflict")
# permission_reply's ``decision``: which kind of the offered options it picks.
PERMISSION_DECISIONS = ("allow_once", "allow_always", "reject")


@dataclass(frozen=True)
class TaskSubmission:
    """A task to insert: the one description shared by the CLI, the gateway and
    ``orchestrator.tasks.submit_task`` (which makes the same INSERT an SQL submitter does).
    Over WebSocket the gateway resolves and authorizes ``project_id`` first."""

    project_id: int
    input: str
    session_id: int | None = None
    agent: str | None = None
    model: str | None = None
    mode_id: str | None = None
    priority: int = 0
    max_attempts: int = 3
    expires_at: datetime | None = None
    dispatch_key: str | None = None
    parent_task_id: int | None = None
    # tasks.agent_options: checked against what the agent advertised (bad ones are refused).
    agent_options: Mapping[str, str | bool] = field(default_factory=dict)
    # tasks.fresh_context: no upstream session and no history for this turn.
    fresh_context: bool = False


class SubmitResult(TypedDict):
    task_id: int
    # False when the dispatch_key was seen before and nothing was inserted.
    created: bool
    # The task's session (created at submit time when the task named none); None only for a
    # task seen before that was inserted by SQL without one and has not been claimed yet.
    session_id: int | None


class CancelResult(TypedDict):
    task_id: int
    # cancelled (it was pending), running (its dispatcher is aborting it), or the state it ended in.
    state: str


@dataclass(frozen=True)
class ReviewRequest:
    """Accept or reject a change: all of it, some ``files``, some ``hunks`` (path → hunk ids as
    ``get_diff`` lists them); an accept ``mode`` with its commit ``message`` and ``branch``."""

    change_id: int
    action: str
    files: tuple[str, ...] | None = None
    hunks: dict[str, tuple[int, ...]] | None = None
    mode: str = "apply"
    message: str | None = None
    branch: str | None = None


@dataclass(frozen=True)
class CommentRequest:
    """A comment on ``line`` of ``side`` of ``path`` in the change, or (no path) on all of it."""

    change_id: int
    body: str
    path: str | None = None
    line: int | None = None
    side: str = "new"


class ChangeInfo(TypedDict):
    """A pending change as acks, the CLI's --json and the page show it."""

    change_id: int
    session_id: int
    task_id: int | None
    agent: str | None
    status: str
    base_commit: str
    files: list[dict[str, Any]]
    truncated: bool
    error: str | None
    created_at: str
    resolved_at: str | None
    resolved_by: str | None
    # The change it replaced; paths a rebase left conflicted; the commit (and branch) an accept made.
    supersedes: int | None
    conflicts: list[str]
    commit: str | None
    branch: str | None
    # Its review comments (counted by list_changes; None elsewhere).
    comment_count: int | None


class ResolutionInfo(ChangeInfo):
    """The resolved change, the change that stays pending (if any), where a reject kept its work."""

    remainder: ChangeInfo | None
    kept_at: str | None


class DiffInfo(ChangeInfo):
    """The change, and the diff text asked for: its own, or since another change's snapshot.
    ``diff_files`` are the files that text covers, each with its hunks; ``comments`` the change's."""

    diff: str
    diff_files: list[dict[str, Any]]
    diff_truncated: bool
    since_change_id: int | None
    comments: list[dict[str, Any]]


class LiveDiffInfo(TypedDict):
    """A session's worktree diffed against its base right now (a turn may be editing it)."""

    session_id: int
    live: bool
    base_commit: str
    diff: str
    diff_files: list[dict[str, Any]]
    diff_truncated: bool


class ChangeList(TypedDict):
    session_id: int
    changes: list[ChangeInfo]


class CommentInfo(TypedDict):
    comment: dict[str, Any]


class ChangesRequested(TypedDict):
    """The task request_changes queued, and the comments it quotes."""

    change_id: int
    session_id: int
    task_id: int
    comment_ids: list[int]


class AgentTask(TypedDict):
    """The task resolve_with_agent queued (``created`` False: it was queued before)."""

    change_id: int
    session_id: int
    task_id: int
    created: bool
    files: list[str]


class PermissionReplyResult(TypedDict):
    request_id: int
    session_id: int
    # allowed or denied.
    state: str
    option_id: str | None
    # once, or session ("allow always": later requests like it are allowed without asking).
    remember: str | None
    decided_by: str


class QuestionReplyResult(TypedDict):
    request_id: int
    session_id: int
    # answered or denied (dismissed).
    state: str
    answers: list[list[str]] | None
    decided_by: str


class AgentInfo(TypedDict):
    name: str
    # acp, pty or opencode_server.
    track: str
    installed: bool
    version: str | None
    detail: str | None
    models: list[str]
    modes: list[dict[str, Any]]
    config_options: list[dict[str, Any]]
    checked_at: str
    advertised_at: str | None


class ModelList(TypedDict):
    models: list[dict[str, Any]]
    endpoint: str
    fetched_at: str


class GatewayActions(Protocol):
    async def submit(self, request: TaskSubmission) -> SubmitResult:
        """Insert the task (nothing when its dispatch_key was seen before)."""
        ...

    async def cancel(self, task_id: int) -> CancelResult:
        """Request cancellation."""
        ...

    async def review(self, request: ReviewRequest, by: str) -> ResolutionInfo:
        """Accept or reject a pending change (optionally only some files or hunks)."""
        ...

    async def get_diff(self, change_id: int, since_change_id: int | None) -> DiffInfo:
        """The change and its (possibly truncated) diff text, or the interdiff since another change."""
        ...

    async def live_diff(self, session_id: int) -> LiveDiffInfo:
        """The session's worktree diff right now."""
        ...

    async def list_changes(self, session_id: int, status: str | None, limit: int) -> ChangeList:
        """The session's changes, newest first, with their comment counts."""
        ...

    async def comment(self, request: CommentRequest, by: str) -> CommentInfo:
        """A review comment on a change."""
        ...

    async def request_changes(self, change_id: int, message: str | None, by: str) -> ChangesRequested:
        """The change's open comments (and ``message``) as the session's next task."""
        ...

    async def rebase(self, change_id: int, by: str) -> ResolutionInfo:
        """Move the session onto the checkout's HEAD (3-way, in the worktree)."""
        ...

    async def resolve_with_agent(self, change_id: int, message: str | None, by: str) -> AgentTask:
        """A task asking the agent to resolve the conflicts a rebase left."""
        ...

    async def reply_permission(
        self, request_id: int, option_id: str | None, decision: str | None, by: str
    ) -> PermissionReplyResult:
        """Decide a waiting permission request (the first reply wins; refused: ``already_decided``)."""
        ...

    async def reply_question(
        self, request_id: int, answers: Sequence[Sequence[str]] | None, by: str
    ) -> QuestionReplyResult:
        """Answer (or, with None, dismiss) a waiting question."""
        ...

    async def list_agents(self) -> list[AgentInfo]:
        """The configured agents, whether installed, and what they offer."""
        ...

    async def list_models(self) -> ModelList:
        """The native endpoint's models (cached); ``models_unavailable`` when it does not answer."""
        ...
