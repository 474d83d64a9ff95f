"""The live diff: a scratch index kept current from file events, and its throttled summaries."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from testkit.repos import LINES
from testkit.rows import add_repo_session
from worktrees import WorktreeManager, WorktreeSettings
from worktrees import git as wgit
from worktrees.live import LiveDiff, LiveIndex, LiveSummary

pytestmark = pytest.mark.anyio


def index_for(repo: Path, tmp_path: Path) -> tuple[Path, LiveIndex]:
    base = wgit.head_commit(repo)
    wt = tmp_path / "wt"
    wgit.add_worktree(repo, wt, "switchyard/1", base)
    checkout = wgit.trusted_checkout(repo, wt)
    return wt, LiveIndex(repo, checkout.work_tree, checkout.git_dir, base)


def counts(summary: LiveSummary) -> dict[str, tuple[str, int, int]]:
    return {f.path: (f.status, f.additions, f.deletions) for f in summary.files}


def test_only_the_named_paths_are_hashed_again(repo: Path, tmp_path: Path) -> None:
    wt, index = index_for(repo, tmp_path)
    with index:
        (wt / "a.txt").write_text(LINES.replace("line 2\n", "two\n"))
        assert counts(index.scan()) == {"a.txt": ("modified", 1, 1)}
        # A change the events did not name is not seen until they do: no rescan per update.
        (wt / "keep.txt").write_text("changed unseen\n")
        (wt / "new.txt").write_text("new\n")
        assert counts(index.update({"new.txt"})) == {"a.txt": ("modified", 1, 1), "new.txt": ("added", 1, 0)}
        assert "keep.txt" in counts(index.update({"keep.txt"}))

        (wt / "gone.txt").unlink()
        (wt / "debug.log").write_text("ignored\n")
        (wt / "pkg" / "sub").mkdir(parents=True)
        (wt / "pkg" / "sub" / "m.py").write_text("x = 1\ny = 2\n")
        summary = counts(index.update({"gone.txt", "debug.log", "pkg", ".git"}))
        assert summary["gone.txt"] == ("deleted", 0, 1) and summary["pkg/sub/m.py"] == ("added", 2, 0)
        assert "debug.log" not in summary

        shutil.rmtree(wt / "pkg")
        assert "pkg/sub/m.py" not in counts(index.update({"pkg"}))

        # An ignored directory (and what is in it) stays out.
        (wt / "build" / "deep").mkdir(parents=True)
        (wt / "build" / "deep" / "out.o").write_text("object\n")
        assert not any(p.startswith("build/") for p in counts(index.update({"build", "build/deep/out.o"})))

        # A .gitignore that changes what is ignored makes the next update look at everything.
        (wt / ".gitignore").write_text("build/\n")
        summary = counts(index.update({".gitignore"}))
        assert summary["debug.log"] == ("added", 1, 0) and summary[".gitignore"] == ("modified", 0, 1)
        assert summary == {f.path: (f.status, f.additions, f.deletions) for f in index.scan().files}


def test_the_payload_lists_files_and_totals(repo: Path, tmp_path: Path) -> None:
    wt, index = index_for(repo, tmp_path)
    with index:
        (wt / "a.txt").write_text(LINES + "more\n")
        (wt / "b.txt").write_text("b\nb\n")
        payload = index.scan().payload()
    assert payload == {
        "files": [
            {"path": "a.txt", "status": "modified", "additions": 1, "deletions": 0, "binary": False},
            {"path": "b.txt", "status": "added", "additions": 2, "deletions": 0, "binary": False},
        ],
        "total_files": 2,
        "additions": 3,
        "deletions": 0,
    }


async def test_summaries_come_at_most_once_an_interval_and_only_on_change(repo: Path, tmp_path: Path) -> None:
    wt, index = index_for(repo, tmp_path)
    interval = 0.3
    seen: list[tuple[float, dict[str, Any]]] = []
    with index:
        live = LiveDiff(index, interval, lambda s: seen.append((anyio.current_time(), s.payload())))
        async with anyio.create_task_group() as tg:
            tg.start_soon(live.run)
            await anyio.sleep(0.3)  # the watcher starts and the first scan runs
            for i in range(12):
                (wt / f"file{i}.txt").write_text(f"{i}\n")
                await anyio.sleep(0.05)
            with anyio.fail_after(10):
                while not seen or seen[-1][1]["total_files"] < 12:
                    await anyio.sleep(0.05)
            settled = len(seen)
            await anyio.sleep(2 * interval)  # nothing changes: nothing is sent
            assert len(seen) == settled
            tg.cancel_scope.cancel()
    assert 1 <= len(seen) < 12
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(seen)]
    assert all(gap >= interval for gap in gaps), gaps
    assert seen[-1][1]["additions"] == 12


async def test_follow_watches_a_sessions_worktree_until_cancelled(
    pool: asyncpg.Pool, repo: Path, worktree_settings: WorktreeSettings
) -> None:
    manager = WorktreeManager(pool, WorktreeSettings(root=worktree_settings.root, live_diff_interval=0.1))
    session = await add_repo_session(pool, repo)
    wt = await manager.ensure(session)
    seen: list[dict[str, Any]] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(manager.follow, session, seen.append)
        await anyio.sleep(0.3)
        (wt.path / "x.txt").write_text("x\n")
        with anyio.fail_after(10):
            while not seen:
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    assert seen[-1]["files"] == [{"path": "x.txt", "status": "added", "additions": 1, "deletions": 0, "binary": False}]
    # A session without a worktree has nothing to follow, and that is no error.
    other = await add_repo_session(pool, repo)
    with anyio.fail_after(5):
        await manager.follow(other, seen.append)


async def test_a_watcher_that_cannot_start_only_logs(
    pool: asyncpg.Pool, repo: Path, worktree_settings: WorktreeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_watches(*args: object, **kwargs: object) -> object:
        raise OSError(28, "inotify watch limit reached")

    monkeypatch.setattr("worktrees.live.awatch", no_watches)
    manager = WorktreeManager(pool, worktree_settings)
    session = await add_repo_session(pool, repo)
    await manager.ensure(session)
    with anyio.fail_after(5):
        await manager.follow(session, lambda payload: None)
