"""The backends package's leaves of the exception tree; their branch is kernel.errors.BackendError."""

from __future__ import annotations

from kernel import BackendError, ConfigError

__all__ = [
    "AgentConfigError",
    "AgentNotFoundError",
    "BackendError",
    "BadAgentOptionError",
    "BadModelError",
    "OpencodeNotFoundError",
    "OpencodeServerError",
    "PathEscapeError",
    "ProtectedPathError",
]


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


class AgentConfigError(ConfigError):
    """An ``[agents.<name>]`` definition is incomplete or invalid; ``key`` names the setting."""


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


class BadAgentOptionError(BackendError):
    """A task asks for an agent option its agent does not offer (or a value it does not accept)."""
