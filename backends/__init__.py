"""Backends: every track behind one contract, ``await backend.run_turn(turn, emit) -> TurnOutcome``.

native (an OpenAI-compatible endpoint), acp and pty (a one-shot external agent), opencode_server
(a warm ``opencode serve`` pool) and noop; the agent registry, the permission policy, and the
confinement of agents to their worktree. Nothing here touches the database.
"""

from __future__ import annotations

from backends.acp import AcpBackend
from backends.base import (
    AgentCommands,
    AgentSession,
    Backend,
    BackendEvent,
    Emit,
    HistoryMessage,
    OutcomeStatus,
    PermissionDecision,
    Plan,
    ReasoningDelta,
    Status,
    TextDelta,
    ToolCall,
    ToolStatus,
    Turn,
    TurnOutcome,
    Usage,
)
from backends.errors import (
    AgentConfigError,
    AgentNotFoundError,
    BackendError,
    BadModelError,
    OpencodeNotFoundError,
    OpencodeServerError,
    PathEscapeError,
    ProtectedPathError,
)
from backends.native import NativeBackend, NativeSettings, list_models
from backends.noop import NoopBackend
from backends.opencode_env import OpencodeSettings
from backends.opencode_pool import POOL_DIR, OpencodePool, OpencodePoolSettings, read_pool_status
from backends.opencode_server import OpencodeServerBackend
from backends.permissions import PermissionPolicy
from backends.pty import PtyBackend
from backends.registry import PRESETS, AgentConfig, AgentProbe, AgentSpec, build_specs, probe
from backends.sandbox import Sandbox, SandboxSettings, SandboxUnavailable

__all__ = [
    "POOL_DIR",
    "PRESETS",
    "AcpBackend",
    "AgentCommands",
    "AgentConfig",
    "AgentConfigError",
    "AgentNotFoundError",
    "AgentProbe",
    "AgentSession",
    "AgentSpec",
    "Backend",
    "BackendError",
    "BackendEvent",
    "BadModelError",
    "Emit",
    "HistoryMessage",
    "NativeBackend",
    "NativeSettings",
    "NoopBackend",
    "OpencodeNotFoundError",
    "OpencodePool",
    "OpencodePoolSettings",
    "OpencodeServerBackend",
    "OpencodeServerError",
    "OpencodeSettings",
    "OutcomeStatus",
    "PathEscapeError",
    "PermissionDecision",
    "PermissionPolicy",
    "Plan",
    "ProtectedPathError",
    "PtyBackend",
    "ReasoningDelta",
    "Sandbox",
    "SandboxSettings",
    "SandboxUnavailable",
    "Status",
    "TextDelta",
    "ToolCall",
    "ToolStatus",
    "Turn",
    "TurnOutcome",
    "Usage",
    "build_specs",
    "list_models",
    "probe",
    "read_pool_status",
]
