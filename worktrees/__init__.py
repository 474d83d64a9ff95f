"""Session worktrees: one git worktree per session, its diffs as pending changes, review, reaping.

Public API (see worktrees.manager for the dispatcher's two calls and the review operations).
"""

from __future__ import annotations

from worktrees.diff import Diff, FileChange
from worktrees.errors import (
    ApplyConflict,
    ChangeNotFound,
    ChangeNotPending,
    GitCommandFailed,
    NoWorktree,
    PathOutsideRoot,
    RestoreRefused,
    SessionNotFound,
    TurnRunning,
    UnknownFile,
    WorktreeBroken,
    WorktreeDirty,
    WorktreeError,
)
from worktrees.manager import Announce, PendingChange, Reaped, Resolution, Worktree, WorktreeManager
from worktrees.settings import WorktreeSettings
from worktrees.spares import Spare, SpareWarmer, SpareWorktrees, Taken, read_spare_status

__all__ = [
    "Announce",
    "ApplyConflict",
    "ChangeNotFound",
    "ChangeNotPending",
    "Diff",
    "FileChange",
    "GitCommandFailed",
    "NoWorktree",
    "PathOutsideRoot",
    "PendingChange",
    "Reaped",
    "Resolution",
    "RestoreRefused",
    "SessionNotFound",
    "Spare",
    "SpareWarmer",
    "SpareWorktrees",
    "Taken",
    "TurnRunning",
    "UnknownFile",
    "Worktree",
    "WorktreeBroken",
    "WorktreeDirty",
    "WorktreeError",
    "WorktreeManager",
    "WorktreeSettings",
    "read_spare_status",
]
