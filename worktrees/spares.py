"""Hot spare worktrees: a project's next new session starts in a worktree made, and warmed, before it was asked for.

For every project that started a session within ``spare_idle`` seconds, :class:`SpareWorktrees`
keeps ``spares`` worktrees ready (``[worktrees]``): each is ``<root>/<project_id>/spare-<owner>-<n>``,
checked out detached and locked at the project's HEAD, and handed to a :class:`SpareWarmer` (the
warm opencode pool loads the directory's instance on the project's server, so the session's first
prompt finds it bootstrapped).

The session that takes one (:meth:`SpareWorktrees.claim`, from ``WorktreeManager`` under the
project's advisory lock) gets it only if it is still exactly what was made: its ``.git`` file
untouched, its HEAD and the project's HEAD the commit it was made at, and nothing in it that was
not checked out (``git status`` with untracked and ignored files, and no empty directory, which git
does not see). Other sessions of the project run where they could write it, so a spare that fails
any check is removed, and the session gets a worktree made the usual way. A spare taken is put on
the session's branch (``switchyard/<session>``, at that commit) and keeps its name: its directory is
what the warmed instance belongs to. A new spare is then made in the background.

Spares are nobody's session: no ``session_worktrees`` row, so the reaper never sees them. A spare
whose project HEAD moved is removed and made again (checked every ``CHECK_INTERVAL`` seconds and at
every claim), and the service removes its spares when it stops. Every git change to a project's
repository here runs under the project's advisory lock, like the manager's. A spare is marked in
its administrative directory in the project repository (``switchyard-spare``, holding its owner),
where agents cannot write, so a later service removes the spares of one that died.

The spares are published in ``<status_dir>/spares-<owner>.json`` for ``switchyard pool``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

import anyio
import anyio.abc
import asyncpg

from kernel import (
    DATABASE_ERRORS,
    WorktreeError,
    get_logger,
    process_gone,
    process_key,
    read_status,
    remove_stale,
    report,
    write_status,
)
from worktrees import git
from worktrees import queries as q
from worktrees.settings import WorktreeSettings

log = get_logger("worktrees.spares")

SPARE_PREFIX = "spare-"
# In a spare's administrative directory (<repo>/.git/worktrees/<name>): its owner's process key
# (kernel.procs); removed when taken.
MARKER = "switchyard-spare"
STATUS_PREFIX = "spares-"
# How often HEAD is compared, missing spares made and unwarmed ones offered to the warmer again.
CHECK_INTERVAL = 5.0
# Removing the spares when the service stops.
STOP_TIMEOUT = 30.0
# After background work on a project failed (its repository gone, the database away), it rests this long.
RETRY_AFTER = 60.0
# What the background work survives: the database going away, git failing on a repository.
TEND_ERRORS: tuple[type[Exception], ...] = (*DATABASE_ERRORS, WorktreeError, OSError)

T = TypeVar("T")


class SpareWarmer(Protocol):
    """What loads a spare's directory for the agents before a session takes it (the warm pool)."""

    async def warm(self, project_id: int, directory: Path, git_dir: Path) -> bool:
        """Load it; False when it cannot be now (then it is offered again later)."""

    def claimed(self, directory: Path) -> None:
        """A session took it: from now on it is that session's directory."""

    async def release(self, directory: Path) -> None:
        """It was removed: free what was loaded for it."""


@dataclass
class Spare:
    project_id: int
    repo: Path
    # Resolved: the directory the agents (and the warmed instance) know it by.
    path: Path
    base: str
    # What the warmer said last (None: not asked yet).
    warmed: bool | None = None


@dataclass(frozen=True)
class Taken:
    """A spare that became a session's worktree: where it is and the commit it starts from."""

    path: Path
    base: str


@dataclass
class _Project:
    project_id: int
    repo: Path
    wanted_at: float
    ready: list[Spare] = field(default_factory=list)
    git_dir: Path | None = None
    swept: bool = False
    # Not tended before this (time.monotonic()) after a failure; a new session resets it.
    retry_at: float = 0.0


