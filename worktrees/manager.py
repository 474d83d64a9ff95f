"""Session worktrees against the database: ensure, record a turn's diff, accept, reject, reap.

The dispatcher's two calls::

    manager = WorktreeManager(pool, settings, announce=...)
    worktree = await manager.ensure(session_id)          # start of every turn -> Worktree (.path)
    change = await manager.record_turn(session_id, task_id=task_id, agent=agent)  # after every turn

``ensure`` costs one UPDATE and a few file reads (the ``.git`` check, no git) when the worktree
exists; otherwise it creates (or heals) ``<root>/<project_id>/<session_id>`` on branch
``switchyard/<session_id>`` under the project's advisory lock, so one repository is changed by
one process at a time.

``record_turn`` snapshots the worktree (see worktrees.git), diffs it against the session's
base, and in one transaction supersedes the open change and inserts the new one (an empty
diff inserts nothing; an unchanged worktree keeps the open change as it is). It returns the
session's open change, or None.

Review (orchestrator.review wraps these for the CLI and the WebSocket gateway): ``accept`` and
``reject`` of a whole change or of some files, ``list_changes``, ``get_change``, ``get_diff``;
``reap`` removes worktrees nobody needs any more. Every status change is passed to
``announce(conn, change)`` inside the transaction that makes it.

Git refs kept per session, all under ``refs/switchyard/<session_id>/``: ``base`` (the current
base), ``snapshot`` (the open change's content) and ``rejected/<change_id>`` (what a reject
discarded, so it can still be recovered); they also keep these commits from garbage collection.
The reaper deletes ``base`` and ``snapshot`` with the worktree and keeps every ``rejected/*``
ref until someone deletes it (``git update-ref -d``).

Every git command on a worktree goes through :class:`worktrees.git.Checkout` (git dir and work
tree found from the repository, never from the worktree's ``.git`` file, which ``ensure`` and
every snapshot restore).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from kernel import get_logger
from worktrees import diff, git, remote
from worktrees import queries as q
from worktrees.diff import Caps, Diff, FileChange
from worktrees.errors import (
    ApplyConflict,
    ChangeNotFound,
    ChangeNotPending,
    GitCommandFailed,
    NoCheckout,
    NoWorktree,
    RemoteUnavailable,
    SessionNotFound,
    TurnRunning,
    UnknownFile,
    WorktreeBroken,
    WorktreeDirty,
    WorktreeElsewhere,
    WorktreeError,
)
from worktrees.settings import WorktreeSettings

log = get_logger("worktrees")

# A turn that starts in an archived session touches its worktree; give it this long before reaping.
ARCHIVED_GRACE_S = 60.0

Announce = Callable[[asyncpg.Connection, "PendingChange"], Awaitable[None]]


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
    # A project with a remote: its URL, and its local checkout if it has one (accepts apply there).
    remote_url: str | None = None
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

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> PendingChange:
        fields = dict(row)
        fields["files"] = tuple(json.loads(row["files"]))
        return cls(**fields)

    def frame_payload(self) -> dict[str, Any]:
        """Payload of the ``pending_change`` frame (ws_gateway.frames)."""
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
        return payload


@dataclass(frozen=True)
class Resolution:
    """The outcome of accept/reject: the resolved (or conflicted) change and what stays pending."""

    change: PendingChange
    remainder: PendingChange | None = None
    # Reject keeps what it discarded at this ref.
    kept_at: str | None = None


@dataclass(frozen=True)
class Reaped:
    session_id: int
    path: str
    removed: bool
    reason: str


@dataclass(frozen=True)
class _Applied:
    new_base: str
    accepted: Diff | None  # only for a partial accept: what the resolved row keeps
    remainder: Diff | None


@dataclass(frozen=True)
class _Restored:
    kept_at: str | None
    rejected: Diff | None
    remainder: tuple[str, Diff] | None  # (snapshot, diff) of what stays pending


def refs_prefix(session_id: int) -> str:
    return f"refs/switchyard/{session_id}/"


def select_files(change_id: int, entries: Sequence[FileChange], names: Sequence[str] | None) -> list[FileChange]:
    """The entries a reviewer named (all when ``names`` is empty); unknown names are refused."""
    if not names:
        return list(entries)
    wanted = {n.removeprefix("./") for n in names}
    unknown = sorted(n for n in wanted if not any(n in e.names() for e in entries))
    if unknown:
        known = ", ".join(diff.display(e.path) for e in entries)
        raise UnknownFile(f"change {change_id} has no file {', '.join(unknown)} (its files: {known})")
    return [e for e in entries if wanted & e.names()]


def restore_plan(entries: Sequence[FileChange]) -> git.RestorePlan:
    restore = [e.old_path or e.path for e in entries if e.status != "added"]
    delete = [e.path for e in entries if e.status in ("added", "renamed", "copied")]
    return git.RestorePlan(tuple(restore), tuple(delete))


class WorktreeManager:
    def __init__(
        self,
        db: asyncpg.Pool | asyncpg.Connection,
        settings: WorktreeSettings | None = None,
        *,
        announce: Announce | None = None,
        node_id: str | None = None,
    ) -> None:
        self.settings = settings or WorktreeSettings()
        self.root = Path(os.path.abspath(self.settings.root))
        # A relative clones directory sits beside the worktree root (the service makes both absolute).
        self.clones = Path(os.path.abspath(self.root.parent / self.settings.clones))
        # The node this process runs on (orchestrator.db.nodes): it holds the worktrees it creates.
        self.node_id = node_id
        self._db = db
        self._caps = Caps(self.settings.max_file_bytes, self.settings.max_total_bytes)
        self._announce = announce
        # Worktrees the reaper could not remove, and why: each is logged once per reason.
        self._not_reaped: dict[int, str] = {}

    def bound(self, db: asyncpg.Pool | asyncpg.Connection) -> WorktreeManager:
        """This manager on another pool or connection (e.g. inside the caller's transaction)."""
        bound = WorktreeManager(db, self.settings, announce=self._announce, node_id=self.node_id)
        bound._not_reaped = self._not_reaped
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
            repo_path=self._repository(row["project_id"], checkout, remote),
            remote_url=remote,
            checkout=Path(checkout) if checkout else None,
            node_id=row["node_id"],
        )

    def _repository(self, project_id: int, checkout: str | None, remote: str | None) -> Path:
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
                repo_path=self._repository(ctx["project_id"], ctx["repo_path"], remote),
                remote_url=remote,
                checkout=Path(ctx["repo_path"]) if ctx["repo_path"] else None,
                node_id=self.node_id,
            )
            if remote:
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
            # Abandoned (not waited for) when the caller gives up: its deadline must hold.
            snapshot, new = await anyio.to_thread.run_sync(self._snapshot_diff, wt, abandon_on_cancel=True)
            for change in open_changes:
                if change.snapshot_commit == snapshot and change.base_commit == wt.base_commit:
                    return change  # the turn changed nothing
            for row in await conn.fetch(q.SUPERSEDE_OPEN, session_id):
                await self._notify(conn, PendingChange.from_row(row))
            if new.empty:
                return None
            return await self._insert(conn, session_id, task_id, agent, wt.base_commit, snapshot, new)

    def _snapshot_diff(self, wt: Worktree) -> tuple[str, Diff]:
        checkout = self._checked(wt)
        message = f"switchyard: snapshot of session {wt.session_id}"
        try:
            snapshot = git.snapshot(checkout, wt.base_commit, message)
        except GitCommandFailed:
            if not wt.remote_url or remote.have_commit(wt.repo_path, wt.base_commit):
                raise
            # An accept elsewhere moved the base; it pushed the new one.
            remote.fetch_session(wt.repo_path, wt.remote_url, wt.session_id)
            snapshot = git.snapshot(checkout, wt.base_commit, message)
        git.update_ref(wt.repo_path, refs_prefix(wt.session_id) + "snapshot", snapshot)
        if not wt.remote_url:
            return snapshot, diff.compute(wt.repo_path, wt.base_commit, snapshot, self._caps)
        # The push and the diff need only the snapshot commit: they run side by side.
        pushing = threading.Thread(target=self._push, args=(wt, snapshot), name="switchyard-push")
        pushing.start()
        try:
            return snapshot, diff.compute(wt.repo_path, wt.base_commit, snapshot, self._caps)
        finally:
            pushing.join()

    def _push(self, wt: Worktree, snapshot: str) -> None:
        """Publish the snapshot for failover; a failure only logs (a node taking the session over
        then starts from the last snapshot that was pushed)."""
        assert wt.remote_url is not None
        try:
            remote.push_session(wt.repo_path, wt.remote_url, wt.session_id, snapshot=snapshot, base=wt.base_commit)
        except RemoteUnavailable as exc:
            log.warning("worktree.snapshot_not_pushed", session_id=wt.session_id, error=exc)

    async def _insert(
        self,
        conn: asyncpg.Connection,
        session_id: int,
        task_id: int | None,
        agent: str | None,
        base: str,
        snapshot: str,
        new: Diff,
    ) -> PendingChange:
        row = await conn.fetchrow(
            q.INSERT_CHANGE,
            session_id,
            task_id,
            agent,
            base,
            snapshot,
            new.text,
            json.dumps(new.files_json()),
            new.truncated,
        )
        change = PendingChange.from_row(row)
        await self._notify(conn, change)
        return change

    async def _lock_worktree(self, conn: asyncpg.Connection, session_id: int) -> Worktree:
        row = await conn.fetchrow(q.LOCK_WORKTREE, session_id)
        if row is None or row["status"] != "active":
            raise NoWorktree(f"session {session_id} has no active worktree")
        return self._worktree(row)

    # ------------------------------------------------------------------------ review

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
        self, change_id: int, *, files: Sequence[str] | None = None, resolved_by: str | None = None
    ) -> Resolution:
        """Apply the change (or ``files`` of it) to the project checkout and advance the base.

        A conflict with local edits marks the change ``conflict`` (it stays open: accept it
        again after resolving, or reject it) and leaves the checkout untouched. What was not
        accepted stays pending as a new change against the new base.
        """
        # Once git has written the checkout, the rows must follow: finish even if cancelled.
        with anyio.CancelScope(shield=True):
            async with self._connection() as conn, conn.transaction():
                resolution = await self._accept_locked(conn, change_id, files, resolved_by)
        return resolution

    async def _accept_locked(
        self, conn: asyncpg.Connection, change_id: int, files: Sequence[str] | None, resolved_by: str | None
    ) -> Resolution:
        change, wt = await self._lock_open_change(conn, change_id, lock_project=True)
        running = await conn.fetchval(q.RUNNING_TASK, wt.session_id) is not None
        try:
            if wt.remote_url:
                applied = await anyio.to_thread.run_sync(self._apply_remote, wt, change, files)
            else:
                applied = await anyio.to_thread.run_sync(self._apply, wt, change, files, not running)
        except ApplyConflict as exc:
            row = await conn.fetchrow(q.MARK_CONFLICT, change_id, resolved_by, str(exc))
            conflicted = PendingChange.from_row(row)
            await self._notify(conn, conflicted)
            return Resolution(conflicted)
        await conn.execute(q.SET_BASE, wt.session_id, applied.new_base)
        remainder = None
        if applied.remainder is not None and change.snapshot_commit is not None:
            remainder = (change.snapshot_commit, applied.new_base, applied.remainder)
        return await self._resolve(conn, change, "accepted", resolved_by, applied.accepted, remainder)

    def _apply_remote(self, wt: Worktree, change: PendingChange, names: Sequence[str] | None) -> _Applied:
        """Accept a change of a project with a remote: applied to the project's local checkout
        (which needs one), the new base pushed before the checkout is touched, so the session's
        node finds it whichever node that is."""
        assert wt.remote_url is not None and change.snapshot_commit is not None
        if wt.checkout is None:
            raise NoCheckout(
                f"accepting change {change.id} applies it to the project's checkout, and project {wt.project_id} "
                f"has only a remote ({wt.remote_url}); register the project with a checkout (repo_path) to accept"
            )
        repo = wt.checkout
        if not (remote.have_commit(repo, change.snapshot_commit) and remote.have_commit(repo, wt.base_commit)):
            remote.fetch_session(repo, wt.remote_url, wt.session_id)
        for commit in (change.snapshot_commit, wt.base_commit):
            if not remote.have_commit(repo, commit):
                raise RemoteUnavailable(
                    f"change {change.id}: commit {commit} of session {wt.session_id} is not on the remote "
                    f"{wt.remote_url} (the turn's push failed?)"
                )
        url = wt.remote_url

        def publish(new_base: str) -> None:
            remote.push_session(repo, url, wt.session_id, snapshot=None, base=new_base)

        # The worktree lives in a node's clone, not in this repository: its branch is not moved.
        return self._apply(dataclasses.replace(wt, repo_path=repo), change, names, False, publish)

    def _apply(
        self,
        wt: Worktree,
        change: PendingChange,
        names: Sequence[str] | None,
        advance: bool,
        publish: Callable[[str], None] | None = None,
    ) -> _Applied:
        assert change.snapshot_commit is not None
        repo, base, snapshot = wt.repo_path, wt.base_commit, change.snapshot_commit
        entries = diff.changes(repo, base, snapshot)
        chosen = select_files(change.id, entries, names)
        partial = len(chosen) < len(entries)
        paths = tuple(p for e in chosen for p in e.paths)
        patch = git.patch(repo, base, snapshot, paths if partial else ())
        # The new base exists before the checkout is touched, so nothing can fail in between.
        tree = git.tree_with_patch(repo, base, patch) if partial else f"{snapshot}^{{tree}}"
        listing = "\n".join(f"{e.status} {diff.display(e.path)}" for e in chosen)
        new_base = git.commit_tree(
            repo, tree, base, f"switchyard: accept change {change.id} of session {wt.session_id}\n\n{listing}\n"
        )
        if publish is not None:
            publish(new_base)
        mode = git.apply_to_checkout(repo, patch, paths)
        log.info("change.applied", change_id=change.id, repo=repo, mode=mode)
        git.update_ref(repo, refs_prefix(wt.session_id) + "base", new_base)
        if advance:
            self._advance_branch(wt, new_base, paths)
        if not partial:
            return _Applied(new_base, None, None)
        return _Applied(
            new_base,
            diff.compute(repo, base, snapshot, self._caps, paths),
            diff.compute(repo, new_base, snapshot, self._caps),
        )

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
        self, change_id: int, *, files: Sequence[str] | None = None, resolved_by: str | None = None
    ) -> Resolution:
        """Put the change's files (or ``files`` of it) in the worktree back to the base.

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
                task = await conn.fetchval(q.RUNNING_TASK, wt.session_id)
                if task is not None:
                    raise TurnRunning(
                        f"session {wt.session_id} is running a turn (task {task}); "
                        f"reject change {change_id} after it ends"
                    )
                restored = await anyio.to_thread.run_sync(self._restore, wt, change, files)
                remainder = None
                if restored.remainder is not None:
                    remainder = (restored.remainder[0], wt.base_commit, restored.remainder[1])
                resolution = await self._resolve(conn, change, "rejected", resolved_by, restored.rejected, remainder)
        return Resolution(resolution.change, resolution.remainder, restored.kept_at)

    def _restore(self, wt: Worktree, change: PendingChange, names: Sequence[str] | None) -> _Restored:
        assert change.snapshot_commit is not None
        repo, base, snapshot = wt.repo_path, wt.base_commit, change.snapshot_commit
        entries = diff.changes(repo, base, snapshot)
        chosen = select_files(change.id, entries, names)
        kept_at = None
        if os.path.lexists(wt.path):  # a deleted directory has nothing left to restore
            checkout = self._checked(wt)
            kept = git.snapshot(checkout, base, f"switchyard: worktree before rejecting change {change.id}")
            kept_at = refs_prefix(wt.session_id) + f"rejected/{change.id}"
            git.update_ref(repo, kept_at, kept)
            git.restore_paths(checkout, base, restore_plan(chosen))
            if wt.remote_url:
                # What failover recreates is the worktree as the reject left it.
                self._push(wt, git.snapshot(checkout, base, f"switchyard: snapshot of session {wt.session_id}"))
        if len(chosen) == len(entries):
            return _Restored(kept_at, None, None)
        paths = tuple(p for e in chosen for p in e.paths)
        tree = git.tree_with_patch(repo, snapshot, git.patch(repo, base, snapshot, paths), reverse=True)
        rest = git.commit_tree(repo, tree, base, f"switchyard: snapshot of session {wt.session_id}", fixed_date=True)
        git.update_ref(repo, refs_prefix(wt.session_id) + "snapshot", rest)
        return _Restored(
            kept_at,
            diff.compute(repo, base, snapshot, self._caps, paths),
            (rest, diff.compute(repo, base, rest, self._caps)),
        )

    async def _resolve(
        self,
        conn: asyncpg.Connection,
        change: PendingChange,
        status: str,
        resolved_by: str | None,
        narrowed: Diff | None,
        remainder: tuple[str, str, Diff] | None,
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
        )
        resolved = PendingChange.from_row(row)
        await self._notify(conn, resolved)
        rest = None
        if remainder is not None:
            snapshot, base, rest_diff = remainder
            rest = await self._insert(conn, change.session_id, change.task_id, change.agent, base, snapshot, rest_diff)
        return Resolution(resolved, rest)

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
