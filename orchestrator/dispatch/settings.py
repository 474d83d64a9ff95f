"""``[dispatcher]``: how many turns at once, leases, timeouts, retries, frame coalescing."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DispatcherSettings:
    # Empty: derived from the host and the data directory (see orchestrator.db.workers); set, it is
    # used as it is, and a second live process with the same id refuses to start.
    worker_id: str = ""
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
    # The worktree snapshot in finalize may take this long (less than finalize_timeout); longer,
    # and the turn fails with diff_timeout instead of being retried as a new attempt.
    # Unset: two thirds of finalize_timeout.
    snapshot_timeout: float | None = None
    # A turn stops (fenced) when its lease was not renewed for lease_seconds - lease_margin: the
    # margin is the time its backend gets to stop before another dispatcher may recover the task.
    # Unset: a third of lease_seconds.
    lease_margin: float | None = None
    # Waiting for a free connection of the dispatcher's pool gives up after this long.
    acquire_timeout: float = 10.0
    # A task whose agent no live node runs waits this long (tasks.waiting_for says why), then is
    # claimed by any node and fails agent_unavailable.
    unclaimable_after: float = 600.0
    # Serve /metrics and /health on 127.0.0.1 at this port (0: any free port; unset: none).
    health_port: int | None = None

    def __post_init__(self) -> None:
        if self.max_concurrent_turns < 1:
            raise ValueError("dispatcher.max_concurrent_turns must be at least 1")
        if self.poll_interval <= 0 or self.lease_seconds <= 0 or self.finalize_timeout <= 0:
            raise ValueError("dispatcher.poll_interval, lease_seconds and finalize_timeout must be positive")
        if self.history_messages < 0:
            raise ValueError("dispatcher.history_messages must not be negative")
        if not 0 <= self.fence_margin < self.lease_seconds:
            raise ValueError("dispatcher.lease_margin must be at least 0 and less than lease_seconds")
        if not 0 < self.snapshot_limit < self.finalize_timeout:
            raise ValueError("dispatcher.snapshot_timeout must be positive and less than finalize_timeout")
        if self.acquire_timeout <= 0:
            raise ValueError("dispatcher.acquire_timeout must be positive")

    @property
    def fence_margin(self) -> float:
        return self.lease_seconds / 3 if self.lease_margin is None else self.lease_margin

    @property
    def snapshot_limit(self) -> float:
        return self.finalize_timeout * 2 / 3 if self.snapshot_timeout is None else self.snapshot_timeout
