"""Frame types of the WebSocket protocol (docs/PROTOCOL.md describes each one).

Session frames are stored in ``session_events`` (``type`` + ``payload``) and sent to clients
as ``{"type": ..., "session_id": ..., "seq": ..., **payload}``. Connection frames (hello,
snapshot, error, pong, ...) are sent directly and never stored.

Session frame payloads (besides type, session_id, seq):

    task_state        {task_id, state, attempt, failure_reason?, error?}
    message_started   {message_id, task_id, role: "assistant"}
    delta             {message_id, text}
    reasoning_delta   {message_id, text}
    tool_call         {message_id, tool_call_id, name, kind, status, input, output, locations}
    agent_commands    {message_id, commands: [{name, description, input?}]}
    plan              {message_id, entries: [{content, priority, status}]}
    permission        {message_id, tool_call_id, permission, decision: allowed|denied|cancelled, reason}
    status            {message_id, state, detail}
    message_complete  {message_id, task_id, status, stop_reason, prompt_tokens, completion_tokens, error?}
    pending_change    {change_id, task_id, status, base_commit, files, truncated, error?}
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
