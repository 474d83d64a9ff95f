"""A worktree's .git file is the agent's to rewrite; Switchyard's own git never follows it.

Attack: the agent points its worktree's ``.git`` at a git dir it controls, whose config defines a
clean filter (and an fsmonitor hook) that runs a command, and names the filter in
``.gitattributes``. Switchyard's next snapshot (``git add --all``) would run that command as the
service's user. It must run nothing, and the ``.git`` file must be put back.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import asyncpg
import pytest

from testkit.repos import GIT_ENV, git
from testkit.rows import add_repo_session, end_turn, start_turn
from worktrees import WorktreeManager, WorktreeSettings
from worktrees import git as wgit

pytestmark = pytest.mark.anyio


def plant_redirect(worktree: Path, tmp_path: Path, marker: Path) -> Path:
    """What the attacker writes: its own git dir with a command-running config, and .gitattributes."""
    evil = tmp_path / "evil"
    git(tmp_path, "init", "-q", str(evil))
    command = f"touch {marker}"
    with (evil / ".git" / "config").open("a") as config:
        config.write(f'[filter "pwn"]\n\tclean = "sh -c \'{command}; cat\'"\n\trequired = true\n')
        config.write(f"[core]\n\tfsmonitor = \"sh -c '{command}'\"\n")
    (worktree / ".gitattributes").write_text("* filter=pwn\n")
    (worktree / ".git").write_text(f"gitdir: {evil / '.git'}\n")
    return evil


async def test_a_redirected_dotgit_runs_nothing_at_the_snapshot_and_is_restored(
    pool: asyncpg.Pool, repo: Path, worktree_settings: WorktreeSettings, tmp_path: Path
) -> None:
    manager = WorktreeManager(pool, worktree_settings)
    session = await add_repo_session(pool, repo)
    wt = await manager.ensure(session)
    trusted = (wt.path / ".git").read_text()
    marker = tmp_path / "pwned-by-filter"
    plant_redirect(wt.path, tmp_path, marker)
    (wt.path / "a.txt").write_text("edited by the agent\n")

    async with pool.acquire() as conn:
        task = await start_turn(conn, session)
    change = await manager.record_turn(session, task_id=task, agent="attacker")
    async with pool.acquire() as conn:
        await end_turn(conn, task)

    assert not marker.exists()
    assert (wt.path / ".git").read_text() == trusted
    assert change is not None and {f["path"] for f in change.files} == {".gitattributes", "a.txt"}

    # The same snapshot following the .git file, as git without --git-dir does, runs the filter.
    again = tmp_path / "again"
    again.mkdir()
    plant_redirect(wt.path, again, marker)
    subprocess.run(["git", "add", "--all"], cwd=wt.path, env=GIT_ENV, capture_output=True, check=False)
    assert marker.exists()


async def test_ensure_puts_back_a_rewritten_or_replaced_dotgit(
    pool: asyncpg.Pool, repo: Path, worktree_settings: WorktreeSettings, tmp_path: Path
) -> None:
    manager = WorktreeManager(pool, worktree_settings)
    session = await add_repo_session(pool, repo)
    wt = await manager.ensure(session)
    trusted = (wt.path / ".git").read_text()
    dotgit = wt.path / ".git"

    dotgit.write_text("gitdir: /somewhere/else\n")
    assert await manager.ensure(session) == wt
    assert dotgit.read_text() == trusted

    dotgit.unlink()
    dotgit.symlink_to(tmp_path)
    await manager.ensure(session)
    assert not dotgit.is_symlink() and dotgit.read_text() == trusted

    dotgit.unlink()
    (dotgit / "hooks").mkdir(parents=True)
    (dotgit / "config").write_text("[core]\n\tfsmonitor = true\n")
    await manager.ensure(session)
    assert dotgit.is_file() and dotgit.read_text() == trusted
    assert git(wt.path, "rev-parse", "--abbrev-ref", "HEAD") == wt.branch


async def test_a_prune_never_drops_a_worktree_whose_dotgit_is_gone(
    pool: asyncpg.Pool, repo: Path, worktree_settings: WorktreeSettings
) -> None:
    manager = WorktreeManager(pool, worktree_settings)
    first, second = await add_repo_session(pool, repo), await add_repo_session(pool, repo)
    wt = await manager.ensure(first)
    (wt.path / ".git").unlink()
    # Another session's worktree is created meanwhile; creating one prunes stale registrations.
    await manager.ensure(second)
    assert await manager.ensure(first) == wt
    assert (wt.path / ".git").is_file()


def test_a_checkout_is_found_from_the_repository_side(repo: Path, tmp_path: Path) -> None:
    wt = tmp_path / "wt"
    wgit.add_worktree(repo, wt, "switchyard/1", wgit.head_commit(repo))
    found = wgit.find_checkout(repo, wt)
    assert found is not None and found.git_dir == Path(os.path.realpath(repo / ".git" / "worktrees" / "wt"))
    # Not this repository's worktree: nothing, whatever its .git file claims.
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / ".git").write_text(f"gitdir: {found.git_dir}\n")
    assert wgit.find_checkout(repo, stranger) is None
