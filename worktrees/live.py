"""The worktree's diff while a turn runs: file events in, a throttled summary out.

:class:`LiveIndex` is a scratch index that follows the worktree. It is seeded once per turn by a
full scan (``git add --all`` from a copy of the worktree's own index, whose stat cache makes that
cheap), then only the paths that file events name are hashed again (``update-index``; new files
that .gitignore leaves out are skipped by ``check-ignore``; a changed ``.gitignore`` rescans).
Each update then compares the index with the session's base (``diff-index --cached``, which
skips unchanged directories by the index's cache tree): two or three git processes per update
whatever the repository's size, and no tree or object written.

:class:`LiveDiff` runs it: a ``watchfiles`` watcher (inotify) collects the changed paths, and at
most once per ``interval`` the summary is recomputed and handed to ``on_change`` when it differs
from the last one. The turn (orchestrator.dispatch.turn) runs it beside the backend and stops it
before the turn's end is written, so no summary follows the turn's ``message_complete``. Any git
failure only logs: a live view must never fail a turn.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import anyio
from anyio.abc import TaskStatus
from watchfiles import awatch

from kernel import get_logger
from worktrees import diff, git
from worktrees.diff import FileChange
from worktrees.errors import WorktreeError

log = get_logger("worktrees.live")
# watchfiles logs every batch of changes at INFO; they are ours to summarize.
logging.getLogger("watchfiles").setLevel(logging.WARNING)

# The frame lists this many files at most (the totals count all of them).
MAX_FILES = 200
# How long the watcher waits for more events before it reports a batch (ms), and how often
# its thread looks up while nothing happens (ms), which bounds how long stopping it takes.
WATCH_STEP_MS = 50
WATCH_TIMEOUT_MS = 100
IGNORE_FILES = (".gitignore",)
PATTERN_PATHSPECS = {"GIT_LITERAL_PATHSPECS": "0"}


@dataclass(frozen=True)
class LiveSummary:
    """The files the session's change would hold if the turn ended now, with +/- counts."""

    files: tuple[FileChange, ...]

    def payload(self) -> dict[str, Any]:
        """``worktree_changed``'s payload without the task (kernel.eventlog.WorktreeChangedPayload)."""
        listed = sorted(self.files, key=lambda f: f.path)[:MAX_FILES]
        return {
            "files": [{k: v for k, v in f.to_json().items() if k != "truncated"} for f in listed],
            "total_files": len(self.files),
            "additions": sum(f.additions for f in self.files),
            "deletions": sum(f.deletions for f in self.files),
        }


class LiveIndex:
    """A scratch index following ``work_tree``; every git command names its git dir and work tree."""

    def __init__(self, repo: Path, work_tree: Path, git_dir: Path, base: str) -> None:
        self.repo = repo
        self.work_tree = Path(os.path.realpath(work_tree))
        self.base = base
        self._git_dir = git_dir
        self._tmp = tempfile.TemporaryDirectory(prefix="switchyard-live-")
        self._index = Path(self._tmp.name) / "index"
        self._env = {"GIT_INDEX_FILE": str(self._index)}
        self._args = [f"--git-dir={git_dir}", f"--work-tree={self.work_tree}"]
        self._tracked: set[str] = set()

    def __enter__(self) -> LiveIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._tmp.cleanup()

    def _git(
        self, args: list[str], stdin: bytes | None = None, check: bool = True, env: dict[str, str] | None = None
    ) -> bytes:
        env = {**self._env, **(env or {})}
        return git.run(self.work_tree, [*self._args, *args], env=env, stdin=stdin, check=check).stdout

    def scan(self) -> LiveSummary:
        """Every file of the worktree (the first update of a turn, and after a .gitignore changed)."""
        own = self._git_dir / "index"
        if not self._index.exists() and own.is_file():
            shutil.copy2(own, self._index)  # its stat cache spares hashing unchanged files
        self._git(["add", "--all"])
        self._tracked = {os.fsdecode(p) for p in self._git(["ls-files", "-z"]).split(b"\0") if p}
        return self._summary()

    def update(self, paths: Iterable[str]) -> LiveSummary:
        """Hash again only ``paths`` (relative, as file events name them)."""
        wanted = {p for p in paths if not _in_dotgit(p)}
        if not self._index.exists() or any(PurePosixPath(p).name in IGNORE_FILES for p in wanted):
            return self.scan()
        candidates = self._expand(wanted)
        # Tracked files are hashed whatever .gitignore says (as `add --all` does); only new ones
        # are asked about.
        ignored = self._ignored([p for p in candidates if p not in self._tracked])
        chosen = [p for p in candidates if p not in ignored]
        if chosen:
            args = ["update-index", "--add", "--remove", "--replace", "-z", "--stdin"]
            self._git(args, stdin=git.nul_joined(chosen))
            for path in chosen:
                if os.path.lexists(self.work_tree / path):
                    self._tracked.add(path)
                else:
                    self._tracked.discard(path)
        return self._summary()

    def _ignored(self, paths: list[str]) -> set[str]:
        """Which untracked ``paths`` .gitignore leaves out. check-ignore refuses literal pathspecs,
        so each path is given as ``./path``: nothing in it is read as pathspec magic."""
        if not paths:
            return set()
        listing = git.nul_joined(f"./{p}" for p in paths)
        out = self._git(["check-ignore", "-z", "--stdin"], stdin=listing, check=False, env=PATTERN_PATHSPECS)
        return {os.fsdecode(p).removeprefix("./") for p in out.split(b"\0") if p}

    def _expand(self, paths: set[str]) -> list[str]:
        """Files for the paths: a directory's files on disk (not below an ignored directory, such
        as a dependency tree an agent installs), and the index entries below a path that is gone
        (a removed directory)."""
        out: set[str] = set()
        gone: list[str] = []
        dirs: list[str] = []
        for rel in paths:
            full = self.work_tree / rel
            if full.is_dir() and not full.is_symlink():
                dirs.append(rel)
            elif os.path.lexists(full):
                out.add(rel)
            else:
                gone.append(rel)
                out.add(rel)
        skipped = self._ignored([f"{d}/" for d in dirs if d not in self._tracked])
        for rel in dirs:
            if f"{rel}/" in skipped:
                continue
            for root, subdirs, files in os.walk(self.work_tree / rel):
                subdirs[:] = [d for d in subdirs if d != ".git" and not (Path(root) / d / ".git").exists()]
                out.update(os.path.relpath(Path(root) / f, self.work_tree) for f in files)
        if gone:
            listed = self._git(["ls-files", "-z", "--", *gone])
            out.update(os.fsdecode(p) for p in listed.split(b"\0") if p)
        return sorted(p for p in out if not _in_dotgit(p))

    def _summary(self) -> LiveSummary:
        listing = self._git(["diff-index", "--cached", "-r", "-M", "-z", "--raw", "--numstat", self.base])
        return LiveSummary(tuple(diff.parse_changes(listing)))


