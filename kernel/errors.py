"""The one exception tree of Switchyard: every error raised on purpose is a SwitchyardError.

    SwitchyardError
    ├── ConfigError              bad configuration: names the key and the bad value
    ├── DatabaseError
    │   ├── DatabaseUnavailable  cannot connect to the database, or lost the connection
    │   └── SchemaError          schema.sql missing, or the database is newer than this code
    ├── BackendError             an agent or model backend failed   (leaves: backends.errors)
    ├── WorktreeError            a session worktree or review failed (leaves: worktrees.errors)
    └── GatewayError             a WebSocket client's request failed (leaves: ws_gateway.errors)

The orchestrator's own leaves (NotFound, TaskRejected, the embedded cluster's errors) are in
orchestrator.errors. The CLI catches SwitchyardError alone and prints it as one line.
"""

from __future__ import annotations


class SwitchyardError(Exception):
    """Root of every error Switchyard raises on purpose."""


class ConfigError(SwitchyardError):
    def __init__(self, key: str, value: object, reason: str) -> None:
        self.key = key
        self.value = value
        self.reason = reason
        super().__init__(f"config {key}={value!r}: {reason}")


class DatabaseError(SwitchyardError):
    pass


class DatabaseUnavailable(DatabaseError):
    pass


class SchemaError(DatabaseError):
    pass


class BackendError(SwitchyardError):
    """Root of every error a backend raises on purpose."""


class WorktreeError(SwitchyardError):
    """Root of every error the worktrees package raises on purpose."""


class GatewayError(SwitchyardError):
    """Root of every error the gateway raises on purpose."""
