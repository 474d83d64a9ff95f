"""The orchestrator's implementation of the gateway's client actions (ws_gateway.GatewayActions).

Each action calls the same service as the CLI, so a WebSocket ``submit`` inserts exactly the
row ``switchyard submit`` (or an SQL submitter) inserts, and ``review`` resolves a change the
way ``switchyard accept``/``reject`` do. The gateway has already checked that the client's
token sees the project involved. Refusals of the services become ActionRejected with a code
the client can act on; the message is the service's own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import asyncpg

from backends import NativeSettings
from orchestrator.errors import AlreadyDecided, BadInput, ModelsUnavailable, NotFound
from orchestrator.services import approvals
from orchestrator.services.catalogue import Catalogue
from orchestrator.services.review import ReviewService, resolution_json
from orchestrator.services.tasks import cancel_task, submit_task
from worktrees import ChangeNotFound, ChangeNotPending, RestoreRefused, TurnRunning, UnknownFile, WorktreeError
from ws_gateway import (
    ActionRejected,
    AgentInfo,
    CancelResult,
    DiffInfo,
    ModelList,
    PermissionReplyResult,
    QuestionReplyResult,
    ResolutionInfo,
    SubmitResult,
    TaskSubmission,
)

REVIEW_ERROR_CODES: dict[type[WorktreeError], str] = {
    ChangeNotFound: "not_found",
    ChangeNotPending: "not_pending",
    UnknownFile: "unknown_file",
    TurnRunning: "turn_running",
    RestoreRefused: "restore_refused",
}


def _rejected(exc: WorktreeError) -> ActionRejected:
    return ActionRejected(REVIEW_ERROR_CODES.get(type(exc), "review_failed"), str(exc))


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

    async def review(self, change_id: int, action: str, files: tuple[str, ...] | None, by: str) -> ResolutionInfo:
        try:
            resolution = await self._review.review(change_id, action, files=files, by=by)
        except WorktreeError as exc:
            raise _rejected(exc) from None
        return resolution_json(resolution)

    async def get_diff(self, change_id: int) -> DiffInfo:
        try:
            return await self._review.diff_info(change_id)
        except WorktreeError as exc:
            raise _rejected(exc) from None

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


@contextlib.contextmanager
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
