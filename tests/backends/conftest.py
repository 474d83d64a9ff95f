"""Fixtures of the backends tests: every test must leave no process behind (autouse), and a
temporary git repository stands in for a session worktree."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.leftovers import no_leftovers


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    with no_leftovers():
        yield


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    """A git repository with one commit, standing in for a session worktree."""
    path = tmp_path / "worktree"
    path.mkdir()
    identity = ["-c", "user.name=Test", "-c", "user.email=test@example.invalid"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    (path / "README.md").write_text("# demo\n")
    subprocess.run(["git", "-C", str(path), *identity, "add", "."], check=True)
    subprocess.run(["git", "-C", str(path), *identity, "commit", "-qm", "init"], check=True)
    return path
