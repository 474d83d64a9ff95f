"""Frame types of the WebSocket protocol (docs/PROTOCOL.md describes each one).

Session frames are stored in ``session_events`` (``type`` + ``payload``) and sent to clients
as ``{"type": ..., "session_id": ..., "seq": ..., **payload}``. Connection frames (hello,
snapshot, error, pong, ...) are sent directly and never stored.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class SessionFrame(StrEnum):
    """Frames of a session, durable in session_events, replayable from any seq."""

    TASK_STATE = "task_state"
    MESSAGE_STARTED = "message_started"
    DELTA = "delta"
    REASONING_DELTA = "reasoning_delta"
    TOOL_CALL = "tool_call"
    AGENT_COMMANDS = "agent_commands"
    PLAN = "plan"
    PERMISSION = "permission"
    STATUS = "status"
    MESSAGE_COMPLETE = "message_complete"
    PENDING_CHANGE = "pending_change"


class ServerFrame(StrEnum):
    """Frames about the connection itself, never stored."""

    HELLO = "hello"
    SNAPSHOT = "snapshot"
    ERROR = "error"
    PONG = "pong"
    ACK = "ack"


def session_frame(session_id: int, seq: int, type_: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The wire form of one stored session event."""
    return {**payload, "type": type_, "session_id": session_id, "seq": seq}
