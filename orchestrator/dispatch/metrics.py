"""The dispatch engine's Prometheus metrics (rendered by kernel.metrics).

``track`` is a turn's execution path (noop, native, acp, pty, opencode_server; ``none`` for a
task refused before it was routed); ``reason`` a failure reason as stored in the task row.
"""

from __future__ import annotations

import asyncpg
from prometheus_client import Counter, Gauge, Histogram

from kernel import METRIC_PREFIX as PREFIX
from orchestrator.dispatch.queue import queue_summary

# Seconds: a no-op claim takes about a millisecond, an agent turn minutes.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
DURATION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)

TASKS = Gauge(PREFIX + "tasks", "Tasks in the database by state (read at scrape time)", ["state"])
RUNNABLE = Gauge(PREFIX + "tasks_runnable", "Pending tasks whose not_before has passed (read at scrape time)")
CLAIM_LATENCY = Histogram(
    PREFIX + "claim_latency_seconds",
    "From a task's insert to its first claim",
    ["track"],
    buckets=LATENCY_BUCKETS,
)
TURN_DURATION = Histogram(
    PREFIX + "turn_duration_seconds",
    "From a turn's claim to its end written (prepare, execute, finalize)",
    ["track"],
    buckets=DURATION_BUCKETS,
)
RETRIES = Counter(PREFIX + "task_retries_total", "Turns that ended with their task back in the queue", ["reason"])
FAILURES = Counter(PREFIX + "task_failures_total", "Turns that ended with their task failed", ["reason"])
LEASE_RENEWALS_FAILED = Counter(
    PREFIX + "lease_renewals_failed_total", "Lease renewals of running turns that did not reach the database"
)
FENCED = Counter(
    PREFIX + "turns_fenced_total", "Turns stopped without writing more: lease_lost or lease_expired", ["why"]
)
RUNNING_TURNS = Gauge(PREFIX + "running_turns", "Turns this process is running now")
RECOVERED = Counter(PREFIX + "tasks_recovered_total", "Running tasks moved on after their dispatcher went away")


async def refresh_tasks(db: asyncpg.Pool) -> None:
    """Set ``switchyard_tasks`` from the database (the kernel.metrics refresher)."""
    summary = await queue_summary(db)
    for state, count in summary.states.items():
        TASKS.labels(state).set(count)
    RUNNABLE.set(summary.runnable)
