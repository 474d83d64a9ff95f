"""Snapshots and diffs of a real worktree: every kind of change, ignore rules, and the caps."""

from __future__ import annotations

import os
from pathlib import Path

from testkit.repos import BINARY, LINES, git
from worktrees import git as wgit
from worktrees.diff import Caps, compute, parse_changes

BIG = Caps(max_file_bytes=1 << 20, max_total_bytes=8 << 20)


def worktree(repo: Path, tmp_path: Path) -> tuple[Path, str]:
    base = wgit.head_commit(repo)
    path = tmp_path / "wt"
    wgit.add_worktree(repo, path, "switchyard/1", base)
    return path, base


def test_every_kind_of_change_is_diffed(repo: Path, tmp_path: Path) -> None:
    wt, base = worktree(repo, tmp_path)
    (wt / "a.txt").write_text(LINES.replace("line 3\n", "line three\n"))
    (wt / "new.txt").write_text("brand new\n")
    (wt / "gone.txt").unlink()
    (wt / "old_name.txt").rename(wt / "new_name.txt")
    (wt / "image.bin").write_bytes(BINARY[::-1])
    (wt / "pic.bin").write_bytes(b"\x00\x01\x02binary")
    (wt / "debug.log").write_text("ignored\n")
    (wt / "build").mkdir()
    (wt / "build" / "out.o").write_text("ignored too\n")

    snap = wgit.snapshot(wgit.trusted_checkout(repo, wt), base, "snapshot")
    d = compute(repo, base, snap, BIG)

    files = {f["path"]: f for f in d.files_json()}
    assert set(files) == {"a.txt", "new.txt", "gone.txt", "new_name.txt", "image.bin", "pic.bin"}
    assert files["a.txt"] == {
        "path": "a.txt",
        "status": "modified",
        "additions": 1,
        "deletions": 1,
        "binary": False,
        "truncated": False,
    }
    assert files["new.txt"]["status"] == "added" and files["new.txt"]["additions"] == 1
    assert files["gone.txt"]["status"] == "deleted" and files["gone.txt"]["deletions"] == 1
    assert files["new_name.txt"]["status"] == "renamed"
    assert files["new_name.txt"]["old_path"] == "old_name.txt"
    assert files["image.bin"]["binary"] and files["image.bin"]["status"] == "modified"
    assert files["pic.bin"]["binary"] and files["pic.bin"]["status"] == "added"
    assert not d.truncated
    assert "-line 3\n+line three\n" in d.text
    assert "rename from old_name.txt\nrename to new_name.txt\n" in d.text
    assert "GIT binary patch" in d.text
    assert "debug.log" not in d.text and "out.o" not in d.text


def test_snapshot_leaves_the_worktree_index_and_head_alone(repo: Path, tmp_path: Path) -> None:
    wt, base = worktree(repo, tmp_path)
    (wt / "a.txt").write_text("changed\n")
    (wt / "untracked.txt").write_text("new\n")
    index = Path(git(wt, "rev-parse", "--absolute-git-dir")) / "index"
    before = index.read_bytes()

    first = wgit.snapshot(wgit.trusted_checkout(repo, wt), base, "snapshot")
    assert index.read_bytes() == before
    assert git(wt, "rev-parse", "HEAD") == base
    assert git(wt, "diff", "--cached", "--name-only") == ""  # nothing staged
    assert "?? untracked.txt" in git(wt, "status", "--porcelain")
    # The same content against the same base is the same commit; new content is not.
    assert wgit.snapshot(wgit.trusted_checkout(repo, wt), base, "snapshot") == first
    (wt / "untracked.txt").write_text("newer\n")
    assert wgit.snapshot(wgit.trusted_checkout(repo, wt), base, "snapshot") != first


def test_agent_commits_are_part_of_the_diff(repo: Path, tmp_path: Path) -> None:
    wt, base = worktree(repo, tmp_path)
    (wt / "committed.txt").write_text("by the agent\n")
    git(wt, "add", "committed.txt")
    git(wt, "commit", "-q", "-m", "agent commit")
    d = compute(repo, base, wgit.snapshot(wgit.trusted_checkout(repo, wt), base, "snapshot"), BIG)
    assert [f.path for f in d.files] == ["committed.txt"]


def test_a_file_over_the_cap_is_listed_and_reported_truncated(repo: Path, tmp_path: Path) -> None:
    wt, base = worktree(repo, tmp_path)
    (wt / "huge.txt").write_text("x" * 100 + "\n" * 5000)
    (wt / "small.txt").write_text("small\n")
    (wt / "blob.bin").write_bytes(os.urandom(5000))
    snap = wgit.snapshot(wgit.trusted_checkout(repo, wt), base, "snapshot")
    d = compute(repo, base, snap, Caps(max_file_bytes=2000, max_total_bytes=1 << 20))

    files = {f.path: f for f in d.files}
    assert d.truncated
    assert files["huge.txt"].truncated and files["huge.txt"].additions == 5000
    assert files["blob.bin"].truncated and files["blob.bin"].binary
    assert not files["small.txt"].truncated
    assert "+small\n" in d.text
    assert "# switchyard: huge.txt: patch of" in d.text
    assert "# switchyard: blob.bin: binary file larger than 2000 bytes" in d.text
    assert len(d.text) < 2000 + 1000


def test_the_total_cap_leaves_files_out_and_says_so(repo: Path, tmp_path: Path) -> None:
    wt, base = worktree(repo, tmp_path)
    for i in range(10):
        (wt / f"f{i}.txt").write_text(f"{i}\n" * 50)
    d = compute(
        repo,
        base,
        wgit.snapshot(wgit.trusted_checkout(repo, wt), base, "snapshot"),
        Caps(max_file_bytes=1 << 20, max_total_bytes=1500),
    )
    assert d.truncated and len(d.files) == 10
    kept = [f for f in d.files if not f.truncated]
    assert 0 < len(kept) < 10
    assert len(d.text.encode()) < 1500 + 200
    assert f"{10 - len(kept)} more file(s) left out" in d.text


def test_an_unchanged_worktree_has_an_empty_diff(repo: Path, tmp_path: Path) -> None:
    wt, base = worktree(repo, tmp_path)
    (wt / "ignored.log").write_text("only ignored files\n")
    d = compute(repo, base, wgit.snapshot(wgit.trusted_checkout(repo, wt), base, "snapshot"), BIG)
    assert d.empty and d.text == "" and not d.truncated


def test_parse_changes_reads_renames_and_binary_counts() -> None:
    sha_a, sha_b = "1" * 40, "2" * 40
    data = (
        f":100644 100644 {sha_a} {sha_b} R090\0old.txt\0new.txt\0"
        f":100644 100644 {sha_a} {sha_b} M\0pic.bin\0"
        "1\t2\t\0old.txt\0new.txt\0-\t-\tpic.bin\0"
    ).encode()
    renamed, binary = parse_changes(data)
    assert (renamed.path, renamed.old_path, renamed.status, renamed.additions, renamed.deletions) == (
        "new.txt",
        "old.txt",
        "renamed",
        1,
        2,
    )
    assert binary.binary and binary.status == "modified" and binary.blobs == (sha_a, sha_b)
