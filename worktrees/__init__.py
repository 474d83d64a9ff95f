"""Session worktrees: one git worktree per session, its diffs as pending changes, review, reaping.

Public API (see worktrees.manager for the dispatcher's two calls and the review operations).
"""

from __future__ import annotations

from worktrees.comments import Comment
from worktrees.diff import Diff, FileChange
from worktrees.errors import (
    ApplyConflict,
    BadBranch,
    ChangeNotFound,
    ChangeNotPending,
    CheckoutBusy,
    GitCommandFailed,
    InvalidComment,
    NoCheckout,
    NoComments,
    NoConflicts,
    NothingToRebase,
    NoWorktree,
    PathOutsideRoot,
    RemoteUnavailable,
    RestoreRefused,
    SessionNotFound,
    TurnRunning,
    UnknownFile,
    UnknownHunk,
    UnresolvedConflicts,
    WorktreeBroken,
    WorktreeDirty,
    WorktreeElsewhere,
    WorktreeError,
)
from worktrees.hunks import HunkInfo, with_hunks
from worktrees.manager import (
    ACCEPT_MODES,
    AcceptMode,
    Announce,
    Delivery,
    PendingChange,
    Reaped,
    Resolution,
    Worktree,
    WorktreeManager,
)
from worktrees.remote import reachable as remote_reachable
from worktrees.settings import WorktreeSettings
from worktrees.spares import Spare, SpareWarmer, SpareWorktrees, Taken, read_spare_status

__all__ = [
    "ACCEPT_MODES",
    "AcceptMode",
    "Announce",
    "ApplyConflict",
    "BadBranch",
    "ChangeNotFound",
    "ChangeNotPending",
    "CheckoutBusy",
    "Comment",
    "Delivery",
    "Diff",
    "FileChange",
    "GitCommandFailed",
    "HunkInfo",
    "InvalidComment",
    "NoCheckout",
    "NoComments",
    "NoConflicts",
    "NoWorktree",
    "NothingToRebase",
    "PathOutsideRoot",
    "PendingChange",
    "Reaped",
    "RemoteUnavailable",
    "Resolution",
    "RestoreRefused",
    "SessionNotFound",
    "Spare",
    "SpareWarmer",
    "SpareWorktrees",
    "Taken",
    "TurnRunning",
    "UnknownFile",
    "UnknownHunk",
    "UnresolvedConflicts",
    "Worktree",
    "WorktreeBroken",
    "WorktreeDirty",
    "WorktreeElsewhere",
    "WorktreeError",
    "WorktreeManager",
    "WorktreeSettings",
    "read_spare_status",
    "remote_reachable",
    "with_hunks",
]
