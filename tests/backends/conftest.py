"""Fixtures of the backends tests: every test must leave no process behind (autouse), and a
temporary git repository stands in for a session worktree."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.repos import git_repo
from tests.leftovers import no_leftovers


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    with no_leftovers():
        yield


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    """A git repository with one commit, standing in for a session worktree."""
    return git_repo(tmp_path / "worktree")
