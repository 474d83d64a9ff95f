"""The orchestrator's own leaves of the exception tree (the root is kernel.errors).

SwitchyardError
├── AlreadyRunning                a service already runs on this data directory
├── DatabaseError
│   └── EmbeddedPostgresError
│       ├── PostgresNotInstalled  no initdb/pg_ctl found
│       └── PortInUse             the embedded cluster's port is taken
├── NotFound                      a project, session, task or change that does not exist
├── InvalidProject                a path that cannot be registered as a project
├── InvalidReviewAction           a review request that does not hold together (action, mode, message)
├── UsageError                    command-line arguments that do not go together
├── TaskRejected                  a task that cannot run as submitted (reason -> failure_reason)
├── WorkerIdTaken                 another live process holds this worker id
├── BadInput                      a submitted value that cannot be used (an agent option, a reply's option)
├── AlreadyDecided                a reply to a request someone (or the timeout) decided first
└── ModelsUnavailable             the native endpoint did not give its model list
"""

from __future__ import annotations

from kernel import DatabaseError, SwitchyardError


class EmbeddedPostgresError(DatabaseError):
    pass


class PostgresNotInstalled(EmbeddedPostgresError):
    pass


class PortInUse(EmbeddedPostgresError):
    pass


class NotFound(SwitchyardError):
    pass


class InvalidProject(SwitchyardError):
    pass


class InvalidReviewAction(SwitchyardError):
    pass


class UsageError(SwitchyardError):
    pass


class TaskRejected(SwitchyardError):
    """A task the dispatcher refuses to run; ``reason`` becomes tasks.failure_reason."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(message)


class WorkerIdTaken(SwitchyardError):
    """Another live process holds this worker id (orchestrator.db.workers)."""


class WorkerIdLost(WorkerIdTaken):
    """This process's worker id was taken by another process while it could not reach the database."""


class AlreadyRunning(SwitchyardError):
    """A service already runs on this data directory (orchestrator.db.instance)."""


class BadInput(SwitchyardError):
    pass


class AlreadyDecided(SwitchyardError):
    pass


class ModelsUnavailable(SwitchyardError):
    pass
