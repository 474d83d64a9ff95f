"""The worktrees package's leaves of the exception tree; their branch is kernel.errors.WorktreeError.

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
├── RestoreRefused       reject cannot restore a path without clobbering something else
├── UnknownHunk          --hunk names a hunk the file's patch does not have
├── CheckoutBusy         accept as a commit while the checkout has a merge, rebase, cherry-pick or
│                        staged changes of its own, or no branch checked out
├── BadBranch            accept onto a branch that cannot be used (invalid name, checked out, Switchyard's)
├── InvalidComment       a comment on a file or line the change does not have
├── NoComments           request_changes with no open comment and no message
├── NothingToRebase      the checkout's HEAD is the session's base already
├── UnresolvedConflicts  accept of a change whose worktree still has a rebase's conflict markers
└── NoConflicts          resolve_with_agent for a change a rebase left without conflicts
"""

from __future__ import annotations

from kernel import WorktreeError

__all__ = [
    "ApplyConflict",
    "BadBranch",
    "ChangeNotFound",
    "ChangeNotPending",
    "CheckoutBusy",
    "GitCommandFailed",
    "InvalidComment",
    "NoComments",
    "NoConflicts",
    "NoWorktree",
    "NothingToRebase",
    "PathOutsideRoot",
    "RestoreRefused",
    "SessionNotFound",
    "TurnRunning",
    "UnknownFile",
    "UnknownHunk",
    "UnresolvedConflicts",
    "WorktreeBroken",
    "WorktreeDirty",
    "WorktreeError",
]


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


class NoCheckout(WorktreeError):
    """The operation needs the project's local checkout and the project has only a remote."""


class RemoteUnavailable(WorktreeError):
    """The project's remote could not be fetched from or pushed to, or lacks a session's commits."""


class WorktreeElsewhere(WorktreeError):
    """The session's worktree is on another node's disk."""


class UnknownHunk(WorktreeError):
    pass


class CheckoutBusy(WorktreeError):
    pass


class BadBranch(WorktreeError):
    pass


class InvalidComment(WorktreeError):
    pass


class NoComments(WorktreeError):
    pass


class NothingToRebase(WorktreeError):
    pass


class UnresolvedConflicts(WorktreeError):
    pass


class NoConflicts(WorktreeError):
    pass
