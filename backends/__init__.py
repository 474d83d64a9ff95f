"""Backends: every track behind one contract, ``await backend.run_turn(turn, emit) -> TurnOutcome``.

native (an OpenAI-compatible endpoint), acp and pty (a one-shot external agent), opencode_server
(a warm ``opencode serve`` pool) and noop; the agent registry, the permission policy, and the
confinement of agents to their worktree. Nothing here touches the database.
"""

from __future__ import annotations

from backends.acp import AcpBackend
from backends.acp_spares import AgentSpares
from backends.approval import (
    ALLOW_OPTION_KINDS,
    REJECT_OPTION_KINDS,
    ApprovalAnswer,
    ApprovalRequest,
    Asker,
    AskOption,
    QuestionAnswer,
    QuestionRequest,
    grant_covers,
    grant_patterns,
)
from backends.base import (
    CONTEXT_OVERFLOW,
    AgentAdvertised,
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
    BadAgentOptionError,
    BadModelError,
    OpencodeNotFoundError,
    OpencodeServerError,
    PathEscapeError,
    ProtectedPathError,
)
from backends.native import NativeBackend, NativeSettings, list_models
from backends.noop import NoopBackend
from backends.opencode_env import OpencodeSettings
from backends.opencode_pool import POOL_DIR, OpencodePool, OpencodePoolSettings, ProjectPlace, read_pool_status
from backends.opencode_server import OpencodeServerBackend
from backends.permissions import DEFAULT_ASK_TIMEOUT, PermissionOverride, PermissionPolicy
from backends.pty import PtyBackend
from backends.registry import PRESETS, AgentConfig, AgentProbe, AgentSpec, build_specs, executable, probe
from backends.sandbox import Sandbox, SandboxSettings, SandboxUnavailable

__all__ = [
    "ALLOW_OPTION_KINDS",
    "CONTEXT_OVERFLOW",
    "DEFAULT_ASK_TIMEOUT",
    "POOL_DIR",
    "PRESETS",
    "REJECT_OPTION_KINDS",
    "AcpBackend",
    "AgentAdvertised",
    "AgentCommands",
    "AgentConfig",
    "AgentConfigError",
    "AgentNotFoundError",
    "AgentProbe",
    "AgentSession",
    "AgentSpares",
    "AgentSpec",
    "ApprovalAnswer",
    "ApprovalRequest",
    "AskOption",
    "Asker",
    "Backend",
    "BackendError",
    "BackendEvent",
    "BadAgentOptionError",
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
    "PermissionOverride",
    "PermissionPolicy",
    "Plan",
    "ProjectPlace",
    "ProtectedPathError",
    "PtyBackend",
    "QuestionAnswer",
    "QuestionRequest",
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
    "executable",
    "grant_covers",
    "grant_patterns",
    "list_models",
    "probe",
    "read_pool_status",
]
