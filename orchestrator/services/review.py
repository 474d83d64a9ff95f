"""The review service: list pending changes, show a diff, accept or reject (whole or per file).

The CLI (``switchyard changes | diff | accept | reject``) and the WebSocket gateway (``review``
and ``get_diff`` frames) both call this; the git and SQL work lives in worktrees.manager.
Every status change (a new change, superseded, accepted, rejected, conflict) is appended to
the session's event log as a ``pending_change`` frame in the same transaction that makes it,
so a subscriber never sees a frame for a change that was rolled back, nor misses one.

The dispatcher uses the same wiring through ``ReviewService.worktrees``::

    review = ReviewService(pool, config.worktrees)
    worktree = await review.worktrees.ensure(session_id)
    await review.worktrees.record_turn(session_id, task_id=task_id, agent=agent)
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from kernel import SessionFrame, append_event
from orchestrator.errors import InvalidReviewAction
from worktrees import PendingChange, Resolution, WorktreeManager, WorktreeSettings
from ws_gateway import REVIEW_ACTIONS, ChangeInfo, DiffInfo, ResolutionInfo


def change_json(change: PendingChange) -> ChangeInfo:
    """A change as the CLI's --json and the gateway's acks show it."""
    return {
        "change_id": change.id,
        "session_id": change.session_id,
        "task_id": change.task_id,
        "agent": change.agent,
        "status": change.status,
        "base_commit": change.base_commit,
        "files": list(change.files),
        "truncated": change.truncated,
        "error": change.error,
        "created_at": change.created_at.isoformat(),
        "resolved_at": change.resolved_at.isoformat() if change.resolved_at else None,
        "resolved_by": change.resolved_by,
    }


def resolution_json(resolution: Resolution) -> ResolutionInfo:
    """The resolved change, plus the change that stays pending (if any) and where a reject kept its work."""
    return ResolutionInfo(
        **change_json(resolution.change),
        remainder=change_json(resolution.remainder) if resolution.remainder else None,
        kept_at=resolution.kept_at,
    )


async def announce_change(conn: asyncpg.Connection, change: PendingChange) -> None:
    await append_event(conn, change.session_id, SessionFrame.PENDING_CHANGE, change.frame_payload())


class ReviewService:
    def __init__(
        self,
        db: asyncpg.Pool | asyncpg.Connection,
        settings: WorktreeSettings | None = None,
        *,
        node_id: str | None = None,
    ) -> None:
        self.worktrees = WorktreeManager(db, settings, announce=announce_change, node_id=node_id)

    async def list_changes(
        self, *, session_id: int | None = None, status: str | None = None, limit: int = 50
    ) -> list[PendingChange]:
        return await self.worktrees.list_changes(session_id=session_id, status=status, limit=limit)

    async def get_change(self, change_id: int) -> PendingChange:
        return await self.worktrees.get_change(change_id)

    async def get_diff(self, change_id: int) -> str:
        return await self.worktrees.get_diff(change_id)

    async def diff_info(self, change_id: int) -> DiffInfo:
        """The gateway's ``get_diff`` answer: the change and its (possibly truncated) diff text."""
        change = await self.get_change(change_id)
        return DiffInfo(**change_json(change), diff=await self.get_diff(change_id))

    async def accept(self, change_id: int, *, files: Sequence[str] | None = None, by: str | None = None) -> Resolution:
        return await self.worktrees.accept(change_id, files=files, resolved_by=by)

    async def reject(self, change_id: int, *, files: Sequence[str] | None = None, by: str | None = None) -> Resolution:
        return await self.worktrees.reject(change_id, files=files, resolved_by=by)

    async def review(
        self, change_id: int, action: str, *, files: Sequence[str] | None = None, by: str | None = None
    ) -> Resolution:
        """The WebSocket ``review {change_id, action, files?}`` frame."""
        if action == "accept":
            return await self.accept(change_id, files=files, by=by)
        if action == "reject":
            return await self.reject(change_id, files=files, by=by)
        raise InvalidReviewAction(f"review action must be one of {', '.join(REVIEW_ACTIONS)}, not {action!r}")
