"""Backing off after failures: every loop that must outlive a restarting database uses this."""

from __future__ import annotations


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
