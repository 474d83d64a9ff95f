"""``[dispatcher]``: how many turns at once, leases, timeouts, retries, frame coalescing."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DispatcherSettings:
    worker_id: str = ""  # empty: <hostname>:<pid>
    max_concurrent_turns: int = 8
    poll_interval: float = 2.0
    lease_seconds: float = 30.0
    turn_timeout: float = 3600.0
    inactivity_timeout: float = 300.0
    shutdown_grace: float = 20.0
    retry_backoff: float = 2.0
    retry_backoff_max: float = 300.0
    # Deltas are batched this long before one session_events row is written.
    coalesce_ms: float = 5.0
    # Earlier complete messages of the session handed to a turn as Turn.history.
    history_messages: int = 50
    # Finalizing a turn (diff, messages, task state) gets this long afresh, whatever ended the turn.
    finalize_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.max_concurrent_turns < 1:
            raise ValueError("dispatcher.max_concurrent_turns must be at least 1")
        if self.poll_interval <= 0 or self.lease_seconds <= 0 or self.finalize_timeout <= 0:
            raise ValueError("dispatcher.poll_interval, lease_seconds and finalize_timeout must be positive")
        if self.history_messages < 0:
            raise ValueError("dispatcher.history_messages must not be negative")
