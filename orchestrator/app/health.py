"""A dispatcher's health port: ``GET /metrics`` (Prometheus text) and ``GET /health``, on 127.0.0.1.

``switchyard up`` serves both on the gateway's port; ``switchyard dispatcher`` has no gateway, so
``[dispatcher] health_port`` opens this small HTTP/1.1 server (one request per connection).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from http import HTTPStatus

import anyio
from anyio.abc import SocketStream, TaskStatus

from kernel import METRICS_CONTENT_TYPE, ConfigError, get_logger, render_metrics

log = get_logger("health")

LOOPBACK = "127.0.0.1"
REQUEST_LIMIT = 8192
REQUEST_TIMEOUT = 5.0

DatabaseOk = Callable[[], Awaitable[bool]]


async def serve_health(
    port: int, database_ok: DatabaseOk, *, task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled; ``task_status`` gets the metrics URL once it listens."""
    try:
        listener = await anyio.create_tcp_listener(local_host=LOOPBACK, local_port=port)
    except OSError as exc:
        raise ConfigError(
            "dispatcher.health_port", port, f"cannot listen on {LOOPBACK}:{port}: {exc.strerror}"
        ) from None
    bound = int(listener.extra(anyio.abc.SocketAttribute.local_port))  # noqa: S610 - not Django
    url = f"http://{LOOPBACK}:{bound}/metrics"
    log.info("health.listening", url=url)
    task_status.started(url)
    async with listener:
        await listener.serve(lambda stream: _answer(stream, database_ok))


async def _answer(stream: SocketStream, database_ok: DatabaseOk) -> None:
    async with stream:
        with anyio.move_on_after(REQUEST_TIMEOUT):
            request = b""
            try:
                while b"\r\n\r\n" not in request and len(request) < REQUEST_LIMIT:
                    request += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
            method, _, rest = request.partition(b" ")
            path = rest.partition(b" ")[0].split(b"?", 1)[0]
            status, content_type, body = await _route(method, path, database_ok)
            head = (
                f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await stream.send(head.encode() + body)


async def _route(method: bytes, path: bytes, database_ok: DatabaseOk) -> tuple[HTTPStatus, str, bytes]:
    if method != b"GET":
        return HTTPStatus.METHOD_NOT_ALLOWED, "text/plain", b"only GET\n"
    if path == b"/metrics":
        return HTTPStatus.OK, METRICS_CONTENT_TYPE, await render_metrics()
    if path == b"/health":
        if await database_ok():
            return HTTPStatus.OK, "text/plain", b"ok\n"
        return HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", b"database unavailable\n"
    return HTTPStatus.NOT_FOUND, "text/plain", b"not found (try /metrics or /health)\n"
