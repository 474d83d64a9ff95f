"""Spare worktrees against a real database and real repositories: taken, replaced, rebuilt, refused."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import asyncpg
import pytest

from kernel import process_key
from testkit.repos import git
from testkit.rows import add_project, add_session, make_idle
from worktrees import Spare, SpareWorktrees, WorktreeManager, WorktreeSettings, read_spare_status
from worktrees.spares import MARKER

pytestmark = pytest.mark.anyio

WAIT_S = 30


@pytest.fixture
def settings(worktree_settings: WorktreeSettings) -> WorktreeSettings:
    return WorktreeSettings(root=worktree_settings.root, spares=1)


@pytest.fixture
async def spares(pool: asyncpg.Pool, settings: WorktreeSettings, tmp_path: Path) -> AsyncIterator[SpareWorktrees]:
    async with SpareWorktrees(pool, settings, status_dir=tmp_path / "status") as keeper:
        yield keeper


@pytest.fixture
async def project(pool: asyncpg.Pool, repo: Path) -> int:
    return await add_project(pool, repo=repo)


async def wait_for(predicate: Callable[[], object]) -> None:
    with anyio.fail_after(WAIT_S):
        while not predicate():
            await anyio.sleep(0.02)


async def ready_spare(spares: SpareWorktrees, project: int, repo: Path, not_: Path | None = None) -> Spare:
    """The project's ready spare (another than ``not_``), once there is one."""
    spares.want(project, repo)
    await wait_for(lambda: [s for s in spares.ready(project) if s.path != not_])
    (spare,) = spares.ready(project)
    return spare


def worktree_list(repo: Path) -> list[str]:
    return [line.removeprefix("worktree ") for line in git(repo, "worktree", "list", "--porcelain").splitlines()
            if line.startswith("worktree ")]  # fmt: skip


async def test_a_new_session_takes_the_spare_on_its_branch_and_a_new_one_is_made(
    pool: asyncpg.Pool, repo: Path, settings: WorktreeSettings, spares: SpareWorktrees, project: int
) -> None:
    spare = await ready_spare(spares, project, repo)
    head = git(repo, "rev-parse", "HEAD")
    assert spare.base == head
    assert spare.path.parent == settings.root.resolve() / str(project)
    assert git(spare.path, "status", "--porcelain") == ""
    manager = WorktreeManager(pool, settings, spares=spares)
    session = await add_session(pool, project)

    wt = await manager.ensure(session)

    assert (wt.path, wt.base_commit, wt.branch) == (spare.path, head, f"switchyard/{session}")
    assert git(wt.path, "rev-parse", "--abbrev-ref", "HEAD") == wt.branch
    assert git(repo, "rev-parse", f"refs/switchyard/{session}/base") == head
    row = await pool.fetchrow("SELECT path, base_commit, status FROM session_worktrees WHERE session_id = $1", session)
    assert (row["path"], row["base_commit"], row["status"]) == (str(spare.path), head, "active")
    # It is the session's worktree now: no longer marked as a spare, and every turn finds it again.
    assert not (Path(git(wt.path, "rev-parse", "--absolute-git-dir")) / MARKER).exists()
    assert await manager.ensure(session) == wt
    # A new spare was made in the background, in another directory.
    replacement = await ready_spare(spares, project, repo, not_=spare.path)
    assert replacement.path != wt.path and replacement.base == head
    # The session's diff works as in any worktree.
    (wt.path / "a.txt").write_text("changed\n")
    change = await manager.record_turn(session)
    assert change is not None and [f["path"] for f in change.files] == ["a.txt"]


async def test_a_spare_whose_project_head_moved_is_rebuilt_not_used(
    pool: asyncpg.Pool, repo: Path, settings: WorktreeSettings, spares: SpareWorktrees, project: int
) -> None:
    stale = await ready_spare(spares, project, repo)
    (repo / "later.txt").write_text("the project moved on\n")
    git(repo, "add", "later.txt")
    git(repo, "commit", "-q", "-m", "later")
    head = git(repo, "rev-parse", "HEAD")
    manager = WorktreeManager(pool, settings, spares=spares)
    session = await add_session(pool, project)

    wt = await manager.ensure(session)

    # Made the usual way, at the new HEAD; the stale spare is gone, and a new one is at HEAD.
    assert wt.path == settings.root.resolve() / str(project) / str(session)
    assert wt.base_commit == head and (wt.path / "later.txt").is_file()
    assert not stale.path.exists() and str(stale.path) not in worktree_list(repo)
    fresh = await ready_spare(spares, project, repo, not_=stale.path)
    assert fresh.base == head and (fresh.path / "later.txt").is_file()


async def test_the_keeper_replaces_a_spare_when_head_moves_without_a_session(
    repo: Path, spares: SpareWorktrees, project: int
) -> None:
    stale = await ready_spare(spares, project, repo)
    (repo / "a.txt").write_text("new\n")
    git(repo, "commit", "-q", "-am", "moved")
    fresh = await ready_spare(spares, project, repo, not_=stale.path)
    assert fresh.base == git(repo, "rev-parse", "HEAD")
    await wait_for(lambda: not stale.path.exists())
    assert str(stale.path) not in worktree_list(repo)


def untracked(path: Path) -> None:
    (path / "planted.txt").write_text("read me first\n")


def modified(path: Path) -> None:
    (path / "a.txt").write_text("edited in the spare\n")


def deleted(path: Path) -> None:
    (path / "keep.txt").unlink()


def ignored(path: Path) -> None:
    (path / "build").mkdir()
    (path / "build" / "out.log").write_text("ignored by .gitignore, still not what was checked out\n")


