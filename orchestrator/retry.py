"""Backing off after failures, and which database errors are worth waiting out.

The dispatcher's loops (LISTEN, claiming, leases, finalizing a turn) keep going for as long as
the service runs; when PostgreSQL restarts or a connection drops they wait a growing delay and
try again instead of giving up.
"""

from __future__ import annotations

import asyncpg

from orchestrator.errors import DatabaseUnavailable
from orchestrator.logs import EventLogger

# The server went away or is starting/stopping; the same request can succeed later.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now
    # asyncpg's protocol state after the server dropped the connection mid-query.
    asyncpg.InternalClientError,
    DatabaseUnavailable,
)
# What a loop that must never die catches: the above plus any error PostgreSQL reports.
DATABASE_ERRORS: tuple[type[Exception], ...] = (*CONNECTION_ERRORS, asyncpg.PostgresError)


def report(log: EventLogger, event: str, exc: Exception, **fields: object) -> None:
    """A failure a loop survives: database trouble as a warning, anything else with its traceback."""
    if isinstance(exc, DATABASE_ERRORS):
        log.warning(event, error=exc, **fields)
    else:
        log.exception(event, error=exc, **fields)


def exponential(attempt: int, base: float, cap: float) -> float:
    """``base * 2**(attempt-1)``, at most ``cap``; attempt 1 waits ``base``."""
    return float(min(cap, base * 2 ** max(0, attempt - 1)))


class Backoff:
    """Delays for consecutive failures: base, 2*base, 4*base, ... up to cap; reset on success."""

    def __init__(self, base: float, cap: float) -> None:
        self._base = base
        self._cap = cap
        self.failures = 0

    def next(self) -> float:
        self.failures += 1
        return exponential(self.failures, self._base, self._cap)

    def reset(self) -> None:
        self.failures = 0
