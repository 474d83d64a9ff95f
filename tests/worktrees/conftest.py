"""Real git repositories for the worktree tests, and rows that point at them."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.repos import sample_repo
from worktrees import WorktreeSettings


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return sample_repo(tmp_path / "project")


@pytest.fixture
def settings(tmp_path: Path) -> WorktreeSettings:
    return WorktreeSettings(root=tmp_path / "worktrees")
