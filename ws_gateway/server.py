"""The WebSocket gateway: authenticated subscriptions to sessions, replay, client actions.

One :class:`Gateway` per process serves ``ws://host:port/ws`` and ``GET /health`` on the same
port, and the review page (``GET /``, ws_gateway.web). Each connection is authenticated once
(a token in ``Authorization: Bearer``, ``?token=`` or a first ``auth`` frame; missing or
invalid closes with 4401), then runs three tasks: receive and answer
client frames one at a time, replay subscriptions that are behind, and write the bounded
send queue to the socket. The frame protocol is documented in docs/PROTOCOL.md.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import asyncpg
from anyio.abc import TaskStatus
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from kernel import DATABASE_ERRORS, VALUE_REFUSED, connect, get_logger, render_metrics
from ws_gateway import auth, metrics, signin, web
from ws_gateway import queries as q
from ws_gateway.actions import GatewayActions, TaskSubmission
from ws_gateway.discovery import Discovery, ProjectHub, ProjectSubscriber
from ws_gateway.errors import ActionRejected, InvalidFrame, MalformedFrame, PortUnavailable
from ws_gateway.frames import ServerFrame, SnapshotFrame
from ws_gateway.protocol import (
    Auth,
    Cancel,
    ClientFrame,
    Comment,
    DiscoveryFrame,
    GetDiff,
    ListAgents,
    ListChanges,
    ListModels,
    ListProjects,
    ListSessions,
    ListTasks,
    PermissionReply,
    Ping,
    QuestionReply,
    Rebase,
    RequestChanges,
    RequestId,
    ResolveWithAgent,
    Review,
    Submit,
    Subscribe,
    SubscribeProject,
    Unsubscribe,
    UnsubscribeProject,
    encode_frame,
    parse_client_frame,
)
from ws_gateway.reviewing import Reviewing
from ws_gateway.settings import GatewaySettings
from ws_gateway.snapshot import read_snapshot
from ws_gateway.subscriptions import ClientFeed, Hub

log = get_logger("gateway")

PROTOCOL_VERSION = 1
LISTEN_SETTINGS = {"application_name": "switchyard-gateway-listen"}
WS_PATH = "/ws"
HEALTH_PATH = "/health"
METRICS_PATH = "/metrics"
HEALTH_TIMEOUT_S = 2.0

# Close codes (RFC 6455 and the 4000-4999 range for applications).
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_UNAUTHORIZED = 4401
MAX_CLOSE_REASON_BYTES = 123


def request_token(request: Request) -> str | None:
    """The token from ``Authorization: Bearer <token>``, else from ``?token=``."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    tokens = parse_qs(urlsplit(request.path).query).get("token")
    return tokens[0] if tokens else None


