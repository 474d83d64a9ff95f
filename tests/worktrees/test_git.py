"""The git plumbing that writes: applying to the project checkout, restoring, worktree life cycle."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from testkit.repos import LINES, checkout_files, git
from worktrees import ApplyConflict, PathOutsideRoot, RestoreRefused, WorktreeBroken
from worktrees import git as wgit


def change_in_worktree(repo: Path, tmp_path: Path) -> tuple[Path, str, str]:
    """A worktree whose agent changed line 2 of a.txt, added new.txt and deleted gone.txt."""
    base = wgit.head_commit(repo)
    wt = tmp_path / "wt"
    wgit.add_worktree(repo, wt, "switchyard/1", base)
    (wt / "a.txt").write_text(LINES.replace("line 2\n", "line two\n"))
    (wt / "new.txt").write_text("new\n")
    (wt / "gone.txt").unlink()
    return wt, base, wgit.snapshot(wgit.trusted_checkout(repo, wt), base, "snapshot")


PATHS = ("a.txt", "gone.txt", "new.txt")


def test_a_clean_patch_is_applied_to_the_files_not_the_index(repo: Path, tmp_path: Path) -> None:
    _, base, snap = change_in_worktree(repo, tmp_path)
    index_before = (repo / ".git" / "index").read_bytes()
    assert wgit.apply_to_checkout(repo, wgit.patch(repo, base, snap), PATHS) == "clean"
    assert (repo / "a.txt").read_text().startswith("line 1\nline two\nline 3\n")
    assert (repo / "new.txt").read_text() == "new\n"
    assert not (repo / "gone.txt").exists()
    assert (repo / ".git" / "index").read_bytes() == index_before


def test_a_local_edit_near_the_change_is_merged_three_way(repo: Path, tmp_path: Path) -> None:
    _, base, snap = change_in_worktree(repo, tmp_path)
    # Inside the hunk's context, so a plain apply fails, but not on the same lines.
    (repo / "a.txt").write_text(LINES.replace("line 5\n", "line five (local)\n"))
    assert wgit.apply_to_checkout(repo, wgit.patch(repo, base, snap), PATHS) == "merged"
    text = (repo / "a.txt").read_text()
    assert "line two\n" in text and "line five (local)\n" in text
    assert (repo / "new.txt").exists() and not (repo / "gone.txt").exists()


def test_a_conflicting_local_edit_leaves_the_checkout_untouched(repo: Path, tmp_path: Path) -> None:
    _, base, snap = change_in_worktree(repo, tmp_path)
    (repo / "a.txt").write_text(LINES.replace("line 2\n", "line 2 edited locally\n"))
    (repo / "untracked-local.txt").write_text("mine\n")
    before = checkout_files(repo)
    with pytest.raises(ApplyConflict, match=r"git apply: .*Applied patch to 'a\.txt' with conflicts\.; U a\.txt"):
        wgit.apply_to_checkout(repo, wgit.patch(repo, base, snap), PATHS)
    assert checkout_files(repo) == before


def test_an_ignored_local_file_where_the_change_adds_one_is_a_conflict(repo: Path, tmp_path: Path) -> None:
    base = wgit.head_commit(repo)
    wt = tmp_path / "wt"
    wgit.add_worktree(repo, wt, "switchyard/1", base)
    (wt / ".gitignore").write_text("build/\n")  # the agent un-ignores *.log and adds one
    (wt / "notes.log").write_text("from the agent\n")
    snap = wgit.snapshot(wgit.trusted_checkout(repo, wt), base, "snapshot")
    (repo / "notes.log").write_text("precious local log\n")  # ignored in the project
    before = checkout_files(repo)
    with pytest.raises(ApplyConflict):
        wgit.apply_to_checkout(repo, wgit.patch(repo, base, snap), (".gitignore", "notes.log"))
    assert checkout_files(repo) == before


def test_restore_puts_back_modified_and_deleted_files_and_removes_added_ones(repo: Path, tmp_path: Path) -> None:
    wt, base, _ = change_in_worktree(repo, tmp_path)
    (wt / "dir").mkdir()
    (wt / "dir" / "added.txt").write_text("x\n")
    (wt / "keep.txt").write_text("not part of the reject\n")
    wgit.restore_paths(
        wgit.trusted_checkout(repo, wt), base, wgit.RestorePlan(("a.txt", "gone.txt"), ("new.txt", "dir/added.txt"))
    )
    assert (wt / "a.txt").read_text() == LINES
    assert (wt / "gone.txt").read_text() == "to be deleted\n"
    assert not (wt / "new.txt").exists() and not (wt / "dir").exists()
    assert (wt / "keep.txt").read_text() == "not part of the reject\n"


def test_restore_refuses_to_clobber_a_directory(repo: Path, tmp_path: Path) -> None:
    wt, base, _ = change_in_worktree(repo, tmp_path)
    (wt / "keep.txt").unlink()
    (wt / "keep.txt").mkdir()
    (wt / "keep.txt" / "inner.txt").write_text("work\n")
    with pytest.raises(RestoreRefused, match="is a directory now"):
        wgit.restore_paths(wgit.trusted_checkout(repo, wt), base, wgit.RestorePlan(("keep.txt", "a.txt"), ()))
    assert (wt / "keep.txt" / "inner.txt").read_text() == "work\n"
    assert (wt / "a.txt").read_text() != LINES  # checked before anything was written


def test_restore_refuses_a_path_below_a_symlink(repo: Path, tmp_path: Path) -> None:
    wt, base, _ = change_in_worktree(repo, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.rename(wt / "src", tmp_path / "src-moved")
    (wt / "src").symlink_to(outside)
    with pytest.raises(RestoreRefused, match="no longer a directory"):
        wgit.restore_paths(wgit.trusted_checkout(repo, wt), base, wgit.RestorePlan(("src/main.py",), ()))
    assert list(outside.iterdir()) == []


def test_inside_root_refuses_paths_that_resolve_outside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "1").mkdir(parents=True)
    assert wgit.inside_root(root, root / "1" / "2") == (root / "1" / "2").resolve()
    for bad in (tmp_path / "elsewhere", root / ".." / "x", root):
        with pytest.raises(PathOutsideRoot):
            wgit.inside_root(root, bad)
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(PathOutsideRoot):
        wgit.inside_root(root, root / "link" / "escape")


def test_a_deleted_worktree_directory_is_recreated_on_its_branch(repo: Path, tmp_path: Path) -> None:
    base = wgit.head_commit(repo)
    wt = tmp_path / "wt"
    wgit.add_worktree(repo, wt, "switchyard/1", base)
    (wt / "committed.txt").write_text("agent work\n")
    git(wt, "add", "committed.txt")
    git(wt, "commit", "-q", "-m", "agent")
    wgit.add_worktree(repo, wt, "switchyard/1", base)  # idempotent
    shutil.rmtree(wt)  # behind git's back: its registration of the worktree is now stale
    wgit.add_worktree(repo, wt, "switchyard/1", base)
    assert (wt / "committed.txt").read_text() == "agent work\n"
    assert wgit.find_checkout(repo, wt) is not None


def test_a_foreign_directory_in_the_way_is_refused_not_deleted(repo: Path, tmp_path: Path) -> None:
    wt = tmp_path / "wt"
    wt.mkdir()
    (wt / "someone-elses.txt").write_text("data\n")
    with pytest.raises(WorktreeBroken, match="not a git worktree"):
        wgit.add_worktree(repo, wt, "switchyard/1", wgit.head_commit(repo))
    assert (wt / "someone-elses.txt").read_text() == "data\n"
