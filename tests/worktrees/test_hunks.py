"""Hunks: parsing git's patches, keeping some of them (applied by real git), following a line."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.repos import LINES
from worktrees import git as wgit
from worktrees import hunks

# Lines 2, 10 and 18 of a.txt changed: three hunks (more than twice the context apart).
THREE = LINES.replace("line 2\n", "line 2 agent\n").replace("line 10\n", "line 10 agent\n")
THREE = THREE.replace("line 18\n", "line 18 agent\nline 18b agent\n")


def three_hunks(repo: Path, tmp_path: Path) -> tuple[str, str, bytes]:
    base = wgit.head_commit(repo)
    wt = tmp_path / "wt"
    wgit.add_worktree(repo, wt, "switchyard/1", base)
    (wt / "a.txt").write_text(THREE)
    snapshot = wgit.snapshot(wgit.trusted_checkout(repo, wt), base, "snapshot")
    return base, snapshot, wgit.patch(repo, base, snapshot, ("a.txt",))


def content(repo: Path, tree: str, path: str) -> str:
    return wgit.run(repo, ["cat-file", "blob", f"{tree}:{path}"]).stdout.decode()


def test_a_section_splits_into_its_hunks(repo: Path, tmp_path: Path) -> None:
    _, _, section = three_hunks(repo, tmp_path)
    parsed = hunks.parse_section(section)
    assert parsed.header.startswith(b"diff --git a/a.txt b/a.txt\n")
    assert [(h.id, h.old_start, h.old_lines, h.new_start, h.new_lines) for h in parsed.hunks] == [
        (1, 1, 5, 1, 5),
        (2, 7, 7, 7, 7),
        (3, 15, 6, 15, 7),
    ]
    assert parsed.keep([1, 2, 3]) == section


@pytest.mark.parametrize("keep", [[1], [2], [3], [1, 3], [2, 3]])
def test_kept_hunks_apply_to_the_base_and_revert_from_the_snapshot(repo: Path, tmp_path: Path, keep: list[int]) -> None:
    base, snapshot, section = three_hunks(repo, tmp_path)
    parsed = hunks.parse_section(section)
    changed = {1: ("line 2\n", "line 2 agent\n"), 2: ("line 10\n", "line 10 agent\n")}
    changed[3] = ("line 18\n", "line 18 agent\nline 18b agent\n")
    expected = LINES
    for i in keep:
        expected = expected.replace(*changed[i])
    accepted = wgit.tree_with_patch(repo, base, parsed.keep(keep))
    assert content(repo, accepted, "a.txt") == expected
    # Reverting the other hunks from the snapshot gives the same file.
    others = [i for i in (1, 2, 3) if i not in keep]
    rest = wgit.tree_with_patch(repo, snapshot, parsed.keep(others, reverse=True), reverse=True)
    assert content(repo, rest, "a.txt") == expected


def test_a_line_is_followed_through_a_zero_context_diff() -> None:
    section = (
        b"diff --git a/f b/f\n--- a/f\n+++ b/f\n"
        b"@@ -0,0 +1,2 @@\n+new 1\n+new 2\n"  # two lines inserted at the top
        b"@@ -5 +7 @@\n-five\n+FIVE\n"  # line 5 changed
        b"@@ -8,2 +9,0 @@\n-eight\n-nine\n"  # lines 8 and 9 removed
    )
    moves = list(hunks.parse_section(section).hunks)
    assert hunks.map_line(moves, 1) == 3
    assert hunks.map_line(moves, 4) == 6
    assert hunks.map_line(moves, 5) is None
    assert hunks.map_line(moves, 7) == 9
    assert hunks.map_line(moves, 9) is None
    assert hunks.map_line(moves, 10) == 10
    assert hunks.map_line([], 3) == 3


def test_files_get_the_hunks_of_their_own_section(repo: Path, tmp_path: Path) -> None:
    base, snapshot, _ = three_hunks(repo, tmp_path)
    text = wgit.patch(repo, base, snapshot).decode()
    files = [
        {"path": "a.txt", "status": "modified", "truncated": False},
        {"path": "left out.txt", "status": "added", "truncated": True},
    ]
    listed = hunks.with_hunks(text, files)
    assert [h["id"] for h in listed[0]["hunks"]] == [1, 2, 3]
    assert listed[0]["hunks"][1]["header"] == "@@ -7,7 +7,7 @@ line 6"
    assert listed[1]["hunks"] is None


def test_headers_quote_paths_as_git_does() -> None:
    assert hunks.git_header("a.txt", "a.txt") == "diff --git a/a.txt b/a.txt"
    assert hunks.git_header('we"ird\tname', "ü.txt") == 'diff --git "a/we\\"ird\\tname" b/ü.txt'
