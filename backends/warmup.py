"""A model endpoint that refuses every request at once, for pre-started agents' warm-up prompts.

A fresh ``opencode acp`` process pays about a second for the first prompt in a directory (its
tools, system prompt and provider, loaded lazily), on top of the directory's ``session/new``. A
pre-started agent (backends.acp_spares) pays both before a turn needs it, in the spare worktree
the next new session will take, by prompting a scratch session there with a model of its own
provider (:data:`WARMUP_PROVIDER`) whose base URL is this endpoint: opencode prepares the whole
request, sends it here and gets ``400`` back at once, so the user's model sees no request and no
token is spent. It listens on 127.0.0.1 only, reads at most :data:`MAX_REQUEST` bytes and answers
everything the same way.
"""

from __future__ import annotations

import contextlib
import json
from types import TracebackType

import anyio
import anyio.abc

from kernel import get_logger

log = get_logger("backends.warmup")

WARMUP_PROVIDER = "switchyard-warmup"
WARMUP_MODEL = "warm-up"
MAX_REQUEST = 4 * 2**20
READ_TIMEOUT = 10.0
_BODY = json.dumps(
    {"error": {"message": "Switchyard warm-up: this endpoint answers no request", "type": "invalid_request_error"}}
).encode()
_RESPONSE = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\n"
    + f"Content-Length: {len(_BODY)}\r\n\r\n".encode()
    + _BODY
)


def warmup_model_ref() -> str:
    return f"{WARMUP_PROVIDER}/{WARMUP_MODEL}"


class RefusingEndpoint:
    """``async with RefusingEndpoint() as endpoint``: ``endpoint.base_url`` refuses every request."""

    def __init__(self) -> None:
        self.base_url = ""
        self.requests = 0
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> RefusingEndpoint:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 (anyio's typed attribute)
        self.base_url = f"http://127.0.0.1:{port}/v1"
        # Left in reverse: the serving task is cancelled first, then the socket closed.
        self._stack.push_async_callback(listener.aclose)
        tg = await self._stack.enter_async_context(anyio.create_task_group())
        self._stack.callback(tg.cancel_scope.cancel)
        tg.start_soon(listener.serve, self._answer)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()

    async def _answer(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            with anyio.move_on_after(READ_TIMEOUT):
                try:
                    await _read_request(stream)
                    self.requests += 1
                    await stream.send(_RESPONSE)
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError, ValueError):
                    pass


async def _read_request(stream: anyio.abc.SocketStream) -> None:
    """Headers and the body its Content-Length announces (so the client is not cut off mid-send)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive()
        if len(data) > MAX_REQUEST:
            raise ValueError("request too large")
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip() or 0)
    if length > MAX_REQUEST:
        raise ValueError("request too large")
    while len(body) < length:
        body += await stream.receive()
