"""The review service: what the CLI and the WebSocket gateway call to review a session's changes.

List changes, show a diff (a change's own, the interdiff since another change, or the live
worktree), accept or reject (whole, per file, per hunk; accept into the checkout's files, as a
commit or onto a branch), comment, request changes, rebase and hand conflicts to the agent. The
git and SQL work lives in worktrees; this module adds what involves tasks and frames.

Every status change of a change (new, superseded, accepted, rejected, conflict) is appended to
the session's event log as a ``pending_change`` frame in the transaction that makes it, a new
comment as ``review_comment``, a request for changes as ``changes_requested``; so a subscriber
never sees a frame for something rolled back, nor misses one.

``request_changes`` turns the change's open comments into the session's next task: its input
quotes each comment with its file, line and the lines around it, and the task links back to the
change (``tasks.review_change_id``, and ``parent_task_id`` the turn that made the change).
``resolve_with_agent`` queues a task naming the files a rebase left conflicted.

The dispatcher uses the same wiring through ``ReviewService.worktrees``::

    review = ReviewService(pool, config.worktrees)
    worktree = await review.worktrees.ensure(session_id)
    await review.worktrees.record_turn(session_id, task_id=task_id, agent=agent)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg

from kernel import SessionFrame, append_event
from orchestrator.errors import InvalidReviewAction
from orchestrator.services import queries as q
from orchestrator.services.tasks import Submitted, submit_task
from worktrees import (
    ACCEPT_MODES,
    ChangeNotPending,
    Comment,
    Delivery,
    Diff,
    NoComments,
    NoConflicts,
    PendingChange,
    Resolution,
    WorktreeManager,
    WorktreeSettings,
    with_hunks,
)
from ws_gateway import REVIEW_ACTIONS, ChangeInfo, DiffInfo, LiveDiffInfo, ResolutionInfo, TaskSubmission

MAX_MESSAGE_CHARS = 20_000


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
        "supersedes": change.supersedes,
        "conflicts": list(change.conflicts),
        "commit": change.accepted_commit,
        "branch": change.accepted_branch,
        "comment_count": change.comments,
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


async def announce_comment(conn: asyncpg.Connection, comment: Comment) -> None:
    await append_event(conn, comment.session_id, SessionFrame.REVIEW_COMMENT, comment.to_json())


@dataclass(frozen=True)
class QueuedTask:
    """A task the review service queued for the agent (request_changes, resolve_with_agent)."""

    change: PendingChange
    submitted: Submitted
    input: str
    comment_ids: tuple[int, ...] = ()


class ReviewService:
    def __init__(
        self,
        db: asyncpg.Pool | asyncpg.Connection,
        settings: WorktreeSettings | None = None,
        *,
        node_id: str | None = None,
    ) -> None:
        self._db = db
        self.worktrees = WorktreeManager(
            db, settings, announce=announce_change, announce_comment=announce_comment, node_id=node_id
        )

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        if isinstance(self._db, asyncpg.Pool):
            async with self._db.acquire() as conn:
                yield conn
        else:
            yield self._db

    # ------------------------------------------------------------------------ reading

    async def list_changes(
        self, *, session_id: int | None = None, status: str | None = None, limit: int = 50
    ) -> list[PendingChange]:
        return await self.worktrees.list_changes(session_id=session_id, status=status, limit=limit)

    async def get_change(self, change_id: int) -> PendingChange:
        return await self.worktrees.get_change(change_id)

    async def get_diff(self, change_id: int, *, since: int | None = None) -> str:
        if since is None:
            return await self.worktrees.get_diff(change_id)
        return (await self.worktrees.interdiff(change_id, since)).text

    async def diff_info(self, change_id: int, *, since: int | None = None) -> DiffInfo:
        """The gateway's ``get_diff`` answer: the change, its diff text (or the interdiff since
        change ``since``) with the files and hunks of that text, and the change's comments."""
        change = await self.get_change(change_id)
        if since is None:
            text = await self.get_diff(change_id)
            files: Sequence[dict[str, Any]] = change.files
            truncated = change.truncated
        else:
            interdiff: Diff = await self.worktrees.interdiff(change_id, since)
            text, files, truncated = interdiff.text, interdiff.files_json(), interdiff.truncated
        comments = [c.to_json() for c in await self.worktrees.comments(change_id)]
        return DiffInfo(
            **change_json(change),
            diff=text,
            diff_files=with_hunks(text, files),
            diff_truncated=truncated,
            since_change_id=since,
            comments=comments,
        )

    async def live_diff_info(self, session_id: int) -> LiveDiffInfo:
        worktree, live = await self.worktrees.live_diff(session_id)
        return LiveDiffInfo(
            session_id=session_id,
            live=True,
            base_commit=worktree.base_commit,
            diff=live.text,
            diff_files=with_hunks(live.text, live.files_json()),
            diff_truncated=live.truncated,
        )

    # ------------------------------------------------------------------------ accept, reject, rebase

    async def accept(
        self,
        change_id: int,
        *,
        files: Sequence[str] | None = None,
        hunks: Mapping[str, Sequence[int]] | None = None,
        mode: str = "apply",
        message: str | None = None,
        branch: str | None = None,
        by: str | None = None,
    ) -> Resolution:
        if mode not in ACCEPT_MODES:
            raise InvalidReviewAction(f"accept mode must be one of {', '.join(ACCEPT_MODES)}, not {mode!r}")
        if (mode == "branch") != (branch is not None):
            raise InvalidReviewAction("a branch is named with mode branch, and only then")
        if message is not None and (mode == "apply" or not message.strip() or len(message) > MAX_MESSAGE_CHARS):
            raise InvalidReviewAction("a commit message goes with mode commit or branch (non-empty text)")
        delivery = Delivery(mode, message, branch)
        return await self.worktrees.accept(change_id, files=files, hunks=hunks, delivery=delivery, resolved_by=by)

    async def reject(
        self,
        change_id: int,
        *,
        files: Sequence[str] | None = None,
        hunks: Mapping[str, Sequence[int]] | None = None,
        by: str | None = None,
    ) -> Resolution:
        return await self.worktrees.reject(change_id, files=files, hunks=hunks, resolved_by=by)

    async def review(
        self,
        change_id: int,
        action: str,
        *,
        files: Sequence[str] | None = None,
        hunks: Mapping[str, Sequence[int]] | None = None,
        mode: str = "apply",
        message: str | None = None,
        branch: str | None = None,
        by: str | None = None,
    ) -> Resolution:
        """The WebSocket ``review`` frame."""
        if action == "accept":
            return await self.accept(
                change_id, files=files, hunks=hunks, mode=mode, message=message, branch=branch, by=by
            )
        if action == "reject":
            if mode != "apply" or message is not None or branch is not None:
                raise InvalidReviewAction("mode, message and branch go with accept")
            return await self.reject(change_id, files=files, hunks=hunks, by=by)
        raise InvalidReviewAction(f"review action must be one of {', '.join(REVIEW_ACTIONS)}, not {action!r}")

    async def rebase(self, change_id: int, *, by: str | None = None) -> Resolution:
        return await self.worktrees.rebase(change_id, resolved_by=by)

    # ------------------------------------------------------------------------ comments and tasks

    async def comment(
        self,
        change_id: int,
        body: str,
        *,
        path: str | None = None,
        line: int | None = None,
        side: str = "new",
        by: str,
    ) -> Comment:
        return await self.worktrees.comment(change_id, body, by, path=path, line=line, side=side)

    async def comments(self, change_id: int) -> list[Comment]:
        return await self.worktrees.comments(change_id)

    async def request_changes(self, change_id: int, *, message: str | None = None, by: str) -> QueuedTask:
        """The change's open comments (and ``message``) as the session's next task."""
        message = _checked_message(message)
        async with self._connection() as conn, conn.transaction():
            change = await self._open_change(conn, change_id)
            comments = await self.worktrees.open_comments(conn, change_id)
            if not comments and message is None:
                raise NoComments(f"change {change_id} has no open comment; comment first or give a message")
            parts = [f"Review of change {change_id} asks for changes ({by}):", ""]
            for number, comment in enumerate(comments, start=1):
                parts.extend(await self._quoted_comment(change, comment, number))
            if message is not None:
                parts.extend([message, ""])
            parts.append(
                "Make the changes these comments ask for in the files of your working directory; "
                "leave the rest as it is."
            )
            text = "\n".join(parts)
            queued = await self._queue(conn, change, text)
            ids = [c.id for c in comments]
            await self.worktrees.mark_sent(conn, ids, queued.task_id)
            payload = {"change_id": change_id, "task_id": queued.task_id, "comment_ids": ids}
            await append_event(conn, change.session_id, SessionFrame.CHANGES_REQUESTED, payload)
        return QueuedTask(change, queued, text, tuple(ids))

    async def _quoted_comment(self, change: PendingChange, comment: Comment, number: int) -> list[str]:
        if comment.path is None:
            head = f"{number}. On the change as a whole:"
        else:
            line = comment.current_line or comment.line
            where = f"line {line}" if comment.current_line else f"line {comment.line}, which has changed since"
            head = f"{number}. {comment.path}, {where} ({comment.side} side):"
        quoted = [f"   {q}" for q in await self.worktrees.quoted(change, comment)]
        body = [f"   {line}" for line in comment.body.splitlines()]
        return [head, *quoted, f"   {comment.author} wrote:", *body, ""]

    async def resolve_with_agent(self, change_id: int, *, message: str | None = None, by: str) -> QueuedTask:
        """A task asking the agent to resolve the conflict markers a rebase left (once per change:
        asking again answers the task queued before)."""
        message = _checked_message(message)
        async with self._connection() as conn, conn.transaction():
            change = await self._open_change(conn, change_id)
            if not change.conflicts:
                raise NoConflicts(f"change {change_id} has no conflicts from a rebase to resolve")
            files = "\n".join(f"- {path}" for path in change.conflicts)
            text = (
                f"Rebasing this session's work onto the project's current HEAD ({change.base_commit[:12]}) left merge "
                f"conflicts in these files of your working directory:\n{files}\n\n"
                "Each conflict is marked by lines starting with <<<<<<<, ======= and >>>>>>>: between <<<<<<< and "
                "======= is the project's version, between ======= and >>>>>>> is this session's. Edit each file so "
                "that it keeps what both meant, and remove every marker line. Change nothing else."
                + (f"\n\n{message}" if message else "")
                + f"\n\n(requested by {by})"
            )
            queued = await self._queue(conn, change, text, dispatch_key=f"switchyard:resolve:{change_id}")
        return QueuedTask(change, queued, text)

    async def _open_change(self, conn: asyncpg.Connection, change_id: int) -> PendingChange:
        change = await self.worktrees.get_change(change_id)
        if change.status not in ("pending", "conflict"):
            raise ChangeNotPending(f"change {change_id} is {change.status}, not pending")
        return change

    async def _queue(
        self, conn: asyncpg.Connection, change: PendingChange, text: str, *, dispatch_key: str | None = None
    ) -> Submitted:
        """The session's next task, with the agent and model of the turn that made the change."""
        row = await conn.fetchrow(q.REVIEW_TASK_CONTEXT, change.id)
        submitted = await submit_task(
            conn,
            TaskSubmission(
                project_id=row["project_id"],
                input=text,
                session_id=change.session_id,
                agent=row["agent"],
                model=row["model"],
                mode_id=row["mode_id"],
                dispatch_key=dispatch_key,
                parent_task_id=change.task_id,
            ),
        )
        if submitted.created:
            await conn.execute(q.LINK_REVIEW_TASK, submitted.task_id, change.id)
        return submitted


def _checked_message(message: str | None) -> str | None:
    if message is None:
        return None
    message = message.strip()
    if not message or len(message) > MAX_MESSAGE_CHARS or "\x00" in message:
        raise InvalidReviewAction(f"a message is text of 1 to {MAX_MESSAGE_CHARS} characters")
    return message
