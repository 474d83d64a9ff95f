"""The WebSocket gateway: authenticated, durable, replayable session frames (docs/PROTOCOL.md)."""

from __future__ import annotations

from ws_gateway.actions import (
    PERMISSION_DECISIONS,
    REVIEW_ACTIONS,
    AgentInfo,
    AgentTask,
    CancelResult,
    ChangeInfo,
    ChangeList,
    ChangesRequested,
    CommentInfo,
    CommentRequest,
    DiffInfo,
    GatewayActions,
    LiveDiffInfo,
    ModelList,
    PermissionReplyResult,
    QuestionReplyResult,
    ResolutionInfo,
    ReviewAction,
    ReviewRequest,
    SubmitResult,
    TaskSubmission,
)
from ws_gateway.auth import TokenAccess, create_token, hash_token, list_tokens, revoke_token, verify_token
from ws_gateway.errors import ActionRejected, GatewayError, InvalidFrame, MalformedFrame, UnknownProject
from ws_gateway.server import Gateway
from ws_gateway.settings import GatewaySettings

__all__ = [
    "PERMISSION_DECISIONS",
    "REVIEW_ACTIONS",
    "ActionRejected",
    "AgentInfo",
    "AgentTask",
    "CancelResult",
    "ChangeInfo",
    "ChangeList",
    "ChangesRequested",
    "CommentInfo",
    "CommentRequest",
    "DiffInfo",
    "Gateway",
    "GatewayActions",
    "GatewayError",
    "GatewaySettings",
    "InvalidFrame",
    "LiveDiffInfo",
    "MalformedFrame",
    "ModelList",
    "PermissionReplyResult",
    "QuestionReplyResult",
    "ResolutionInfo",
    "ReviewAction",
    "ReviewRequest",
    "SubmitResult",
    "TaskSubmission",
    "TokenAccess",
    "UnknownProject",
    "create_token",
    "hash_token",
    "list_tokens",
    "revoke_token",
    "verify_token",
]
