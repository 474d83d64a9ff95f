"""The orchestrator's exception tree.

    SwitchyardError
    ├── ConfigError               bad configuration: names the key and the bad value
    ├── DatabaseError
    │   ├── DatabaseUnavailable   cannot connect to the configured database
    │   └── SchemaError           schema.sql missing, or the database is newer than this code
    ├── EmbeddedPostgresError
    │   ├── PostgresNotInstalled  no initdb/pg_ctl found
    │   └── PortInUse             the embedded cluster's port is taken
    ├── NotFound                  a project, session, task or change that does not exist
    └── TaskRejected              a task that cannot run as submitted (reason -> failure_reason)

The lower packages (backends, worktrees, ws_gateway) have roots of their own
(BackendError, WorktreeError, GatewayError); the orchestrator turns those into task
failure reasons or CLI messages at its boundary.
"""

from __future__ import annotations


class SwitchyardError(Exception):
    """Root of every error the orchestrator raises on purpose."""


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


class EmbeddedPostgresError(SwitchyardError):
    pass


class PostgresNotInstalled(EmbeddedPostgresError):
    pass


class PortInUse(EmbeddedPostgresError):
    pass


class NotFound(SwitchyardError):
    pass


class TaskRejected(SwitchyardError):
    """A task the dispatcher refuses to run; ``reason`` becomes tasks.failure_reason."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(message)
