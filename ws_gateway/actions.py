"""Client actions that change state, injected into the gateway.

The gateway authorizes every action (the token must see the project of the task, change or
session) and then calls an implementation of :class:`GatewayActions`; the orchestrator's
``orchestrator.gateway_actions`` adapts its task and review services to it, so a WebSocket
``submit`` or ``review`` does exactly what the CLI does. An implementation refuses with
:class:`ws_gateway.errors.ActionRejected`; the client gets an ``error`` frame with its code.
Results are JSON-ready dicts sent back in the ``ack`` frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

ReviewAction = Literal["accept", "reject"]
REVIEW_ACTIONS: tuple[ReviewAction, ...] = ("accept", "reject")


@dataclass(frozen=True)
class TaskSubmission:
    """A task to insert: the one description shared by the CLI, the gateway and
    ``orchestrator.tasks.submit_task`` (which makes the same INSERT an SQL submitter does).
    Over WebSocket the gateway resolves and authorizes ``project_id`` first."""

    project_id: int
    input: str
    session_id: int | None = None
    agent: str | None = None
    model: str | None = None
    mode_id: str | None = None
    priority: int = 0
    max_attempts: int = 3
    expires_at: datetime | None = None
    dispatch_key: str | None = None
    parent_task_id: int | None = None


class GatewayActions(Protocol):
    async def submit(self, request: TaskSubmission) -> dict[str, Any]:
        """Insert the task; returns at least ``task_id`` and ``created`` (False: dispatch_key seen)."""
        ...

    async def cancel(self, task_id: int) -> dict[str, Any]:
        """Request cancellation; returns at least ``task_id`` and ``state``."""
        ...

    async def review(self, change_id: int, action: str, files: tuple[str, ...] | None, by: str) -> dict[str, Any]:
        """Accept or reject a pending change (optionally only ``files``); returns its new ``status``."""
        ...

    async def get_diff(self, change_id: int) -> dict[str, Any]:
        """The change's ``diff``, ``files``, ``status`` and ``truncated`` flag."""
        ...