def empty_directory(path: Path) -> None:
    (path / "src" / "nothing").mkdir()


def dotgit(path: Path) -> None:
    (path / ".git").unlink()
    (path / ".git").write_text("gitdir: /tmp/elsewhere\n")


@pytest.mark.parametrize("tamper", [untracked, modified, deleted, ignored, empty_directory, dotgit])
async def test_a_spare_left_dirty_by_anything_is_never_used(
    pool: asyncpg.Pool,
    repo: Path,
    settings: WorktreeSettings,
    spares: SpareWorktrees,
    project: int,
    tamper: Callable[[Path], None],
) -> None:
    spare = await ready_spare(spares, project, repo)
    tamper(spare.path)
    manager = WorktreeManager(pool, settings, spares=spares)
    session = await add_session(pool, project)

    wt = await manager.ensure(session)

    assert wt.path == settings.root.resolve() / str(project) / str(session)
    assert not (wt.path / "planted.txt").exists() and (wt.path / "keep.txt").is_file()
    assert not spare.path.exists() and str(spare.path) not in worktree_list(repo)
    assert await ready_spare(spares, project, repo, not_=spare.path)


async def test_a_spare_whose_own_head_moved_is_never_used(
    pool: asyncpg.Pool, repo: Path, settings: WorktreeSettings, spares: SpareWorktrees, project: int
) -> None:
    spare = await ready_spare(spares, project, repo)
    git(spare.path, "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-q", "--allow-empty", "-m", "planted")
    manager = WorktreeManager(pool, settings, spares=spares)
    wt = await manager.ensure(await add_session(pool, project))
    assert wt.path != spare.path and wt.base_commit == git(repo, "rev-parse", "HEAD")
    assert not spare.path.exists()


async def test_spares_are_not_session_worktrees_for_the_reaper(
    pool: asyncpg.Pool, repo: Path, settings: WorktreeSettings, spares: SpareWorktrees, project: int
) -> None:
    spare = await ready_spare(spares, project, repo)
    manager = WorktreeManager(pool, WorktreeSettings(root=settings.root, reap_idle_after=0.001), spares=spares)
    session = await add_session(pool, project)
    wt = await manager.ensure(session)
    await make_idle(pool, session)
    reaped = await manager.reap()
    # The session's worktree (the spare it took) is reaped like any other; the new spare is not.
    assert [r.session_id for r in reaped if r.removed] == [session] and not wt.path.exists()
    replacement = await ready_spare(spares, project, repo, not_=spare.path)
    assert replacement.path.is_dir()


async def test_leaving_removes_every_spare_and_its_status(
    pool: asyncpg.Pool, repo: Path, settings: WorktreeSettings, project: int, tmp_path: Path
) -> None:
    async with SpareWorktrees(pool, WorktreeSettings(root=settings.root, spares=2), status_dir=tmp_path) as keeper:
        keeper.want(project, repo)
        await wait_for(lambda: len(keeper.ready(project)) == 2)
        paths = [s.path for s in keeper.ready(project)]
        await wait_for(lambda: read_spare_status(tmp_path))
        [status] = read_spare_status(tmp_path)
        assert sorted(s["path"] for s in status["spares"]) == sorted(map(str, paths))
    assert not any(p.exists() for p in paths)
    assert worktree_list(repo) == [str(repo.resolve())]
    assert read_spare_status(tmp_path) == []


async def test_a_dead_services_spares_are_removed_and_recent_projects_get_spares_at_start(
    pool: asyncpg.Pool, repo: Path, settings: WorktreeSettings, project: int
) -> None:
    await add_session(pool, project)  # a recent session: the project gets spares from the start
    # A spare as a service left it when it died: its marker names a process that is gone.
    dead = subprocess.Popen(["sleep", "60"])
    dead_key = process_key(dead.pid)
    dead.kill()
    dead.wait()
    leftover = settings.root / str(project) / f"spare-{dead.pid}.0badc0de-1"
    leftover.parent.mkdir(parents=True)
    git(repo, "worktree", "add", "-q", "--lock", "--detach", str(leftover), "HEAD")
    admin = Path(git(leftover, "rev-parse", "--absolute-git-dir"))
    (admin / MARKER).write_text(dead_key)
    # One of a live service is left alone.
    alive = settings.root / str(project) / f"spare-{os.getpid()}.live-1"
    git(repo, "worktree", "add", "-q", "--lock", "--detach", str(alive), "HEAD")
    (Path(git(alive, "rev-parse", "--absolute-git-dir")) / MARKER).write_text(process_key())

    async with SpareWorktrees(pool, settings) as keeper:
        await wait_for(lambda: keeper.ready(project))
        await wait_for(lambda: not leftover.exists())
        assert alive.is_dir()
    assert str(leftover) not in worktree_list(repo)
    git(repo, "worktree", "unlock", str(alive))
    shutil.rmtree(alive)


async def test_no_spares_when_none_are_wanted(
    pool: asyncpg.Pool, repo: Path, settings: WorktreeSettings, project: int
) -> None:
    async with SpareWorktrees(pool, WorktreeSettings(root=settings.root, spares=0)) as keeper:
        keeper.want(project, repo)
        manager = WorktreeManager(pool, settings, spares=keeper)
        wt = await manager.ensure(await add_session(pool, project))
        assert wt.path.name.isdigit()
        await anyio.sleep(0.2)
        assert keeper.ready(project) == [] and keeper.all_ready()
    assert worktree_list(repo) == [str(repo.resolve()), str(wt.path)]
