"""The services the CLI and the WebSocket gateway call: tasks, projects, review, agents."""

from __future__ import annotations

from orchestrator.services.agents import list_available_agents, probe_agents, sync_available_agents
from orchestrator.services.gateway_actions import OrchestratorActions
from orchestrator.services.projects import add_project, list_projects, resolve_project
from orchestrator.services.review import ReviewService, change_json, resolution_json
from orchestrator.services.tasks import Submitted, cancel_task, list_tasks, submit_task

__all__ = [
    "OrchestratorActions",
    "ReviewService",
    "Submitted",
    "add_project",
    "cancel_task",
    "change_json",
    "list_available_agents",
    "list_projects",
    "list_tasks",
    "probe_agents",
    "resolution_json",
    "resolve_project",
    "submit_task",
    "sync_available_agents",
]
