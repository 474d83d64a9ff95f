"""Paths an agent names are confined to the worktree, symlinks followed before the check."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from backends import confine as confine_module
from backends.confine import confine, read_text, write_text
from backends.errors import FileTooLargeError, PathEscapeError, ProtectedPathError


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    root = tmp_path / "wt"
    (root / "src").mkdir(parents=True)
    (root / "src" / "a.py").write_text("one\ntwo\nthree\n")
    (root / ".git").write_text("gitdir: /somewhere/else\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("secret\n")
    return root


def test_paths_inside_resolve_to_their_real_path(worktree: Path) -> None:
    real = worktree.resolve()
    assert confine(worktree, "src/a.py") == real / "src" / "a.py"
    assert confine(worktree, str(worktree / "src" / ".." / "src" / "a.py")) == real / "src" / "a.py"
    assert confine(worktree, "new/dir/file.txt") == real / "new" / "dir" / "file.txt"
    assert confine(worktree, ".") == real


@pytest.mark.parametrize("requested", ["../x", "src/../../x", "/etc/passwd", "", "a\0b"])
def test_paths_outside_are_refused(worktree: Path, requested: str) -> None:
    with pytest.raises(PathEscapeError):
        confine(worktree, requested)


def test_an_absolute_path_elsewhere_is_refused(worktree: Path) -> None:
    with pytest.raises(PathEscapeError) as caught:
        confine(worktree, str(worktree.parent / "outside" / "secret.txt"))
    assert "outside the worktree" in str(caught.value)


def test_symlinks_pointing_out_are_refused(worktree: Path) -> None:
    outside = worktree.parent / "outside"
    (worktree / "to_dir").symlink_to(outside)
    (worktree / "to_file").symlink_to(outside / "secret.txt")
    (worktree / "dangling").symlink_to(outside / "not-yet.txt")
    for requested in ("to_dir/secret.txt", "to_dir/new.txt", "to_file", "dangling"):
        with pytest.raises(PathEscapeError):
            confine(worktree, requested)


def test_symlinks_inside_are_followed(worktree: Path) -> None:
    (worktree / "alias").symlink_to(worktree / "src")
    assert confine(worktree, "alias/a.py") == worktree.resolve() / "src" / "a.py"


def test_a_symlinked_root_is_its_real_path(worktree: Path, tmp_path: Path) -> None:
    link = tmp_path / "link-to-wt"
    link.symlink_to(worktree)
    assert confine(link, str(worktree / "src" / "a.py")) == worktree.resolve() / "src" / "a.py"


def test_git_metadata_may_be_read_but_not_written(worktree: Path) -> None:
    assert confine(worktree, ".git") == worktree.resolve() / ".git"
    for requested in (".git", ".git/hooks/pre-commit", "src/.git/config", ".GIT", ".Git/config", "src/.gIt"):
        with pytest.raises(ProtectedPathError):
            confine(worktree, requested, for_write=True)


def test_write_text_creates_the_file_and_its_directories(worktree: Path) -> None:
    path = write_text(worktree, "deep/er/new.txt", "content\n")
    assert path == worktree.resolve() / "deep" / "er" / "new.txt"
    assert path.read_text() == "content\n"
    write_text(worktree, str(worktree / "src" / "a.py"), "replaced")
    assert (worktree / "src" / "a.py").read_text() == "replaced"


def test_write_text_through_an_escaping_symlink_writes_nothing(worktree: Path) -> None:
    outside = worktree.parent / "outside"
    (worktree / "to_file").symlink_to(outside / "secret.txt")
    (worktree / "dangling").symlink_to(outside / "created.txt")
    for requested in ("to_file", "dangling", "../outside/secret.txt"):
        with pytest.raises(PathEscapeError):
            write_text(worktree, requested, "pwned")
    assert (outside / "secret.txt").read_text() == "secret\n"
    assert not (outside / "created.txt").exists()


def test_read_text_whole_file_and_line_ranges(worktree: Path) -> None:
    assert read_text(worktree, "src/a.py") == "one\ntwo\nthree\n"
    assert read_text(worktree, "src/a.py", line=2) == "two\nthree\n"
    assert read_text(worktree, "src/a.py", line=2, limit=1) == "two\n"
    assert read_text(worktree, "src/a.py", limit=1) == "one\n"
    with pytest.raises(FileNotFoundError):
        read_text(worktree, "missing.txt")
    with pytest.raises(PathEscapeError):
        read_text(worktree, os.path.join("..", "outside", "secret.txt"))


def test_read_text_is_capped(worktree: Path) -> None:
    (worktree / "big.bin").write_bytes(b"x" * 11)
    assert read_text(worktree, "big.bin", max_bytes=11) == "x" * 11
    with pytest.raises(FileTooLargeError, match="larger than 10 bytes"):
        read_text(worktree, "big.bin", max_bytes=10)


@pytest.mark.parametrize("operation", ["read", "write"])
def test_a_directory_swapped_for_a_link_after_the_check_is_refused(
    worktree: Path, monkeypatch: pytest.MonkeyPatch, operation: str
) -> None:
    outside = worktree.parent / "outside"
    (worktree / "d").mkdir()
    (worktree / "d" / "secret.txt").write_text("inside\n")
    checked = confine_module.confine

    def swap_after_the_check(root: Path, requested: str, *, for_write: bool = False) -> Path:
        path = checked(root, requested, for_write=for_write)
        if requested == "d/secret.txt":  # the check before the open: the attacker wins the race
            shutil.rmtree(worktree / "d")
            (worktree / "d").symlink_to(outside)
        return path

    monkeypatch.setattr(confine_module, "confine", swap_after_the_check)
    with pytest.raises(PathEscapeError):
        if operation == "read":
            read_text(worktree, "d/secret.txt")
        else:
            write_text(worktree, "d/secret.txt", "pwned")
    assert (outside / "secret.txt").read_text() == "secret\n"


def test_a_final_link_swapped_in_after_the_check_is_not_followed(
    worktree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = worktree.parent / "outside" / "secret.txt"
    checked = confine_module.confine

    def swap_after_the_check(root: Path, requested: str, *, for_write: bool = False) -> Path:
        path = checked(root, requested, for_write=for_write)
        if requested == "src/a.py":
            (worktree / "src" / "a.py").unlink()
            (worktree / "src" / "a.py").symlink_to(outside)
        return path

    monkeypatch.setattr(confine_module, "confine", swap_after_the_check)
    with pytest.raises(OSError):
        read_text(worktree, "src/a.py")
