"""The worktrees package's exception tree; WorktreeError is its root.

WorktreeError
├── GitCommandFailed     a git command exited non-zero (command and stderr in the message)
├── PathOutsideRoot      a worktree path that resolves outside the managed root: never touched
├── WorktreeBroken       a directory is in the way and is not the session's worktree
├── NoWorktree           the session has no active worktree (ensure was not called)
├── WorktreeDirty        the reaper found changes that were never recorded: not removed
├── SessionNotFound
├── ChangeNotFound
├── ChangeNotPending     accept/reject of a change that is no longer open
├── UnknownFile          --file names a path that is not part of the change
├── TurnRunning          reject while a turn of the session is running
├── ApplyConflict        the change does not apply to the project checkout (left untouched)
└── RestoreRefused       reject cannot restore a path without clobbering something else
"""

from __future__ import annotations


class WorktreeError(Exception):
    """Root of every error the worktrees package raises on purpose."""


class GitCommandFailed(WorktreeError):
    def __init__(self, args: list[str], returncode: int, stderr: str) -> None:
        self.args_ = args
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"git {' '.join(args)} failed ({returncode}): {stderr.strip() or 'no message'}")


class PathOutsideRoot(WorktreeError):
    pass


class WorktreeBroken(WorktreeError):
    pass


class NoWorktree(WorktreeError):
    pass


class WorktreeDirty(WorktreeError):
    pass


class SessionNotFound(WorktreeError):
    pass


class ChangeNotFound(WorktreeError):
    pass


class ChangeNotPending(WorktreeError):
    pass


class UnknownFile(WorktreeError):
    pass


class TurnRunning(WorktreeError):
    pass


class ApplyConflict(WorktreeError):
    pass


class RestoreRefused(WorktreeError):
    pass