def _relative(root: Path, path: str) -> str | None:
    """A path the watcher reported, relative to the worktree (None: outside it, or in .git)."""
    rel = PurePosixPath(path).relative_to(root) if PurePosixPath(path).is_relative_to(root) else None
    if rel is None or not rel.parts or _in_dotgit(str(rel)):
        return None
    return str(rel)


def _in_dotgit(rel: str) -> bool:
    return PurePosixPath(rel).parts[:1] == (".git",)


class LiveDiff:
    """Follow a worktree during a turn (see the module docstring); ``run`` until cancelled."""

    def __init__(self, index: LiveIndex, interval: float, on_change: Callable[[LiveSummary], None]) -> None:
        self.index = index
        self.interval = interval
        self.on_change = on_change
        self.updates = 0
        self._pending: set[str] = set()
        self._woken = anyio.Event()
        self._stop = anyio.Event()

    async def run(self) -> None:
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self._watch)
                last = await self._update(initial=True)
                sent_at = -math.inf
                while True:
                    await self._woken.wait()
                    self._woken = anyio.Event()
                    wait = sent_at + self.interval - anyio.current_time()
                    if wait > 0:
                        await anyio.sleep(wait)  # more events gather meanwhile
                    summary = await self._update()
                    if summary is not None and summary != last:
                        # No checkpoint between the update and the frame: stopping the watch
                        # right after an update still delivers it before the turn's end.
                        self.on_change(summary)
                        last = summary
                        sent_at = anyio.current_time()
        finally:
            self._stop.set()

    async def _update(self, *, initial: bool = False) -> LiveSummary | None:
        paths, self._pending = self._pending, set()
        try:
            if initial:
                return await anyio.to_thread.run_sync(self.index.scan)
            return await anyio.to_thread.run_sync(self.index.update, paths)
        except (WorktreeError, OSError) as exc:
            log.warning("live_diff.failed", error=exc, work_tree=self.index.work_tree)
            return None
        finally:
            self.updates += 1

    async def _watch(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Collect changed paths; ready once the watcher has reported (or timed out) once, so
        every change after that is seen, and the first scan starts after it."""
        root = self.index.work_tree
        ready = False
        async for changes in awatch(
            root,
            watch_filter=None,
            step=WATCH_STEP_MS,
            rust_timeout=WATCH_TIMEOUT_MS,
            yield_on_timeout=True,
            stop_event=self._stop,
        ):
            if not ready:
                ready = True
                task_status.started()
            for _, path in changes:
                rel = _relative(root, path)
                if rel is not None:
                    self._pending.add(rel)
            if self._pending:
                self._woken.set()
