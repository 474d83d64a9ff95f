"""Session worktrees against the database: ensure, record a turn's diff, review, rebase, reap.

The dispatcher's calls::

    manager = WorktreeManager(pool, settings, announce=...)
    worktree = await manager.ensure(session_id)          # start of every turn -> Worktree (.path)
    await manager.follow(session_id, on_change)          # beside the backend: live diff (worktrees.live)
    change = await manager.record_turn(session_id, task_id=task_id, agent=agent)  # after every turn

``ensure`` costs one UPDATE and a few file reads (the ``.git`` check, no git) when the worktree
exists; otherwise it creates (or heals) ``<root>/<project_id>/<session_id>`` on branch
``switchyard/<session_id>`` under the project's advisory lock, so one repository is changed by
one process at a time. A new session takes a spare worktree instead when ``spares``
(worktrees.spares.SpareWorktrees) has one ready and intact; it keeps the spare's directory name.

``record_turn`` snapshots the worktree (see worktrees.git), diffs it against the session's
base, and in one transaction supersedes the open changes and inserts the new one, which
remembers the change it replaced and gets its comments (an empty diff inserts nothing; an
unchanged worktree keeps the open changes as they are). It returns the session's open change,
or None.

Review (orchestrator.services.review wraps these for the CLI and the WebSocket gateway):
``accept`` (into the checkout's files, as a commit on its branch, or onto another branch) and
``reject`` of a whole change, of some files or of some hunks (worktrees.selection); what was not
named stays pending as a new change. ``rebase`` moves the session onto the checkout's HEAD.
``comment`` / ``comments``, ``interdiff`` (one change's snapshot against another's),
``live_diff`` (the worktree now), ``list_changes``, ``get_change``, ``get_diff``; ``reap``
removes worktrees nobody needs any more. Every status change is passed to
``announce(conn, change)`` inside the transaction that makes it.

The session's open changes (``pending`` and ``conflict``) together describe what the worktree
holds; more than one is open only after a partial accept conflicted: the named part is the
``conflict`` row, the rest stays ``pending``. Accepting one moves the others onto the new base.

Git refs kept per session, all under ``refs/switchyard/<session_id>/``: ``base`` (the current
base), ``snapshot`` (the content the open changes describe together), ``rejected/<change_id>``
(what a reject discarded) and ``rebased/<change_id>`` (the worktree before a rebase), so both
can still be recovered; they also keep these commits from garbage collection. The reaper
deletes ``base`` and ``snapshot`` with the worktree and keeps every ``rejected/*`` and
``rebased/*`` ref until someone deletes it (``git update-ref -d``).

Every git command on a worktree goes through :class:`worktrees.git.Checkout` (git dir and work
tree found from the repository, never from the worktree's ``.git`` file, which ``ensure`` and
every snapshot restore); the live diff (worktrees.live) is given the same two.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import anyio
import asyncpg

from kernel import DATABASE_ERRORS, get_logger
from worktrees import checkout, comments, diff, git, merge, remote
from worktrees import queries as q
from worktrees.comments import Comment
from worktrees.diff import Caps, Diff
from worktrees.errors import (
    ApplyConflict,
    ChangeNotFound,
    ChangeNotPending,
    GitCommandFailed,
    InvalidComment,
    NoCheckout,
    NothingToRebase,
    NoWorktree,
    RemoteUnavailable,
    SessionNotFound,
    TurnRunning,
    UnresolvedConflicts,
    WorktreeBroken,
    WorktreeDirty,
    WorktreeElsewhere,
    WorktreeError,
)
from worktrees.live import LiveDiff, LiveIndex
from worktrees.selection import Chosen, Selection, choose, restore_to
from worktrees.settings import WorktreeSettings
from worktrees.spares import SpareWorktrees

log = get_logger("worktrees")

# A turn that starts in an archived session touches its worktree; give it this long before reaping.
ARCHIVED_GRACE_S = 60.0

Announce = Callable[[asyncpg.Connection, "PendingChange"], Awaitable[None]]
AnnounceComment = Callable[[asyncpg.Connection, Comment], Awaitable[None]]
AcceptMode = Literal["apply", "commit", "branch"]
ACCEPT_MODES: tuple[AcceptMode, ...] = ("apply", "commit", "branch")
# How long an accept elsewhere waits for a turn's snapshot to reach the remote (pushed after the turn).
SNAPSHOT_WAIT = 5.0


@dataclass(frozen=True)
class Worktree:
    session_id: int
    project_id: int
    path: Path
    branch: str
    base_commit: str
    # The repository the worktree belongs to: the project's checkout, or this node's clone of
    # its remote (worktrees.remote).
    repo_path: Path
    # The project repository's git directory, where the worktree's git metadata lives (set by ensure).
    git_dir: Path | None = None
    # A project with a remote: its URL, the branch its sessions start from (an accept as a commit
    # goes there), and its local checkout if it has one (an accept that applies files needs it).
    remote_url: str | None = None
    default_branch: str | None = None
    checkout: Path | None = None
    # The node whose disk holds the worktree (None: one shared disk).
    node_id: str | None = None


@dataclass(frozen=True)
class PendingChange:
    """A pending_changes row without its diff text (``get_diff`` has that)."""

    id: int
    session_id: int
    task_id: int | None
    agent: str | None
    base_commit: str
    snapshot_commit: str | None
    files: tuple[dict[str, Any], ...]
    truncated: bool
    status: str
    created_at: datetime
    resolved_at: datetime | None
    resolved_by: str | None
    error: str | None
    # The change this one replaced (a new turn, the rest of a partial review, a rebase).
    supersedes: int | None = None
    # Paths a rebase left with conflict markers in the worktree.
    conflicts: tuple[str, ...] = ()
    accepted_commit: str | None = None
    accepted_branch: str | None = None
    # Its review comments, where a listing counted them.
    comments: int | None = None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> PendingChange:
        fields = dict(row)
        fields["files"] = tuple(json.loads(row["files"]))
        fields["conflicts"] = tuple(json.loads(row["conflicts"]) if row["conflicts"] else ())
        return cls(**fields)

    def frame_payload(self) -> dict[str, Any]:
        """Payload of the ``pending_change`` frame (kernel.eventlog.PendingChangePayload)."""
        payload: dict[str, Any] = {
            "change_id": self.id,
            "task_id": self.task_id,
            "status": self.status,
            "base_commit": self.base_commit,
            "files": list(self.files),
            "truncated": self.truncated,
        }
        if self.error:
            payload["error"] = self.error
        if self.supersedes is not None:
            payload["supersedes"] = self.supersedes
        if self.conflicts:
            payload["conflicts"] = list(self.conflicts)
        if self.accepted_commit is not None:
            payload["commit"] = self.accepted_commit
            payload["branch"] = self.accepted_branch
        return payload


@dataclass(frozen=True)
class Resolution:
    """The outcome of accept/reject/rebase: the resolved (or conflicted) change and what stays pending."""

    change: PendingChange
    remainder: PendingChange | None = None
    # Reject keeps what it discarded at this ref, rebase the worktree as it was.
    kept_at: str | None = None


@dataclass(frozen=True)
class Delivery:
    """Where an accept puts the change: the checkout's files (``apply``), a commit on its branch
    (``commit``), or a commit on ``branch`` (``branch``), with ``message`` or a generated one."""

    mode: AcceptMode = "apply"
    message: str | None = None
    branch: str | None = None


@dataclass(frozen=True)
class Reaped:
    session_id: int
    path: str
    removed: bool
    reason: str


@dataclass(frozen=True)
class NewChange:
    """A row to insert: ``base → snapshot`` and how it came to be."""

    base: str
    snapshot: str
    diff: Diff
    supersedes: int | None = None
    conflicts: tuple[str, ...] = ()
    error: str | None = None

    @property
    def status(self) -> str:
        return "conflict" if self.conflicts else "pending"


@dataclass(frozen=True)
class _Applied:
    new_base: str
    accepted: Diff | None  # only for a partial accept: what the resolved row keeps
    remainder: Diff | None
    committed: checkout.Committed | None


@dataclass(frozen=True)
class _Conflicted:
    """A conflicting accept: git's reason; for a partial one the named part (the conflict row)
    and the rest (which stays pending), each as (snapshot, diff)."""

    reason: str
    named: tuple[str, Diff] | None = None
    rest: tuple[str, Diff] | None = None


@dataclass(frozen=True)
class _Restored:
    kept_at: str | None
    rejected: Diff | None
    remainder: tuple[str, Diff] | None  # (snapshot, diff) of what stays pending


@dataclass(frozen=True)
class _Rebased:
    kept_at: str
    onto: str
    new: NewChange | None


# What may keep a live diff from starting; the turn goes on without it.
LIVE_ERRORS: tuple[type[Exception], ...] = (WorktreeError, OSError, *DATABASE_ERRORS)
INTO_CHECKOUT = Delivery()


def refs_prefix(session_id: int) -> str:
    return f"refs/switchyard/{session_id}/"


def content_commit(repo: Path, tree: str, base: str, session_id: int) -> str:
    """A snapshot-style commit of ``tree`` on ``base`` (fixed date: same content, same id)."""
    return git.commit_tree(repo, tree, base, f"switchyard: snapshot of session {session_id}", fixed_date=True)


class WorktreeManager:
    def __init__(
        self,
        db: asyncpg.Pool | asyncpg.Connection,
        settings: WorktreeSettings | None = None,
        *,
        announce: Announce | None = None,
        announce_comment: AnnounceComment | None = None,
        spares: SpareWorktrees | None = None,
        node_id: str | None = None,
    ) -> None:
        self.settings = settings or WorktreeSettings()
        # Set by whoever keeps spare worktrees (the dispatcher's runtime); None: none are kept.
        self.spares = spares
        self.root = Path(os.path.abspath(self.settings.root))
        # A relative clones directory sits beside the worktree root (the service makes both absolute).
        self.clones = Path(os.path.abspath(self.root.parent / self.settings.clones))
        # The node this process runs on (orchestrator.db.nodes): it holds the worktrees it creates.
        self.node_id = node_id
        self._db = db
        self._caps = Caps(self.settings.max_file_bytes, self.settings.max_total_bytes)
        self._announce = announce
        self._announce_comment = announce_comment
        # Worktrees the reaper could not remove, and why: each is logged once per reason.
        self._not_reaped: dict[int, str] = {}
        # Snapshots on their way to the projects' remotes.
        self.pushes = remote.Publisher()

    def bound(self, db: asyncpg.Pool | asyncpg.Connection) -> WorktreeManager:
        """This manager on another pool or connection (e.g. inside the caller's transaction)."""
        bound = WorktreeManager(
            db,
            self.settings,
            announce=self._announce,
            announce_comment=self._announce_comment,
            spares=self.spares,
            node_id=self.node_id,
        )
        bound._not_reaped = self._not_reaped
        bound.pushes = self.pushes
        return bound

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        if isinstance(self._db, asyncpg.Pool):
            async with self._db.acquire() as conn:
                yield conn
        else:
            yield self._db

    async def _notify(self, conn: asyncpg.Connection, change: PendingChange) -> None:
        if self._announce is not None:
            await self._announce(conn, change)

    def _worktree(self, row: asyncpg.Record) -> Worktree:
        remote, checkout = row["remote_url"], row["repo_path"]
        return Worktree(
            session_id=row["session_id"],
            project_id=row["project_id"],
            path=Path(row["path"]),
            branch=row["branch"],
            base_commit=row["base_commit"],
            repo_path=self._repo_of(row["project_id"], checkout, remote),
            remote_url=remote,
            default_branch=row["default_branch"],
            checkout=Path(checkout) if checkout else None,
            node_id=row["node_id"],
        )

    def _repo_of(self, project_id: int, checkout: str | None, remote: str | None) -> Path:
        if remote:
            return self.clones / f"{project_id}.git"
        assert checkout is not None  # a project has a checkout or a remote (schema)
        return Path(checkout)

    def _checked(self, wt: Worktree) -> git.Checkout:
        """The worktree as git sees it, ``.git`` restored; refuses one outside the root or not a worktree."""
        real = git.inside_root(self.root, wt.path)
        checkout = git.find_checkout(wt.repo_path, real)
        if checkout is None:
            raise WorktreeBroken(f"{wt.path} (session {wt.session_id}) is not a git worktree any more")
        if git.restore_dotgit(checkout):
            log.warning("worktree.git_file_restored", session_id=wt.session_id)
        return checkout

    # ------------------------------------------------------------------------ ensure

    async def ensure(self, session_id: int) -> Worktree:
        """The session's worktree, created or healed as needed (see the module docstring)."""
        if self.pushes.busy(session_id):  # the last turn's snapshot first: failover starts from it
            await anyio.to_thread.run_sync(self.pushes.wait, session_id)
        async with self._connection() as conn:
            row = await conn.fetchrow(q.TOUCH_WORKTREE, session_id, self.node_id)
            if row is not None:
                wt = self._worktree(row)
                git_dir = await anyio.to_thread.run_sync(self._usable, wt)
                if git_dir is not None:
                    return dataclasses.replace(wt, git_dir=git_dir)
            return await self._create(conn, session_id)

    def _usable(self, wt: Worktree) -> Path | None:
        """The repository's git directory if the worktree is usable (its .git file restored)."""
        try:
            checkout = self._checked(wt)
        except WorktreeBroken:
            return None
        return git.common_dir(checkout.repo)

    async def _create(self, conn: asyncpg.Connection, session_id: int) -> Worktree:
        async with conn.transaction():
            ctx = await conn.fetchrow(q.SESSION_REPOSITORY, session_id)
            if ctx is None:
                raise SessionNotFound(f"session {session_id} does not exist")
            await conn.execute(q.LOCK_PROJECT, q.LOCK_CLASS, ctx["project_id"])
            row = await conn.fetchrow(q.WORKTREE, session_id)
            # An active row heals from its stored base; a reaped session starts afresh from HEAD.
            healing = row is not None and row["status"] == "active"
            remote = ctx["remote_url"]
            wt = Worktree(
                session_id=session_id,
                project_id=ctx["project_id"],
                path=self.root / str(ctx["project_id"]) / str(session_id),
                branch=f"switchyard/{session_id}",
                base_commit=row["base_commit"] if healing else "",
                repo_path=self._repo_of(ctx["project_id"], ctx["repo_path"], remote),
                remote_url=remote,
                default_branch=ctx["default_branch"],
                checkout=Path(ctx["repo_path"]) if ctx["repo_path"] else None,
                node_id=self.node_id,
            )
            spare = None
            # Spares are worktrees of the project's checkout; a project with a remote uses none.
            if not healing and self.spares is not None and not remote:
                base_ref = refs_prefix(session_id) + "base"
                spare = await self.spares.claim(wt.project_id, wt.repo_path, wt.branch, base_ref)
            if spare is not None:
                wt, base = dataclasses.replace(wt, path=spare.path), spare.base
            elif remote:
                # A session moving in from another node (or new here) comes through the remote.
                moving = healing and row["node_id"] != self.node_id
                base = await anyio.to_thread.run_sync(self._materialize_remote, wt, ctx["default_branch"], moving)
            else:
                base = await anyio.to_thread.run_sync(self._materialize, wt)
            await conn.execute(
                q.UPSERT_WORKTREE, session_id, wt.project_id, str(wt.path), wt.branch, base, self.node_id
            )
        log.info("worktree.ready", session_id=session_id, path=wt.path, base=base, node_id=self.node_id or "-")
        git_dir = await anyio.to_thread.run_sync(git.common_dir, wt.repo_path)
        return dataclasses.replace(wt, base_commit=base, git_dir=git_dir)

    def _materialize(self, wt: Worktree) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        path = git.inside_root(self.root, wt.path)
        # A stored base survives a deleted directory; a new session starts at the project's HEAD,
        # or adopts the branch a crashed earlier attempt left behind (nothing ran in it yet).
        base = wt.base_commit or git.rev_parse(wt.repo_path, f"refs/heads/{wt.branch}") or git.head_commit(wt.repo_path)
        git.add_worktree(wt.repo_path, path, wt.branch, base)
        git.update_ref(wt.repo_path, refs_prefix(wt.session_id) + "base", base)
        return base

    def _materialize_remote(self, wt: Worktree, default_branch: str, moving: bool) -> str:
        """The worktree in this node's clone: a new session from the remote's default branch, a
        session moving in from the snapshot its last turn pushed (worktrees.remote)."""
        assert wt.remote_url is not None
        self.root.mkdir(parents=True, exist_ok=True)
        path = git.inside_root(self.root, wt.path)
        repo = remote.ensure_clone(self.clones, wt.project_id, wt.remote_url)
        if not wt.base_commit:
            base = git.rev_parse(repo, f"refs/heads/{wt.branch}") or remote.fetch_branch(
                repo, wt.remote_url, default_branch
            )
            git.add_worktree(repo, path, wt.branch, base)
            git.update_ref(repo, refs_prefix(wt.session_id) + "base", base)
            return base
        if not moving:  # ours, its directory lost: heal from the stored base, as without a remote
            if not remote.have_commit(repo, wt.base_commit):
                remote.fetch_session(repo, wt.remote_url, wt.session_id)
            git.add_worktree(repo, path, wt.branch, wt.base_commit)
            return wt.base_commit
        # What this node may still hold of an earlier stay is stale: start from the remote's.
        git.remove_worktree(repo, path, wt.branch, ())
        snapshot = remote.fetch_session(repo, wt.remote_url, wt.session_id)
        if not remote.have_commit(repo, wt.base_commit):
            raise RemoteUnavailable(
                f"session {wt.session_id}'s base {wt.base_commit} is not on the remote {wt.remote_url}"
            )
        git.add_worktree(repo, path, wt.branch, wt.base_commit)
        if snapshot is not None:
            checkout = git.trusted_checkout(repo, path)
            git.restore_snapshot(checkout, snapshot)
        log.info("worktree.moved_in", session_id=wt.session_id, snapshot=snapshot or "-", base=wt.base_commit)
        return wt.base_commit

    # ------------------------------------------------------------------------ record a turn

    async def record_turn(
        self, session_id: int, *, task_id: int | None = None, agent: str | None = None
    ) -> PendingChange | None:
        """Diff the worktree into the session's open change (see the module docstring)."""
        async with self._connection() as conn, conn.transaction():
            wt = await self._lock_worktree(conn, session_id)
            open_changes = [PendingChange.from_row(r) for r in await conn.fetch(q.OPEN_CHANGES, session_id)]
            marked = tuple(dict.fromkeys(p for c in open_changes for p in c.conflicts))
            # Abandoned (not waited for) when the caller gives up: its deadline must hold.
            before, snapshot, new, conflicted = await anyio.to_thread.run_sync(
                self._snapshot_diff, wt, marked, abandon_on_cancel=True
            )
            if open_changes and snapshot == before and all(c.base_commit == wt.base_commit for c in open_changes):
                # The turn changed nothing.
                return next((c for c in open_changes if c.status == "pending"), open_changes[0])
            superseded = await self._supersede_open(conn, session_id)
            if new.empty:
                return None
            error = None
            if conflicted:
                error = f"conflict markers are still in {', '.join(conflicted)}; resolve them before accepting"
            latest = superseded[-1].id if superseded else None
            change = await self._insert(
                conn, session_id, task_id, agent, NewChange(wt.base_commit, snapshot, new, latest, conflicted, error)
            )
            for old in superseded:
                await self._carry_comments(conn, wt.repo_path, old, change, keep_gone=True)
            return change

    def _snapshot_diff(self, wt: Worktree, marked: tuple[str, ...]) -> tuple[str | None, str, Diff, tuple[str, ...]]:
        """The snapshot before and now, the diff, and which of ``marked`` (files a rebase left
        conflicted) still hold a conflict marker."""
        checkout = self._checked(wt)
        ref = refs_prefix(wt.session_id) + "snapshot"
        before = git.rev_parse(wt.repo_path, ref)
        message = f"switchyard: snapshot of session {wt.session_id}"
        try:
            snapshot = git.snapshot(checkout, wt.base_commit, message)
        except GitCommandFailed:
            if not wt.remote_url or remote.have_commit(wt.repo_path, wt.base_commit):
                raise
            # An accept elsewhere moved the base; it pushed the new one.
            remote.fetch_session(wt.repo_path, wt.remote_url, wt.session_id)
            snapshot = git.snapshot(checkout, wt.base_commit, message)
        git.update_ref(wt.repo_path, ref, snapshot)
        conflicted = merge.still_conflicted(wt.repo_path, snapshot, marked)
        changed = diff.compute(wt.repo_path, wt.base_commit, snapshot, self._caps)
        # Published for failover in the background, once the diff no longer needs the CPU (the
        # session's next turn waits for it).
        self._push(wt, snapshot)
        return before, snapshot, changed, conflicted

    def _push(self, wt: Worktree, snapshot: str) -> None:
        if wt.remote_url:
            self.pushes.push(wt.repo_path, wt.remote_url, wt.session_id, snapshot, wt.base_commit)

    async def finish_pushes(self, within: float) -> None:
        """At shutdown: the snapshots still on their way, for up to ``within`` seconds."""
        left = await anyio.to_thread.run_sync(self.pushes.finish, within)
        if left:
            log.warning("worktree.snapshots_not_pushed", count=left, within=within)

    async def _supersede_open(self, conn: asyncpg.Connection, session_id: int) -> list[PendingChange]:
        superseded = [PendingChange.from_row(row) for row in await conn.fetch(q.SUPERSEDE_OPEN, session_id)]
        for change in superseded:
            await self._notify(conn, change)
        return superseded

    async def _insert(
        self, conn: asyncpg.Connection, session_id: int, task_id: int | None, agent: str | None, new: NewChange
    ) -> PendingChange:
        row = await conn.fetchrow(
            q.INSERT_CHANGE,
            session_id,
            task_id,
            agent,
            new.base,
            new.snapshot,
            new.diff.text,
            json.dumps(new.diff.files_json()),
            new.diff.truncated,
            new.supersedes,
            new.status,
            json.dumps(list(new.conflicts)) if new.conflicts else None,
            new.error,
        )
        change = PendingChange.from_row(row)
        await self._notify(conn, change)
        return change

    async def _carry_comments(
        self, conn: asyncpg.Connection, repo: Path, old: PendingChange, new: PendingChange, *, keep_gone: bool
    ) -> None:
        if old.snapshot_commit is None or new.snapshot_commit is None:
            return
        paths = comments.display_paths(new.files)
        moves = comments.Transition(old.base_commit, old.snapshot_commit, new.base_commit, new.snapshot_commit, paths)
        await comments.carry_over(conn, repo, old.id, new.id, moves, keep_gone=keep_gone)

    async def _lock_worktree(self, conn: asyncpg.Connection, session_id: int) -> Worktree:
        row = await conn.fetchrow(q.LOCK_WORKTREE, session_id)
        if row is None or row["status"] != "active":
            raise NoWorktree(f"session {session_id} has no active worktree")
        return self._worktree(row)

    # ------------------------------------------------------------------------ live diff

    async def follow(self, session_id: int, on_change: Callable[[dict[str, Any]], None]) -> None:
        """While a turn runs: ``on_change(payload)`` at most every ``live_diff_interval`` when the
        worktree's diff changed (worktrees.live). Runs until cancelled; failures only log."""
        try:
            async with self._connection() as conn:
                row = await conn.fetchrow(q.WORKTREE, session_id)
            if row is None or row["status"] != "active":
                return
            wt = self._worktree(row)
            checkout = await anyio.to_thread.run_sync(self._checked, wt)
        except LIVE_ERRORS as exc:
            log.warning("live_diff.unavailable", session_id=session_id, error=exc)
            return
        try:
            with LiveIndex(wt.repo_path, checkout.work_tree, checkout.git_dir, wt.base_commit) as index:
                await LiveDiff(index, self.settings.live_diff_interval, lambda s: on_change(s.payload())).run()
        except Exception as exc:  # a live view must never fail the turn it watches
            log.warning("live_diff.failed", session_id=session_id, error=exc)

    async def live_diff(self, session_id: int) -> tuple[Worktree, Diff]:
        """The session's worktree diffed against its base right now (nothing is recorded)."""
        async with self._connection() as conn:
            row = await conn.fetchrow(q.WORKTREE, session_id)
        if row is None or row["status"] != "active":
            raise NoWorktree(f"session {session_id} has no active worktree")
        wt = self._worktree(row)

        def current() -> Diff:
            checkout = self._checked(wt)
            snapshot = git.snapshot(checkout, wt.base_commit, f"switchyard: live diff of session {wt.session_id}")
            return diff.compute(wt.repo_path, wt.base_commit, snapshot, self._caps)

        return wt, await anyio.to_thread.run_sync(current)

    # ------------------------------------------------------------------------ review: reading

    async def list_changes(
        self, *, session_id: int | None = None, status: str | None = None, limit: int = 50
    ) -> list[PendingChange]:
        async with self._connection() as conn:
            rows = await conn.fetch(q.LIST_CHANGES, session_id, status, limit)
        return [PendingChange.from_row(r) for r in rows]

    async def get_change(self, change_id: int) -> PendingChange:
        async with self._connection() as conn:
            row = await conn.fetchrow(q.CHANGE, change_id)
        if row is None:
            raise ChangeNotFound(f"change {change_id} does not exist")
        return PendingChange.from_row(row)

    async def get_diff(self, change_id: int) -> str:
        async with self._connection() as conn:
            text: str | None = await conn.fetchval(q.CHANGE_DIFF, change_id)
        if text is None:
            raise ChangeNotFound(f"change {change_id} does not exist")
        return text

    async def interdiff(self, change_id: int, since_change_id: int) -> Diff:
        """What changed from change ``since_change_id``'s snapshot to change ``change_id``'s: after
        a follow-up turn, only what the agent did in it."""
        new, old = await self.get_change(change_id), await self.get_change(since_change_id)
        if old.session_id != new.session_id:
            raise ChangeNotFound(f"change {since_change_id} is not a change of session {new.session_id}")
        if old.snapshot_commit is None or new.snapshot_commit is None:
            raise ChangeNotPending("changes recorded before snapshots were kept have no interdiff")
        repo = await self._repository(new.session_id)
        return await anyio.to_thread.run_sync(diff.compute, repo, old.snapshot_commit, new.snapshot_commit, self._caps)

    async def _repository(self, session_id: int) -> Path:
        async with self._connection() as conn:
            ctx = await conn.fetchrow(q.SESSION_REPOSITORY, session_id)
        if ctx is None:
            raise SessionNotFound(f"session {session_id} does not exist")
        return self._repo_of(ctx["project_id"], ctx["repo_path"], ctx["remote_url"])

    # ------------------------------------------------------------------------ review: comments

    async def comment(
        self, change_id: int, body: str, author: str, *, path: str | None = None, line: int | None = None,
        side: str = "new",
    ) -> Comment:  # fmt: skip
        """A comment on ``line`` of ``side`` of ``path`` in the change, or (no path) on the change."""
        body = comments.check_body(body)
        if (path is None) != (line is None):
            raise InvalidComment("a comment names a file and a line, or neither (the change as a whole)")
        if side not in comments.SIDES:
            raise InvalidComment(f"side must be one of {', '.join(comments.SIDES)}, not {side!r}")
        change = await self.get_change(change_id)
        if path is not None and line is not None:
            if change.snapshot_commit is None:
                raise InvalidComment(f"change {change_id} has no snapshot to comment lines of")
            repo = await self._repository(change.session_id)
            path = await anyio.to_thread.run_sync(
                comments.check_place, repo, change.base_commit, change.snapshot_commit, path, side, line
            )
        async with self._connection() as conn, conn.transaction():
            row = await conn.fetchrow(
                q.INSERT_COMMENT, change_id, change.session_id, path, side if path else None, line, body, author
            )
            comment = Comment.from_row(row)
            if self._announce_comment is not None:
                await self._announce_comment(conn, comment)
        return comment

    async def comments(self, change_id: int) -> list[Comment]:
        await self.get_change(change_id)
        async with self._connection() as conn:
            rows = await conn.fetch(q.CHANGE_COMMENTS, change_id)
        return [Comment.from_row(r) for r in rows]

    async def open_comments(self, conn: asyncpg.Connection, change_id: int) -> list[Comment]:
        """The change's comments not sent to the agent yet, locked (inside the caller's transaction)."""
        return [Comment.from_row(r) for r in await conn.fetch(q.OPEN_COMMENTS, change_id)]

    async def mark_sent(self, conn: asyncpg.Connection, comment_ids: Sequence[int], task_id: int) -> None:
        await conn.execute(q.MARK_SENT, list(comment_ids), task_id)

    async def quoted(self, change: PendingChange, comment: Comment) -> list[str]:
        """The lines around ``comment`` in ``change`` (for the task request_changes makes)."""
        if change.snapshot_commit is None:
            return []
        repo = await self._repository(change.session_id)
        return await anyio.to_thread.run_sync(comments.quote, repo, change.base_commit, change.snapshot_commit, comment)

    # ------------------------------------------------------------------------ review: accept and reject

    async def _lock_open_change(
        self, conn: asyncpg.Connection, change_id: int, *, lock_project: bool
    ) -> tuple[PendingChange, Worktree]:
        row = await conn.fetchrow(q.CHANGE, change_id)
        if row is None:
            raise ChangeNotFound(f"change {change_id} does not exist")
        session_id = row["session_id"]
        if lock_project:
            ctx = await conn.fetchrow(q.SESSION_REPOSITORY, session_id)
            await conn.execute(q.LOCK_PROJECT, q.LOCK_CLASS, ctx["project_id"])
        wt = await self._lock_worktree(conn, session_id)
        change = PendingChange.from_row(await conn.fetchrow(q.LOCK_CHANGE, change_id))
        if change.status not in q.OPEN_STATUSES:
            raise ChangeNotPending(f"change {change_id} is {change.status}, not pending")
        if change.snapshot_commit is None or change.base_commit != wt.base_commit:
            raise ChangeNotPending(f"change {change_id} no longer matches session {session_id}'s base")
        return change, wt

    async def accept(
        self,
        change_id: int,
        *,
        files: Sequence[str] | None = None,
        hunks: Mapping[str, Sequence[int]] | None = None,
        delivery: Delivery = INTO_CHECKOUT,
        resolved_by: str | None = None,
    ) -> Resolution:
        """Put the change (or the ``files`` and the ``hunks`` of files named) into the project and
        advance the base: into the checkout's files, as a commit on its branch, or onto another
        branch (``delivery``).

        A conflict with local edits marks the named part ``conflict`` with git's reason (it stays
        open: accept it again after resolving, rebase it, or reject it) and leaves the checkout
        untouched; what was not named stays pending. A checkout that cannot take a commit now
        (worktrees.checkout) is refused with CheckoutBusy and nothing changes.
        """
        # Once git has written the checkout, the rows must follow: finish even if cancelled.
        with anyio.CancelScope(shield=True):
            async with self._connection() as conn, conn.transaction():
                selection = Selection.of(files, hunks)
                resolution = await self._accept_locked(conn, change_id, selection, delivery, resolved_by)
        return resolution

    async def _accept_locked(
        self,
        conn: asyncpg.Connection,
        change_id: int,
        selection: Selection,
        delivery: Delivery,
        resolved_by: str | None,
    ) -> Resolution:
        change, wt = await self._lock_open_change(conn, change_id, lock_project=True)
        if change.conflicts:
            raise UnresolvedConflicts(
                f"change {change_id} still has the conflict markers a rebase left in {', '.join(change.conflicts)}; "
                "resolve them (resolve-with-agent) and review the change that follows"
            )
        running = await conn.fetchval(q.RUNNING_TASK, wt.session_id) is not None
        message = None
        if delivery.mode != "apply":
            message = delivery.message or await self._commit_message(conn, change)
        if wt.remote_url:
            outcome = await anyio.to_thread.run_sync(self._apply_remote, wt, change, selection, delivery, message)
        else:
            outcome = await anyio.to_thread.run_sync(self._apply, wt, change, selection, delivery, message, not running)
        if isinstance(outcome, _Conflicted):
            return await self._conflicted(conn, wt, change, outcome, resolved_by)
        await conn.execute(q.SET_BASE, wt.session_id, outcome.new_base)
        remainder = None
        if outcome.remainder is not None and change.snapshot_commit is not None:
            remainder = NewChange(outcome.new_base, change.snapshot_commit, outcome.remainder, change.id)
        resolution = await self._resolve(
            conn, wt, change, "accepted", resolved_by, outcome.accepted, remainder, outcome.committed
        )
        await self._rehome_others(conn, wt, {change.id, *(r.id for r in [resolution.remainder] if r)}, outcome.new_base)
        return resolution

    def _apply_remote(
        self, wt: Worktree, change: PendingChange, selection: Selection, delivery: Delivery, message: str | None
    ) -> _Applied | _Conflicted:
        """Accept a change of a project with a remote, from any node: as a commit, in this node's
        clone and pushed to the remote's branch; into files, in the project's local checkout (which
        it needs). Either way the new base is pushed, so the session's node finds it."""
        assert wt.remote_url is not None and change.snapshot_commit is not None
        if delivery.mode != "apply":
            repo = remote.ensure_clone(self.clones, wt.project_id, wt.remote_url)
        elif wt.checkout is None:
            raise NoCheckout(
                f"accepting change {change.id} into files needs the project's checkout, and project {wt.project_id} "
                f"has only a remote ({wt.remote_url}); accept it as a commit (mode commit or branch, pushed to the "
                "remote) or register the project with a checkout"
            )
        else:
            repo = wt.checkout
        snapshot = change.snapshot_commit

        def lacking() -> list[str]:
            return [c for c in (snapshot, wt.base_commit) if not remote.have_commit(repo, c)]

        missing = lacking()
        # The turn's node pushes the snapshot after the turn: give it a moment to land.
        deadline = time.monotonic() + SNAPSHOT_WAIT
        while missing:
            remote.fetch_session(repo, wt.remote_url, wt.session_id)
            missing = lacking()
            if not missing or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        if missing:
            raise RemoteUnavailable(
                f"change {change.id}: commit {missing[0]} of session {wt.session_id} is not on the remote "
                f"{wt.remote_url} (the turn's push failed?)"
            )
        url = wt.remote_url

        def publish(new_base: str) -> None:
            self.pushes.wait(wt.session_id)  # this process's snapshot pushes of the session land first
            try:
                remote.push_session(repo, url, wt.session_id, snapshot=None, base=new_base)
                self.pushes.published_base(wt.session_id, new_base)
            except RemoteUnavailable as exc:
                # The project has the change already; the node's next turn cannot find its base
                # and fails diff_failed until a push succeeds (accept again, or push by hand).
                log.error("change.base_not_pushed", change_id=change.id, session_id=wt.session_id, error=exc)

        # The worktree lives in a node's clone, not in this repository: its branch is not moved.
        return self._apply(
            dataclasses.replace(wt, repo_path=repo), change, selection, delivery, message, False, publish
        )

    async def _commit_message(self, conn: asyncpg.Connection, change: PendingChange) -> str:
        task_input = await conn.fetchval(q.TASK_INPUT, change.task_id) if change.task_id is not None else None
        files = ", ".join(str(f["path"]) for f in change.files[:10]) + (" ..." if len(change.files) > 10 else "")
        subject = f"Switchyard session {change.session_id}, task {change.task_id}"
        if task_input:
            first = " ".join(task_input.split())[:60]
            subject += f": {first}"
        return f"{subject}\n\nAccepted change {change.id} ({len(change.files)} files): {files}\n"

    def _apply(
        self,
        wt: Worktree,
        change: PendingChange,
        selection: Selection,
        delivery: Delivery,
        message: str | None,
        advance: bool,
        publish: Callable[[str], None] | None = None,
    ) -> _Applied | _Conflicted:
        assert change.snapshot_commit is not None
        repo, base, snapshot = wt.repo_path, wt.base_commit, change.snapshot_commit
        chosen = choose(repo, change.id, base, snapshot, selection)
        forward = b"" if chosen.everything else chosen.patch(repo, base, snapshot)
        # The new base exists before the checkout is touched, so nothing can fail in between.
        tree = f"{snapshot}^{{tree}}" if chosen.everything else git.tree_with_patch(repo, base, forward)
        accepted = git.patch(repo, base, tree)
        paths = chosen.paths
        listing = "\n".join(f"{e.status} {diff.display(e.path)}" for e in chosen.entries)
        new_base = git.commit_tree(
            repo, tree, base, f"switchyard: accept change {change.id} of session {wt.session_id}\n\n{listing}\n"
        )
        try:
            committed = self._deliver(wt, change.id, accepted, paths, delivery, message)
        except ApplyConflict as exc:
            if chosen.everything:
                return _Conflicted(str(exc))
            return self._split(wt, change, chosen, tree, str(exc))
        log.info("change.applied", change_id=change.id, repo=repo, mode=delivery.mode)
        if committed is not None and git.rev_parse(repo, f"{committed.commit}^{{tree}}") == git.rev_parse(
            repo, f"{new_base}^{{tree}}"
        ):
            new_base = committed.commit  # the reviewer's commit holds exactly the new base: build on it
        if publish is not None:
            publish(new_base)
        git.update_ref(repo, refs_prefix(wt.session_id) + "base", new_base)
        if advance:
            self._advance_branch(wt, new_base, paths)
        if chosen.everything:
            return _Applied(new_base, None, None, committed)
        return _Applied(
            new_base,
            diff.compute(repo, base, new_base, self._caps),
            diff.compute(repo, new_base, snapshot, self._caps),
            committed,
        )

    def _deliver(
        self,
        wt: Worktree,
        change_id: int,
        accepted: bytes,
        paths: Sequence[str],
        delivery: Delivery,
        message: str | None,
    ) -> checkout.Committed | None:
        repo = wt.repo_path
        if delivery.mode == "apply":
            git.apply_to_checkout(repo, accepted, paths)
            return None
        assert message is not None
        identity = checkout.Identity(self.settings.commit_name, self.settings.commit_email)
        text = checkout.Trailers(wt.session_id, change_id).add_to(repo, message)
        if wt.remote_url:
            assert wt.default_branch is not None
            branch = delivery.branch if delivery.mode == "branch" else wt.default_branch
            assert branch is not None
            return remote.commit_to_branch(repo, wt.remote_url, branch, wt.default_branch, accepted, text, identity)
        if delivery.mode == "commit":
            return checkout.commit_into_checkout(repo, accepted, paths, text, identity)
        assert delivery.branch is not None
        return checkout.commit_onto_branch(repo, accepted, delivery.branch, text, identity)

    def _split(self, wt: Worktree, change: PendingChange, chosen: Chosen, named_tree: str, reason: str) -> _Conflicted:
        """A conflicting partial accept: the named part as a change of its own, and the rest."""
        assert change.snapshot_commit is not None
        repo, base, snapshot = wt.repo_path, wt.base_commit, change.snapshot_commit
        named = content_commit(repo, named_tree, base, wt.session_id)
        rest_tree = git.tree_with_patch(repo, snapshot, chosen.patch(repo, base, snapshot, reverse=True), reverse=True)
        rest = content_commit(repo, rest_tree, base, wt.session_id)
        parts = [(commit, diff.compute(repo, base, commit, self._caps)) for commit in (named, rest)]
        return _Conflicted(reason, parts[0], parts[1])

    async def _conflicted(
        self, conn: asyncpg.Connection, wt: Worktree, change: PendingChange, outcome: _Conflicted, by: str | None
    ) -> Resolution:
        named = outcome.named
        row = await conn.fetchrow(
            q.MARK_CONFLICT,
            change.id,
            by,
            outcome.reason,
            named[1].text if named else None,
            json.dumps(named[1].files_json()) if named else None,
            named[1].truncated if named else None,
            named[0] if named else None,
        )
        conflicted = PendingChange.from_row(row)
        await self._notify(conn, conflicted)
        if outcome.rest is None or outcome.rest[1].empty:
            return Resolution(conflicted)
        rest = await self._insert(
            conn, wt.session_id, change.task_id, change.agent, NewChange(wt.base_commit, *outcome.rest, change.id)
        )
        await self._carry_comments(conn, wt.repo_path, change, rest, keep_gone=False)
        return Resolution(conflicted, rest)

    async def _rehome_others(self, conn: asyncpg.Connection, wt: Worktree, done: set[int], new_base: str) -> None:
        """Move the session's other open changes (the two parts of a conflicting partial accept)
        onto the new base; one that no longer applies is left for a rebase or the next turn."""
        for row in await conn.fetch(q.OPEN_CHANGES, wt.session_id):
            other = PendingChange.from_row(row)
            if other.id in done or other.snapshot_commit is None or other.base_commit != wt.base_commit:
                continue
            try:
                snapshot, moved = await anyio.to_thread.run_sync(self._rehome, wt, other, new_base)
            except GitCommandFailed as exc:
                log.warning("change.not_rehomed", change_id=other.id, error=exc)
                continue
            updated = await conn.fetchrow(
                q.REHOME_CHANGE,
                other.id,
                new_base,
                snapshot,
                moved.text,
                json.dumps(moved.files_json()),
                moved.truncated,
            )
            await self._notify(conn, PendingChange.from_row(updated))

    def _rehome(self, wt: Worktree, change: PendingChange, new_base: str) -> tuple[str, Diff]:
        assert change.snapshot_commit is not None
        repo = wt.repo_path
        tree = git.tree_with_patch(repo, new_base, git.patch(repo, change.base_commit, change.snapshot_commit))
        snapshot = content_commit(repo, tree, new_base, wt.session_id)
        return snapshot, diff.compute(repo, new_base, snapshot, self._caps)

    def _advance_branch(self, wt: Worktree, new_base: str, paths: Sequence[str]) -> None:
        """Move the session branch to the new base, if the agent has not moved it itself.

        The worktree's own index follows for the accepted paths, so ``git status`` inside the
        worktree shows only unaccepted work. Files are never touched; failures only log.
        """
        try:
            checkout = self._checked(wt)
            if git.update_ref(wt.repo_path, f"refs/heads/{wt.branch}", new_base, wt.base_commit):
                git.sync_index_paths(checkout, paths)
        except (GitCommandFailed, WorktreeBroken) as exc:
            log.warning("worktree.branch_not_advanced", session_id=wt.session_id, branch=wt.branch, error=exc)

    async def reject(
        self,
        change_id: int,
        *,
        files: Sequence[str] | None = None,
        hunks: Mapping[str, Sequence[int]] | None = None,
        resolved_by: str | None = None,
    ) -> Resolution:
        """Put the change's files (or the ``files`` and the ``hunks`` of files named) in the
        worktree back to the base.

        Refused while a turn of the session runs. What is discarded stays recoverable at
        ``refs/switchyard/<session>/rejected/<change>``; the rest stays pending.
        """
        with anyio.CancelScope(shield=True):
            async with self._connection() as conn, conn.transaction():
                # The worktree row lock also holds off the next turn's ensure() until we are done.
                change, wt = await self._lock_open_change(conn, change_id, lock_project=False)
                if wt.remote_url and wt.node_id != self.node_id:
                    raise WorktreeElsewhere(
                        f"session {wt.session_id}'s worktree is on node {wt.node_id}; reject change {change_id} "
                        "through a service on that node"
                    )
                await self._refuse_running(conn, wt, f"reject change {change_id}")
                restored = await anyio.to_thread.run_sync(self._restore, wt, change, Selection.of(files, hunks))
                remainder = None
                if restored.remainder is not None:
                    remainder = NewChange(wt.base_commit, *restored.remainder, change.id)
                resolution = await self._resolve(
                    conn, wt, change, "rejected", resolved_by, restored.rejected, remainder
                )
        return Resolution(resolution.change, resolution.remainder, restored.kept_at)

    async def _refuse_running(self, conn: asyncpg.Connection, wt: Worktree, what: str) -> None:
        task = await conn.fetchval(q.RUNNING_TASK, wt.session_id)
        if task is not None:
            raise TurnRunning(f"session {wt.session_id} is running a turn (task {task}); {what} after it ends")

    def _restore(self, wt: Worktree, change: PendingChange, selection: Selection) -> _Restored:
        assert change.snapshot_commit is not None
        repo, base, snapshot = wt.repo_path, wt.base_commit, change.snapshot_commit
        chosen = choose(repo, change.id, base, snapshot, selection)
        if chosen.everything:
            rest = base
        else:
            reverted = chosen.patch(repo, base, snapshot, reverse=True)
            tree = git.tree_with_patch(repo, snapshot, reverted, reverse=True)
            rest = content_commit(repo, tree, base, wt.session_id)
        kept_at = None
        if os.path.lexists(wt.path):  # a deleted directory has nothing left to restore
            checkout = self._checked(wt)
            kept = git.snapshot(checkout, base, f"switchyard: worktree before rejecting change {change.id}")
            kept_at = refs_prefix(wt.session_id) + f"rejected/{change.id}"
            git.update_ref(repo, kept_at, kept)
            git.restore_paths(checkout, rest, restore_to(repo, rest, chosen.paths))
            if wt.remote_url:
                # What failover recreates is the worktree as the reject left it.
                self._push(wt, git.snapshot(checkout, base, f"switchyard: snapshot of session {wt.session_id}"))
        if chosen.everything:
            return _Restored(kept_at, None, None)
        git.update_ref(repo, refs_prefix(wt.session_id) + "snapshot", rest)
        rejected = git.tree_with_patch(repo, base, chosen.patch(repo, base, snapshot))
        return _Restored(
            kept_at, diff.compute(repo, base, rejected, self._caps), (rest, diff.compute(repo, base, rest, self._caps))
        )

    async def _resolve(
        self,
        conn: asyncpg.Connection,
        wt: Worktree,
        change: PendingChange,
        status: str,
        resolved_by: str | None,
        narrowed: Diff | None,
        remainder: NewChange | None,
        committed: checkout.Committed | None = None,
    ) -> Resolution:
        """Mark ``change`` resolved (keeping only the resolved files) and open the remainder."""
        row = await conn.fetchrow(
            q.RESOLVE_CHANGE,
            change.id,
            status,
            resolved_by,
            narrowed.text if narrowed else None,
            json.dumps(narrowed.files_json()) if narrowed else None,
            narrowed.truncated if narrowed else None,
            committed.commit if committed else None,
            committed.branch if committed else None,
        )
        resolved = PendingChange.from_row(row)
        await self._notify(conn, resolved)
        rest = None
        if remainder is not None:
            rest = await self._insert(conn, change.session_id, change.task_id, change.agent, remainder)
            await self._carry_comments(conn, wt.repo_path, change, rest, keep_gone=False)
        return Resolution(resolved, rest)

    # ------------------------------------------------------------------------ rebase

    async def rebase(self, change_id: int, *, resolved_by: str | None = None) -> Resolution:
        """Move the session onto the checkout's HEAD: its work (the worktree) merged 3-way onto it,
        in the worktree. Clean: a new pending change against the new base; conflicted: the
        worktree keeps the conflict markers and the new change is ``conflict`` with the paths.
        The open changes are superseded either way; the worktree as it was is kept at
        ``refs/switchyard/<session>/rebased/<change>``. Refused while a turn runs."""
        with anyio.CancelScope(shield=True):
            async with self._connection() as conn, conn.transaction():
                change, wt = await self._lock_open_change(conn, change_id, lock_project=True)
                await self._refuse_running(conn, wt, f"rebase change {change_id}")
                rebased = await anyio.to_thread.run_sync(self._rebase, wt, change)
                await conn.execute(q.SET_BASE, wt.session_id, rebased.onto)
                superseded = await self._supersede_open(conn, wt.session_id)
                new = None
                if rebased.new is not None:
                    new = await self._insert(conn, wt.session_id, change.task_id, change.agent, rebased.new)
                    for old in superseded:
                        await self._carry_comments(conn, wt.repo_path, old, new, keep_gone=True)
                resolved = next(c for c in superseded if c.id == change.id)
        log.info("change.rebased", change_id=change_id, onto=rebased.onto, new=new.id if new else None)
        return Resolution(resolved, new, rebased.kept_at)

    def _rebase(self, wt: Worktree, change: PendingChange) -> _Rebased:
        repo, base = wt.repo_path, wt.base_commit
        onto = git.head_commit(repo)
        if onto == base:
            raise NothingToRebase(
                f"the checkout's HEAD is session {wt.session_id}'s base already; a conflict with uncommitted "
                "edits in the checkout goes away once they are committed (then rebase) or stashed"
            )
        checkout = self._checked(wt)
        work = git.snapshot(checkout, base, f"switchyard: worktree before rebasing change {change.id}")
        kept_at = refs_prefix(wt.session_id) + f"rebased/{change.id}"
        git.update_ref(repo, kept_at, work)
        merged = merge.merge_onto(repo, base, work, onto)
        snapshot = content_commit(repo, merged.tree, onto, wt.session_id)
        touched = tuple(p for e in diff.changes(repo, work, snapshot) for p in e.paths)
        git.restore_paths(checkout, snapshot, restore_to(repo, snapshot, touched))
        prefix = refs_prefix(wt.session_id)
        git.update_ref(repo, prefix + "base", onto)
        git.update_ref(repo, prefix + "snapshot", snapshot)
        if git.update_ref(repo, f"refs/heads/{wt.branch}", onto, base):
            git.sync_index_paths(checkout, tuple(p for e in diff.changes(repo, base, onto) for p in e.paths))
        new = diff.compute(repo, onto, snapshot, self._caps)
        if new.empty:
            return _Rebased(kept_at, onto, None)
        error = None
        if merged.conflicts:
            error = f"rebasing onto {onto[:12]} left conflicts in {', '.join(merged.conflicts)}: " + "; ".join(
                m for m in merged.messages if m.startswith("CONFLICT")
            )
        return _Rebased(kept_at, onto, NewChange(onto, snapshot, new, change.id, merged.conflicts, error))

    # ------------------------------------------------------------------------ reaper

    async def reap(self) -> list[Reaped]:
        """Remove worktrees of idle or archived sessions that have nothing open or running."""
        async with self._connection() as conn:
            idle = self.settings.reap_idle_after
            candidates = await conn.fetch(q.REAP_CANDIDATES, idle, ARCHIVED_GRACE_S, self.node_id)
            return [await self._reap_one(conn, r["session_id"], r["project_id"]) for r in candidates]

    async def _reap_one(self, conn: asyncpg.Connection, session_id: int, project_id: int) -> Reaped:
        path = ""
        try:
            async with conn.transaction():
                await conn.execute(q.LOCK_PROJECT, q.LOCK_CLASS, project_id)
                row = await conn.fetchrow(q.CLAIM_REAP, self.settings.reap_idle_after, ARCHIVED_GRACE_S, session_id)
                if row is None:
                    self._not_reaped.pop(session_id, None)
                    return Reaped(session_id, path, False, "in use again")
                wt = self._worktree(row)
                path = str(wt.path)
                # An error rolls the row back to active: nothing is marked removed that is not.
                await anyio.to_thread.run_sync(self._remove, wt)
        except WorktreeError as exc:
            if self._not_reaped.get(session_id) != str(exc):
                self._not_reaped[session_id] = str(exc)
                log.warning("worktree.not_reaped", session_id=session_id, reason=exc)
            return Reaped(session_id, path, False, str(exc))
        self._not_reaped.pop(session_id, None)
        log.info("worktree.reaped", session_id=session_id, path=path)
        return Reaped(session_id, path, True, "removed")

    def _remove(self, wt: Worktree) -> None:
        real = git.inside_root(self.root, wt.path)
        if os.path.lexists(real):
            checkout = self._checked(wt)
            snapshot = git.snapshot(checkout, wt.base_commit, f"switchyard: snapshot of session {wt.session_id}")
            if diff.changes(wt.repo_path, wt.base_commit, snapshot):
                raise WorktreeDirty(f"{wt.path} has changes that were never recorded as a pending change")
        # refs/switchyard/<session>/rejected/* stay: what a reject discarded is kept for good.
        prefix = refs_prefix(wt.session_id)
        git.remove_worktree(wt.repo_path, real, wt.branch, (prefix + "base", prefix + "snapshot"))
        if real.parent != Path(os.path.realpath(self.root)):
            with contextlib.suppress(OSError):
                real.parent.rmdir()  # the project's directory, once its last worktree is gone