class SpareWorktrees:
    """The spare worktrees of one service; ``async with`` it for the life of the dispatcher."""

    def __init__(
        self,
        db: asyncpg.Pool,
        settings: WorktreeSettings | None = None,
        *,
        warmer: SpareWarmer | None = None,
        status_dir: Path | None = None,
    ) -> None:
        self.settings = settings or WorktreeSettings()
        self.root = Path(os.path.abspath(self.settings.root))
        self.owner = f"{os.getpid()}.{secrets.token_hex(4)}"
        self.warmer = warmer
        self.status_path = status_dir / f"{STATUS_PREFIX}{self.owner}.json" if status_dir else None
        self._db = db
        self._projects: dict[int, _Project] = {}
        self._numbers = itertools.count(1)
        self._wake = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._stack = contextlib.AsyncExitStack()

    # ------------------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> SpareWorktrees:
        if not self.settings.spares:
            return self
        if self.status_path is not None:
            status_dir = self.status_path.parent
            await anyio.to_thread.run_sync(partial(status_dir.mkdir, parents=True, exist_ok=True))
            await anyio.to_thread.run_sync(remove_stale, status_dir, STATUS_PREFIX)
        try:
            async with self._db.acquire() as conn:
                recent = await conn.fetch(q.RECENT_PROJECTS, self.settings.spare_idle)
        except DATABASE_ERRORS as exc:
            report(log, "worktree.spares_not_loaded", exc)
            recent = []
        for row in recent:
            self.want(row["project_id"], Path(row["repo_path"]))
        self._tg = await self._stack.enter_async_context(anyio.create_task_group())
        self._tg.start_soon(self._maintain)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
        await self._stack.aclose()
        with anyio.CancelScope(shield=True), anyio.move_on_after(STOP_TIMEOUT):
            for project in list(self._projects.values()):
                spares, project.ready = project.ready, []
                await self._discard(project, spares)
            if self.status_path is not None:
                with contextlib.suppress(OSError):
                    await anyio.to_thread.run_sync(self.status_path.unlink)
        self._projects.clear()

    # ------------------------------------------------------------------------------------ API

    def want(self, project_id: int, repo: Path) -> None:
        """A session of the project started: keep its spares ready (for ``spare_idle`` from now)."""
        if not self.settings.spares:
            return
        project = self._projects.get(project_id)
        if project is None or project.repo != repo:
            project = self._projects[project_id] = _Project(project_id, repo, time.monotonic())
        project.wanted_at = time.monotonic()
        project.retry_at = 0.0
        self._wake.set()

    def ready(self, project_id: int) -> list[Spare]:
        project = self._projects.get(project_id)
        return list(project.ready) if project else []

    def ready_in(self, parent: Path) -> list[Path]:
        """The ready spares' directories under ``parent`` (a project's worktree directory)."""
        return [s.path for p in self._projects.values() for s in p.ready if s.path.parent == parent]

    def all_ready(self) -> bool:
        """Every wanted project has its spares, each offered to the warmer (benchmarks wait for it)."""
        return all(
            len(p.ready) >= self.settings.spares and all(s.warmed is not None for s in p.ready)
            for p in self._projects.values()
        )

    async def claim(self, project_id: int, repo: Path, branch: str, base_ref: str) -> Taken | None:
        """A ready spare of the project as the worktree of a new session on ``branch``, if one is
        still exactly as made (see the module docstring); ``base_ref`` is set to its commit.

        The caller holds the project's advisory lock. None: no spare (the caller makes the worktree).
        """
        if not self.settings.spares:
            return None
        self.want(project_id, repo)
        project = self._projects[project_id]
        while project.ready:
            spare = project.ready.pop(0)
            try:
                outcome = await anyio.to_thread.run_sync(self._adopt, spare, branch, base_ref)
            except WorktreeError as exc:
                outcome = f"git failed on it: {exc}"
            if outcome is None:
                project.ready.insert(0, spare)  # the branch exists: not a new session's worktree
                return None
            if isinstance(outcome, Taken):
                log.info("worktree.spare_taken", project_id=project_id, path=spare.path, branch=branch)
                if self.warmer is not None:
                    self.warmer.claimed(spare.path)
                return outcome
            log.warning("worktree.spare_discarded", project_id=project_id, path=spare.path, reason=outcome)
            if self.warmer is not None and self._tg is not None:
                self._tg.start_soon(self.warmer.release, spare.path)
        return None

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {"project_id": s.project_id, "path": str(s.path), "base": s.base, "warmed": s.warmed}
            for p in self._projects.values()
            for s in p.ready
        ]

    # ------------------------------------------------------------------------------ tending

    async def _maintain(self) -> None:
        while True:
            with anyio.move_on_after(CHECK_INTERVAL):
                await self._wake.wait()
            self._wake = anyio.Event()
            for project in list(self._projects.values()):
                if project.retry_at > time.monotonic():
                    continue
                try:
                    await self._tend(project)
                except TEND_ERRORS as exc:
                    project.retry_at = time.monotonic() + RETRY_AFTER
                    report(log, "worktree.spares_failed", exc, project_id=project.project_id, retry_in=RETRY_AFTER)
            await self._write_status()

    async def _tend(self, project: _Project) -> None:
        """Drop a project nobody started a session in for long; replace stale spares, make
        missing ones, and offer the unwarmed to the warmer."""
        if time.monotonic() - project.wanted_at > self.settings.spare_idle:
            del self._projects[project.project_id]
            spares, project.ready = project.ready, []
            await self._discard(project, spares)
            return
        if project.git_dir is None:
            project.git_dir = await anyio.to_thread.run_sync(git.common_dir, project.repo)
        if not project.swept:
            await self._locked(project, partial(self._sweep, project))
            project.swept = True
        head = await anyio.to_thread.run_sync(git.head_commit, project.repo)
        stale = [s for s in project.ready if s.base != head]
        if stale:
            project.ready = [s for s in project.ready if s.base == head]
            log.info("worktree.spares_stale", project_id=project.project_id, count=len(stale))
            await self._discard(project, stale)
        while len(project.ready) < self.settings.spares and self._projects.get(project.project_id) is project:
            spare = await self._locked(project, partial(self._add, project))
            project.ready.append(spare)
            log.info("worktree.spare_ready", project_id=project.project_id, path=spare.path, base=spare.base)
        if self.warmer is not None:
            for spare in list(project.ready):
                if spare in project.ready:  # not taken meanwhile
                    spare.warmed = await self.warmer.warm(project.project_id, spare.path, project.git_dir)
        else:
            for spare in project.ready:
                spare.warmed = False

    async def _discard(self, project: _Project, spares: list[Spare]) -> None:
        """Remove spares (under the project's lock) and free what was loaded for them."""
        for spare in spares:
            try:
                await self._locked(project, partial(self._remove, spare))
            except TEND_ERRORS as exc:
                report(log, "worktree.spare_not_removed", exc, path=spare.path)
                continue
            if self.warmer is not None:
                await self.warmer.release(spare.path)

    async def _locked(self, project: _Project, work: Callable[[], T]) -> T:
        """``work`` in a thread, holding the project's advisory lock (one repository changer at a time)."""
        async with self._db.acquire() as conn, conn.transaction():
            await conn.execute(q.LOCK_PROJECT, q.LOCK_CLASS, project.project_id)
            return await anyio.to_thread.run_sync(work)

    async def _write_status(self) -> None:
        if self.status_path is None:
            return
        payload = {"owner_pid": os.getpid(), "owner": self.owner, "updated_at": time.time(), "spares": self.snapshot()}
        try:
            await anyio.to_thread.run_sync(write_status, self.status_path, payload)
        except OSError as exc:  # only `switchyard pool` misses it
            log.warning("worktree.spares_status_not_written", path=str(self.status_path), error=str(exc))

    # ------------------------------------------------------------------------------ git (blocking)

    def _add(self, project: _Project) -> Spare:
        head = git.head_commit(project.repo)
        name = f"{SPARE_PREFIX}{self.owner}-{next(self._numbers)}"
        path = git.inside_root(self.root, self.root / str(project.project_id) / name)
        path.parent.mkdir(parents=True, exist_ok=True)
        git.run(project.repo, ["worktree", "add", "--quiet", "--lock", "--detach", str(path), head])
        checkout = git.find_checkout(project.repo, path)
        if checkout is None:
            raise WorktreeError(f"git made no worktree at {path}")
        (checkout.git_dir / MARKER).write_text(process_key())
        return Spare(project.project_id, project.repo, path, head)

    def _adopt(self, spare: Spare, branch: str, base_ref: str) -> Taken | str | None:
        """The spare on ``branch``; or why it could not be used (it is removed); None if the branch
        already exists (the spare stays as it is)."""
        if git.branch_exists(spare.repo, branch):
            return None
        checkout, problem = self._inspect(spare)
        if checkout is None or problem:
            try:
                self._remove(spare)
            except WorktreeError as exc:
                log.warning("worktree.spare_not_removed", path=spare.path, error=exc)
            return problem or "it is not a spare worktree any more"
        if not git.update_ref(spare.repo, f"refs/heads/{branch}", spare.base, git.EMPTY_SHA):
            return None
        git.run(checkout.work_tree, [*checkout.args, "symbolic-ref", "HEAD", f"refs/heads/{branch}"])
        (checkout.git_dir / MARKER).unlink(missing_ok=True)
        git.update_ref(spare.repo, base_ref, spare.base)
        return Taken(spare.path, spare.base)

    def _inspect(self, spare: Spare) -> tuple[git.Checkout | None, str]:
        """The spare's checkout and what is wrong with it ("" if nothing)."""
        checkout = git.find_checkout(spare.repo, spare.path)
        if checkout is None or not (checkout.git_dir / MARKER).is_file():
            return None, ""
        if git.restore_dotgit(checkout):
            return checkout, "its .git file was changed"
        if git.head_commit(spare.repo) != spare.base:
            return checkout, "the project's HEAD moved"
        if git.output(checkout.work_tree, [*checkout.args, "rev-parse", "--verify", "HEAD"]) != spare.base:
            return checkout, "its HEAD moved"
        status = git.run(
            checkout.work_tree,
            [*checkout.args, "status", "--porcelain=v1", "-z", "--untracked-files=all", "--ignored=matching"],
        ).stdout
        if status:
            first = status.split(b"\0", 1)[0].decode(errors="replace")
            return checkout, f"it holds changes ({first!r} ...)"
        for directory, subdirectories, files in os.walk(checkout.work_tree):
            if not subdirectories and not files:
                return checkout, f"it holds an empty directory ({os.path.relpath(directory, checkout.work_tree)})"
        return checkout, ""

    def _remove(self, spare: Spare) -> None:
        path = git.inside_root(self.root, spare.path)
        if os.path.lexists(path):
            git.remove_worktree(spare.repo, path, "", ())
        else:
            git.run(spare.repo, ["worktree", "unlock", str(path)], check=False)
            git.run(spare.repo, ["worktree", "prune"])
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # the project's directory, if nothing else is in it
        log.info("worktree.spare_removed", project_id=spare.project_id, path=path)

    def _sweep(self, project: _Project) -> None:
        """Remove the spares of services that died (their marker names a process that certainly ended)."""
        admin_root = git.common_dir(project.repo) / "worktrees"
        for admin in sorted(admin_root.iterdir()) if admin_root.is_dir() else []:
            try:
                owner = (admin / MARKER).read_text().strip()
                path = Path((admin / "gitdir").read_text().strip()).parent
            except OSError:
                continue
            if not process_gone(owner):
                continue
            try:
                self._remove(Spare(project.project_id, project.repo, path, ""))
            except WorktreeError as exc:
                log.warning("worktree.spare_not_removed", path=path, error=exc)


def read_spare_status(root: Path) -> list[dict[str, Any]]:
    """The status files of running services' spares under ``root`` (blocking)."""
    return read_status(root, STATUS_PREFIX)
