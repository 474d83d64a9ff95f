"""The orchestrator's implementation of the gateway's client actions (ws_gateway.GatewayActions).

Each action calls the same service as the CLI, so a WebSocket ``submit`` inserts exactly the
row ``switchyard submit`` (or an SQL submitter) inserts, and ``review`` resolves a change the
way ``switchyard accept``/``reject`` do. The gateway has already checked that the client's
token sees the project involved. Refusals of the services become ActionRejected with a code
the client can act on; the message is the service's own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager

import asyncpg

from backends import NativeSettings
from kernel import SwitchyardError
from orchestrator.errors import AlreadyDecided, BadInput, InvalidReviewAction, ModelsUnavailable, NotFound
from orchestrator.services import approvals
from orchestrator.services.catalogue import Catalogue
from orchestrator.services.review import ReviewService, change_json, resolution_json
from orchestrator.services.tasks import cancel_task, submit_task
from worktrees import (
    BadBranch,
    ChangeNotFound,
    ChangeNotPending,
    CheckoutBusy,
    InvalidComment,
    NoComments,
    NoConflicts,
    NothingToRebase,
    NoWorktree,
    RestoreRefused,
    SessionNotFound,
    TurnRunning,
    UnknownFile,
    UnknownHunk,
    UnresolvedConflicts,
    WorktreeError,
)
from ws_gateway import (
    ActionRejected,
    AgentInfo,
    AgentTask,
    CancelResult,
    ChangeList,
    ChangesRequested,
    CommentInfo,
    CommentRequest,
    DiffInfo,
    LiveDiffInfo,
    ModelList,
    PermissionReplyResult,
    QuestionReplyResult,
    ResolutionInfo,
    ReviewRequest,
    SubmitResult,
    TaskSubmission,
)

REVIEW_ERROR_CODES: dict[type[SwitchyardError], str] = {
    ChangeNotFound: "not_found",
    SessionNotFound: "not_found",
    NoWorktree: "not_found",
    ChangeNotPending: "not_pending",
    UnknownFile: "unknown_file",
    UnknownHunk: "unknown_hunk",
    TurnRunning: "turn_running",
    RestoreRefused: "restore_refused",
    CheckoutBusy: "checkout_busy",
    BadBranch: "bad_branch",
    InvalidComment: "invalid_comment",
    NoComments: "no_comments",
    NothingToRebase: "nothing_to_rebase",
    UnresolvedConflicts: "unresolved_conflicts",
    NoConflicts: "no_conflicts",
    InvalidReviewAction: "invalid_frame",
}


@asynccontextmanager
async def _refusals() -> AsyncIterator[None]:
    """The review service's refusals as ActionRejected, with the service's own message."""
    try:
        yield
    except (WorktreeError, InvalidReviewAction) as exc:
        code = next((c for kind, c in REVIEW_ERROR_CODES.items() if isinstance(exc, kind)), "review_failed")
        raise ActionRejected(code, str(exc)) from None


class OrchestratorActions:
    def __init__(self, pool: asyncpg.Pool, review: ReviewService, native: NativeSettings | None = None) -> None:
        self._pool = pool
        self._review = review
        self._catalogue = Catalogue(pool, native)

    async def submit(self, request: TaskSubmission) -> SubmitResult:
        try:
            submitted = await submit_task(self._pool, request)
        except BadInput as exc:
            raise ActionRejected("bad_input", str(exc)) from None
        return SubmitResult(task_id=submitted.task_id, created=submitted.created, session_id=submitted.session_id)

    async def cancel(self, task_id: int) -> CancelResult:
        async with self._pool.acquire() as conn:
            try:
                state = await cancel_task(conn, task_id)
            except NotFound as exc:
                raise ActionRejected("not_found", str(exc)) from None
        return CancelResult(task_id=task_id, state=state)

    async def review(self, request: ReviewRequest, by: str) -> ResolutionInfo:
        async with _refusals():
            resolution = await self._review.review(
                request.change_id,
                request.action,
                files=request.files,
                hunks=request.hunks,
                mode=request.mode,
                message=request.message,
                branch=request.branch,
                by=by,
            )
        return resolution_json(resolution)

    async def get_diff(self, change_id: int, since_change_id: int | None) -> DiffInfo:
        async with _refusals():
            return await self._review.diff_info(change_id, since=since_change_id)

    async def live_diff(self, session_id: int) -> LiveDiffInfo:
        async with _refusals():
            return await self._review.live_diff_info(session_id)

    async def list_changes(self, session_id: int, status: str | None, limit: int) -> ChangeList:
        changes = await self._review.list_changes(session_id=session_id, status=status, limit=limit)
        return ChangeList(session_id=session_id, changes=[change_json(c) for c in changes])

    async def comment(self, request: CommentRequest, by: str) -> CommentInfo:
        async with _refusals():
            comment = await self._review.comment(
                request.change_id, request.body, path=request.path, line=request.line, side=request.side, by=by
            )
        return CommentInfo(comment=comment.to_json())

    async def request_changes(self, change_id: int, message: str | None, by: str) -> ChangesRequested:
        async with _refusals():
            queued = await self._review.request_changes(change_id, message=message, by=by)
        return ChangesRequested(
            change_id=change_id,
            session_id=queued.change.session_id,
            task_id=queued.submitted.task_id,
            comment_ids=list(queued.comment_ids),
        )

    async def rebase(self, change_id: int, by: str) -> ResolutionInfo:
        async with _refusals():
            return resolution_json(await self._review.rebase(change_id, by=by))

    async def resolve_with_agent(self, change_id: int, message: str | None, by: str) -> AgentTask:
        async with _refusals():
            queued = await self._review.resolve_with_agent(change_id, message=message, by=by)
        return AgentTask(
            change_id=change_id,
            session_id=queued.change.session_id,
            task_id=queued.submitted.task_id,
            created=queued.submitted.created,
            files=list(queued.change.conflicts),
        )

    async def reply_permission(
        self, request_id: int, option_id: str | None, decision: str | None, by: str
    ) -> PermissionReplyResult:
        with _replies_refused():
            d = await approvals.reply_permission(self._pool, request_id, option_id=option_id, decision=decision, by=by)
        return PermissionReplyResult(
            request_id=d.request_id,
            session_id=d.session_id,
            state=d.state,
            option_id=d.option_id,
            remember=d.remember,
            decided_by=d.decided_by,
        )

    async def reply_question(
        self, request_id: int, answers: Sequence[Sequence[str]] | None, by: str
    ) -> QuestionReplyResult:
        with _replies_refused():
            d = await approvals.reply_question(self._pool, request_id, answers=answers, by=by)
        return QuestionReplyResult(
            request_id=d.request_id, session_id=d.session_id, state=d.state, answers=d.answers, decided_by=d.decided_by
        )

    async def list_agents(self) -> list[AgentInfo]:
        return await self._catalogue.agents()

    async def list_models(self) -> ModelList:
        try:
            return await self._catalogue.models()
        except ModelsUnavailable as exc:
            raise ActionRejected("models_unavailable", str(exc)) from None


@contextmanager
def _replies_refused() -> Iterator[None]:
    """A reply's refusals as the codes a client acts on."""
    try:
        yield
    except AlreadyDecided as exc:
        raise ActionRejected("already_decided", str(exc)) from None
    except BadInput as exc:
        raise ActionRejected("bad_input", str(exc)) from None
    except NotFound as exc:
        raise ActionRejected("forbidden", f"{exc}, or it belongs to a project this token cannot see") from None
