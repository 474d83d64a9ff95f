"""WebSocket clients for tests: real connections to a gateway, frames read with a timeout."""

from __future__ import annotations

import json
import weakref
from collections import deque
from typing import Any

import anyio
from websockets.asyncio.client import ClientConnection, connect

RECV_TIMEOUT_S = 20.0

# Frames a request() read past while waiting for its reply, for the next recv() of that client.
_held: weakref.WeakKeyDictionary[ClientConnection, deque[dict[str, Any]]] = weakref.WeakKeyDictionary()


def open_client(url: str, token: str | None = None, **kwargs: Any) -> Any:
    """A real WebSocket client; the token goes in the Authorization header."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return connect(url, additional_headers=headers, open_timeout=RECV_TIMEOUT_S, **kwargs)


async def recv(ws: ClientConnection) -> dict[str, Any]:
    """The client's next frame, in the order the server sent it."""
    held = _held.get(ws)
    if held:
        return held.popleft()
    return await _read(ws)


async def _read(ws: ClientConnection) -> dict[str, Any]:
    with anyio.fail_after(RECV_TIMEOUT_S):
        frame: dict[str, Any] = json.loads(await ws.recv())
    return frame


async def recv_until(ws: ClientConnection, type_: str) -> dict[str, Any]:
    while True:
        frame = await recv(ws)
        if frame["type"] == type_:
            return frame


async def request(ws: ClientConnection, frame: dict[str, Any]) -> dict[str, Any]:
    """Send a frame and return its reply (ack, error or pong); frames that arrive before the reply
    are kept for the next recv()."""
    await ws.send(json.dumps(frame))
    held = _held.setdefault(ws, deque())
    while True:
        reply = await _read(ws)
        if reply["type"] in ("ack", "error", "pong") and reply.get("id") == frame.get("id"):
            return reply
        held.append(reply)


async def session_frames(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    """The next ``count`` session frames (frames that carry a seq)."""
    frames: list[dict[str, Any]] = []
    while len(frames) < count:
        frame = await recv(ws)
        if "seq" in frame:
            frames.append(frame)
    return frames
