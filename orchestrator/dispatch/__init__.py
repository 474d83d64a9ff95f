"""The dispatch engine: claim a task, run it as one turn, finalize it (prepare → execute → finalize)."""

from __future__ import annotations

from orchestrator.dispatch.dispatcher import Dispatcher
from orchestrator.dispatch.metrics import refresh_tasks
from orchestrator.dispatch.queue import ClaimedTask, QueueSummary, queue_summary
from orchestrator.dispatch.routing import NATIVE, NOOP, Router
from orchestrator.dispatch.settings import DispatcherSettings

__all__ = [
    "NATIVE",
    "NOOP",
    "ClaimedTask",
    "Dispatcher",
    "DispatcherSettings",
    "QueueSummary",
    "Router",
    "queue_summary",
    "refresh_tasks",
]
