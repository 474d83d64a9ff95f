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
    NoCheckout,
    NoWorktree,
    PathOutsideRoot,
    RemoteUnavailable,
    RestoreRefused,
    SessionNotFound,
    TurnRunning,
    UnknownFile,
    WorktreeBroken,
    WorktreeDirty,
    WorktreeElsewhere,
    WorktreeError,
)
from worktrees.manager import Announce, PendingChange, Reaped, Resolution, Worktree, WorktreeManager
from worktrees.settings import WorktreeSettings

__all__ = [
    "Announce",
    "ApplyConflict",
    "ChangeNotFound",
    "ChangeNotPending",
    "Diff",
    "FileChange",
    "GitCommandFailed",
    "NoCheckout",
    "NoWorktree",
    "PathOutsideRoot",
    "PendingChange",
    "Reaped",
    "RemoteUnavailable",
    "Resolution",
    "RestoreRefused",
    "SessionNotFound",
    "TurnRunning",
    "UnknownFile",
    "Worktree",
    "WorktreeBroken",
    "WorktreeDirty",
    "WorktreeElsewhere",
    "WorktreeError",
    "WorktreeManager",
    "WorktreeSettings",
]
