"""The orchestrator's implementation of the gateway's client actions (ws_gateway.GatewayActions).

Each action calls the same service as the CLI, so a WebSocket ``submit`` inserts exactly the
row ``switchyard submit`` (or an SQL submitter) inserts, and ``review`` resolves a change the
way ``switchyard accept``/``reject`` do. The gateway has already checked that the client's
token sees the project involved. Refusals of the services become ActionRejected with a code
the client can act on; the message is the service's own.
"""

from __future__ import annotations

import asyncpg

from orchestrator.errors import NotFound
from orchestrator.services.review import ReviewService, resolution_json
from orchestrator.services.tasks import cancel_task, submit_task
from worktrees import ChangeNotFound, ChangeNotPending, RestoreRefused, TurnRunning, UnknownFile, WorktreeError
from ws_gateway import ActionRejected, CancelResult, DiffInfo, ResolutionInfo, SubmitResult, TaskSubmission

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
    def __init__(self, pool: asyncpg.Pool, review: ReviewService) -> None:
        self._pool = pool
        self._review = review

    async def submit(self, request: TaskSubmission) -> SubmitResult:
        submitted = await submit_task(self._pool, request)
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
