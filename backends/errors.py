"""The backends package's exception tree; BackendError is its root."""

from __future__ import annotations


class BackendError(Exception):
    """Root of every error a backend raises on purpose."""


class OpencodeNotFoundError(BackendError):
    """The opencode executable is not configured, not on PATH and not in the project's .tools/."""


class OpencodeServerError(BackendError):
    """An ``opencode serve`` process failed to start, stopped answering or went away.

    ``status`` is the HTTP status of an answer the server did give (None: no answer).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AgentNotFoundError(BackendError):
    """An external agent's executable does not exist or is not executable."""


class AgentConfigError(BackendError):
    """An ``[agents.<name>]`` definition is incomplete or invalid; ``key`` names the setting."""

    def __init__(self, key: str, value: object, reason: str) -> None:
        self.key = key
        self.value = value
        self.reason = reason
        super().__init__(f"{key}={value!r}: {reason}")


class PathEscapeError(BackendError):
    """A path an agent asked for resolves (symlinks followed) outside the directory it is confined to."""

    def __init__(self, requested: str, root: str) -> None:
        self.requested = requested
        self.root = root
        super().__init__(f"path {requested!r} is outside the worktree {root}")


class ProtectedPathError(BackendError):
    """A path inside the worktree that agents may not write (the git metadata)."""


class FileTooLargeError(BackendError):
    """A file an agent asked to read is larger than the cap."""


class BadModelError(BackendError):
    """A task asks for a model or a mode its agent cannot be given."""
