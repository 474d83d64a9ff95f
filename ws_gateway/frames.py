"""Server → client frames of the WebSocket protocol (docs/PROTOCOL.md describes each one).

Session frames are the rows of the durable event log (kernel.eventlog: their types and payload
shapes) sent as ``{"type": ..., "session_id": ..., "seq": ..., **payload}``. Connection frames
(hello, snapshot, ack, error, pong) are about one connection, sent directly and never stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, TypedDict

from ws_gateway.protocol import RequestId


class ServerFrame(StrEnum):
    """Frames about the connection itself, never stored."""

    HELLO = "hello"
    SNAPSHOT = "snapshot"
    ERROR = "error"
    PONG = "pong"
    ACK = "ack"


class TokenInfo(TypedDict):
    name: str
    project_ids: list[int] | None


class Limits(TypedDict):
    max_frame_bytes: int
    send_queue_frames: int
    max_subscriptions: int
    requests_per_second: float


class HelloFrame(TypedDict):
    type: str
    protocol: int
    token: TokenInfo
    limits: Limits


class SnapshotFrame(TypedDict):
    type: str
    session_id: int
    last_seq: int
    session: dict[str, Any]
    messages: list[dict[str, Any]]
    tasks: list[dict[str, Any]]
    pending_change: dict[str, Any] | None
    # Permission requests and questions waiting for a person.
    open_requests: list[dict[str, Any]]


class ErrorFrame(TypedDict):
    type: str
    id: RequestId | None
    code: str
    message: str


class PongFrame(TypedDict):
    type: str
    id: RequestId | None


def session_frame(session_id: int, seq: int, type_: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The wire form of one stored session event."""
    return {**payload, "type": type_, "session_id": session_id, "seq": seq}