class RequestBudget:
    """Token bucket: a client may send ``burst`` frames at once and ``rate`` per second after."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._allowance = float(burst)
        self._stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._allowance = min(self._burst, self._allowance + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._allowance < 1:
            return False
        self._allowance -= 1
        return True


class Gateway:
    """The WebSocket server of one process; state-changing actions come from ``actions``.

    ``pool`` connections must decode json/jsonb to Python objects (kernel.create_pool does);
    the LISTEN connection is a connection of its own to ``database_url``.
    """

    def __init__(
        self, settings: GatewaySettings, pool: asyncpg.Pool, actions: GatewayActions, database_url: str
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.actions = actions
        listen = partial(connect, database_url, server_settings=LISTEN_SETTINGS)
        self.hub = Hub(pool, settings, listen)
        self.projects = ProjectHub(pool, settings, listen)
        self.assets = web.WebAssets(Path(settings.vendor_dir) if settings.vendor_dir else None)
        self.port = settings.port
        self.clients: set[ClientConnection] = set()

    @property
    def url(self) -> str:
        return f"ws://{self.settings.host}:{self.port}{WS_PATH}"

    @property
    def metrics_url(self) -> str:
        return f"http://{web.own_host(self.settings.host)}:{self.port}{METRICS_PATH}"

    @property
    def page_url(self) -> str:
        """The review page (its origin is always allowed to open the WebSocket)."""
        return f"http://{web.own_host(self.settings.host)}:{self.port}/"

    async def serve(self, *, task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``task_status`` gets the URL once clients can connect."""
        settings = self.settings
        async with anyio.create_task_group() as tg:
            await tg.start(self.hub.run)
            await tg.start(self.projects.run)
            tg.start_soon(self._close_revoked)
            try:
                server = await serve(
                    self._handle,
                    settings.host,
                    settings.port,
                    process_request=self._process_request,
                    compression="deflate" if settings.compression else None,
                    max_size=settings.max_frame_bytes,
                    ping_interval=settings.ping_interval or None,
                    ping_timeout=settings.ping_interval or None,
                    close_timeout=settings.close_timeout,
                )
            except OSError as exc:
                raise PortUnavailable(
                    f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}; set gateway.port "
                    "(SWITCHYARD__GATEWAY__PORT) to a free port, or stop whatever listens there"
                ) from None
            try:
                self.port = server.sockets[0].getsockname()[1]
                log.info("gateway.listening", url=self.url)
                task_status.started(self.url)
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    server.close()
                    with anyio.move_on_after(settings.close_timeout + 1):
                        await server.wait_closed()
                tg.cancel_scope.cancel()

    async def _close_revoked(self) -> None:
        """Every ``poll_interval``, one query for all live tokens; revoked ones lose their connections."""
        while True:
            await anyio.sleep(self.settings.poll_interval)
            token_ids = sorted({client.access.token_id for client in self.clients})
            if not token_ids:
                continue
            try:
                revoked = await auth.revoked_among(self.pool, token_ids)
            except DATABASE_ERRORS:
                continue  # the database is away; clients are closed by their own loops then
            for client in [c for c in self.clients if c.access.token_id in revoked]:
                client.stop(CLOSE_UNAUTHORIZED, "token revoked")

    async def database_ok(self) -> bool:
        try:
            with anyio.fail_after(HEALTH_TIMEOUT_S):
                await self.pool.fetchval("SELECT 1")
        except DATABASE_ERRORS:
            return False
        return True

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == METRICS_PATH:
            return connection.respond(HTTPStatus.OK, (await render_metrics()).decode())
        if path == HEALTH_PATH:
            if await self.database_ok():
                return connection.respond(HTTPStatus.OK, "ok\n")
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "database unavailable\n")
        if path != WS_PATH:
            return await web.respond(self.assets, self.settings, self.port, request, path)
        if not web.origin_allowed(self.settings, self.port, request):
            return connection.respond(HTTPStatus.FORBIDDEN, "origin not allowed; see gateway.allowed_origins\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        token = None if ws.request is None else request_token(ws.request)
        if token is None:
            token = await signin.first_frame_token(ws, self.settings.auth_timeout)
        try:
            access = await auth.verify_token(self.pool, token)
        except DATABASE_ERRORS as exc:
            log.warning("gateway.auth_unavailable", error=exc)
            await ws.close(CLOSE_TRY_AGAIN_LATER, "database unavailable")
            return
        if access is None:
            await ws.close(CLOSE_UNAUTHORIZED, "missing, unknown or revoked token")
            return
        client = ClientConnection(self, ws, access)
        self.clients.add(client)
        metrics.CLIENTS.inc()
        try:
            await client.run()
        finally:
            self.clients.discard(client)
            metrics.CLIENTS.dec()


class ClientConnection:
    """One authenticated client: its frames, its subscriptions and its send queue."""

    def __init__(self, gateway: Gateway, ws: ServerConnection, access: auth.TokenAccess) -> None:
        self.gateway = gateway
        self.ws = ws
        self.access = access
        self.pool = gateway.pool
        self.settings = gateway.settings
        self.feed = ClientFeed(gateway.hub, gateway.pool, gateway.settings, self._on_overflow, ws)
        self.outbox = self.feed.outbox
        self.projects = ProjectSubscriber(gateway.projects, self._push_live)
        self.discovery = Discovery(self.pool, access, self.projects, self.settings.max_subscriptions)
        self.reviewing = Reviewing(self.pool, access, self.gateway.actions)
        self._budget = RequestBudget(self.settings.requests_per_second, self.settings.request_burst)
        self._scope = anyio.CancelScope()
        self._close: tuple[int, str] | None = None

    def stop(self, code: int, reason: str) -> None:
        if self._close is None:
            self._close = (code, reason.encode()[:MAX_CLOSE_REASON_BYTES].decode(errors="ignore"))
        self._scope.cancel()

    def _fields(self, **fields: Any) -> dict[str, Any]:
        # The client is named by its token's name, never the token (the log format would mask a
        # key that mentions "token" anyway).
        return {"client": self.access.name, "remote": self.ws.remote_address, **fields}

    def _push_live(self, frame: bytes) -> None:
        if not self.feed.push(frame):
            self.feed.overflow()

    def _on_overflow(self) -> None:
        metrics.SEND_QUEUE_DROPS.inc()
        log.info("gateway.slow_client", **self._fields())
        self.stop(CLOSE_TRY_AGAIN_LATER, "send queue full; reconnect with since_seq")

    async def run(self) -> None:
        log.info("gateway.connected", **self._fields())
        projects = None if self.access.project_ids is None else sorted(self.access.project_ids)
        self.outbox.offer(
            encode_frame(
                {
                    "type": ServerFrame.HELLO.value,
                    "protocol": PROTOCOL_VERSION,
                    "token": {"name": self.access.name, "project_ids": projects},
                    "limits": {
                        "max_frame_bytes": self.settings.max_frame_bytes,
                        "send_queue_frames": self.settings.send_queue_frames,
                        "send_queue_bytes": self.settings.send_queue_bytes,
                        "max_subscriptions": self.settings.max_subscriptions,
                        "requests_per_second": self.settings.requests_per_second,
                    },
                }
            )
        )
        try:
            with self._scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._until_done, self._send_loop)
                    tg.start_soon(self._until_done, self.feed.run_catch_up)
                    tg.start_soon(self._until_done, self._receive_loop)
        finally:
            self.feed.close()
            self.projects.close()
        if self._close is not None:
            code, reason = self._close
            log.info("gateway.closing", **self._fields(code=code, reason=reason))
            with anyio.CancelScope(shield=True):
                await self.ws.close(code, reason)

    async def _until_done(self, loop: Callable[[], Awaitable[None]]) -> None:
        """Run one of the connection's loops; when any ends, the connection ends."""
        try:
            await loop()
        except ConnectionClosed:
            pass
        except DATABASE_ERRORS as exc:
            log.warning("gateway.database_error", **self._fields(error=exc))
            self.stop(CLOSE_INTERNAL_ERROR, "database unavailable; reconnect with since_seq")
        self._scope.cancel()

    async def _send_loop(self) -> None:
        while True:
            await self.ws.send(await self.outbox.get(), text=True)
            metrics.FRAMES_SENT.inc()

    async def _receive_loop(self) -> None:
        async for message in self.ws:
            if isinstance(message, bytes):
                self.stop(CLOSE_UNSUPPORTED_DATA, "binary frames are not supported; send JSON text")
                return
            try:
                frame = parse_client_frame(message)
            except MalformedFrame as exc:
                self.stop(CLOSE_INVALID_PAYLOAD, str(exc))
                return
            except InvalidFrame as exc:
                await self._error(exc.request_id, exc.code, exc.message)
                continue
            if not self._budget.take():
                await self._error(frame.id, "rate_limited", "too many frames; slow down")
                continue
            try:
                await self._dispatch(frame)
            except ActionRejected as exc:
                await self._error(frame.id, exc.code, exc.message)
            except VALUE_REFUSED as exc:
                await self._error(frame.id, "rejected", f"the database refused it: {exc}")
            except DATABASE_ERRORS as exc:
                log.warning("gateway.action_failed", **self._fields(frame=type(frame).__name__, error=exc))
                await self._error(frame.id, "unavailable", "the database did not answer; try again")
            except Exception as exc:
                # A bug in one action must not take the client's subscriptions down with it.
                log.exception("gateway.action_crashed", **self._fields(frame=type(frame).__name__))
                await self._error(frame.id, "internal", f"the action failed: {type(exc).__name__}")

    async def _reply(self, frame: Mapping[str, Any]) -> None:
        await self.outbox.put(encode_frame(frame))

    async def _error(self, request_id: RequestId | None, code: str, message: str) -> None:
        await self._reply({"type": ServerFrame.ERROR.value, "id": request_id, "code": code, "message": message})

    async def _ack(self, frame_id: RequestId | None, action: str, /, **result: Any) -> None:
        await self._reply({**result, "type": ServerFrame.ACK.value, "id": frame_id, "action": action})

    async def _dispatch(self, frame: ClientFrame) -> None:
        match frame:
            case Subscribe():
                await self._subscribe(frame)
            case Unsubscribe():
                for session_id in frame.session_ids:
                    self.feed.unsubscribe(session_id)
                await self._ack(frame.id, "unsubscribe", session_ids=list(frame.session_ids))
            case Submit():
                await self._submit(frame)
            case Cancel():
                await self._authorize(await auth.task_project(self.pool, frame.task_id), f"task {frame.task_id}")
                await self._ack(frame.id, "cancel", **await self.gateway.actions.cancel(frame.task_id))
            case Review() | GetDiff() | Comment() | RequestChanges() | Rebase() | ResolveWithAgent() | ListChanges():
                action, result = await self.reviewing.handle(frame)
                await self._ack(frame.id, action, **result)
            case Ping():
                await self._reply({"type": ServerFrame.PONG.value, "id": frame.id})
            case Auth():
                raise ActionRejected("invalid_frame", "already signed in: 'auth' is only a connection's first frame")
            case ListProjects() | ListSessions() | ListTasks() | SubscribeProject() | UnsubscribeProject():
                await self._discover(frame)
            case PermissionReply() | QuestionReply():
                await self._authorize(
                    await auth.request_project(self.pool, frame.request_id), f"request {frame.request_id}"
                )
                await self._answer(frame)
            case ListAgents():
                await self._ack(frame.id, "list_agents", agents=await self.gateway.actions.list_agents())
            case ListModels():
                await self._ack(frame.id, "list_models", **await self.gateway.actions.list_models())

    async def _answer(self, frame: PermissionReply | QuestionReply) -> None:
        by = f"token:{self.access.name}"
        actions = self.gateway.actions
        if isinstance(frame, PermissionReply):
            decided = await actions.reply_permission(frame.request_id, frame.option_id, frame.decision, by)
            await self._ack(frame.id, "permission_reply", **decided)
        else:
            answered = await actions.reply_question(frame.request_id, frame.answers, by)
            await self._ack(frame.id, "question_reply", **answered)

    async def _discover(self, frame: DiscoveryFrame) -> None:
        action, result = await self.discovery.handle(frame)
        await self._ack(frame.id, action, **result)

    async def _authorize(self, project_id: int | None, what: str) -> None:
        if not self.access.sees(project_id):
            raise ActionRejected("forbidden", f"{what} does not exist or belongs to a project this token cannot see")

    async def _subscribe(self, frame: Subscribe) -> None:
        """All or nothing: every session must be visible and every since_seq valid."""
        wanted = set(frame.session_ids)
        if len(wanted | self.feed.subscriptions.keys()) > self.settings.max_subscriptions:
            raise ActionRejected(
                "too_many_subscriptions", f"at most {self.settings.max_subscriptions} sessions per connection"
            )
        rows = {row["id"]: row for row in await self.pool.fetch(q.SESSION_HEADS, list(frame.session_ids))}
        for session_id in frame.session_ids:
            row = rows.get(session_id)
            await self._authorize(None if row is None else row["project_id"], f"session {session_id}")
            assert row is not None
            since = frame.since(session_id)
            if since is not None and since > row["last_seq"]:
                raise ActionRejected(
                    "bad_seq", f"since_seq {since} is ahead of session {session_id}'s last seq {row['last_seq']}"
                )
        starts: dict[int, int] = {}
        snapshots: list[SnapshotFrame] = []
        for session_id in frame.session_ids:
            since = frame.since(session_id)
            if since is None:
                async with self.pool.acquire() as conn:
                    snapshot = await read_snapshot(conn, session_id, self.settings.snapshot_messages)
                assert snapshot is not None  # sessions are never deleted
                snapshots.append(snapshot)
                since = snapshot["last_seq"]
            starts[session_id] = since
        # Registered now so nothing is missed; they receive frames only once scheduled, after
        # the ack and the snapshots are queued.
        subs = [self.feed.subscribe(session_id, seq) for session_id, seq in starts.items()]
        await self._ack(frame.id, "subscribe", since_seq={str(k): v for k, v in starts.items()})
        for snapshot in snapshots:
            await self._reply(snapshot)
        for sub in subs:
            if sub.active:
                self.feed.schedule(sub)

    async def _submit(self, frame: Submit) -> None:
        project_id = frame.project_id
        if frame.session_id is not None:
            session_project = await auth.session_project(self.pool, frame.session_id)
            await self._authorize(session_project, f"session {frame.session_id}")
            if project_id is not None and project_id != session_project:
                raise ActionRejected(
                    "invalid_frame",
                    f"session {frame.session_id} belongs to project {session_project}, not {project_id}",
                )
            project_id = session_project
        if project_id is None:
            raise ActionRejected("invalid_frame", "submit needs 'project_id' or 'session_id'")
        visible = self.access.sees(project_id) and await auth.project_exists(self.pool, project_id)
        await self._authorize(project_id if visible else None, f"project {project_id}")
        bound = self.settings.scoped_max_priority
        if self.access.project_ids is not None and frame.priority > bound:
            raise ActionRejected(
                "forbidden",
                f"a token limited to some projects may set priority at most {bound} (gateway.scoped_max_priority)",
            )
        request = TaskSubmission(
            project_id=project_id,
            input=frame.input,
            session_id=frame.session_id,
            agent=frame.agent,
            model=frame.model,
            mode_id=frame.mode_id,
            priority=frame.priority,
            max_attempts=frame.max_attempts,
            dispatch_key=frame.dispatch_key,
            agent_options=frame.agent_options or {},
            fresh_context=frame.fresh_context,
        )
        await self._ack(frame.id, "submit", **await self.gateway.actions.submit(request))
