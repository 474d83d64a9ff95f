"""The native track: a model answers directly, streamed from any OpenAI-compatible endpoint.

One turn is one ``POST {base_url}/chat/completions`` with ``stream: true`` and
``stream_options.include_usage``; the session's earlier messages (``Turn.history``) plus the new
input are the context. Works with llama.cpp ``llama-server``, vLLM, Ollama, llama-swap, OpenAI.

What the turn emits and returns:

- ``TextDelta`` per ``content`` piece and ``ReasoningDelta`` per ``reasoning_content``/``reasoning``
  piece, as they arrive; ``Usage`` when the server reports it (also in the outcome).
- ``finish_reason`` is the stop reason, verbatim: ``stop``, ``length`` (the reply was cut at the
  token limit; completed, not hidden), ``tool_calls``, ``content_filter``. A stream that ends with
  ``[DONE]`` but no finish reason stops with ``stop``.
- Tool calls: a native turn offers no tools and runs none, but a model may still stream some. Each
  one is emitted once, merged, when the stream ends, as a ``ToolCall`` with status ``failed`` and
  an output saying it was not run, so a client shows it and nobody waits for a result that will
  never come.
- Failures are returned, never raised; the partial reply stays with the dispatcher, which stored
  every delta as it was emitted. Transient (retried by the dispatcher's policy): the endpoint
  unreachable, timeouts, HTTP 408/429/5xx (``Retry-After`` honoured), a stream that breaks or
  ends before a finish reason or ``[DONE]``, an in-stream error without a 4xx code. Permanent:
  other 4xx (the server's message in ``error``), a response that is not an event stream or not
  JSON, a missing API key.
- Cancellation leaves the ``async with`` blocks at once, which closes the response and its
  connection; the server sees the client go away.

One HTTP client serves every turn of a backend (the endpoint's connections are kept alive, HTTP/2
where a TLS server offers it), so a turn after the first opens no connection and, on TLS, costs
no handshake. It is made on the first turn (in the event loop that runs turns) and closed by
:meth:`NativeBackend.aclose` when the dispatcher stops.

The API key is read from the environment variable named by ``api_key_env`` at each turn and is
only ever put in the ``Authorization`` header.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any

import anyio
import httpx
from httpx_sse import ServerSentEvent, aconnect_sse

from backends.base import CONTEXT_OVERFLOW, Emit, HistoryMessage, ToolStatus, Turn, TurnOutcome, is_context_overflow
from backends.errors import BackendError
from backends.openai_stream import ChatStream, MalformedChunk, error_message
from kernel import get_logger

DEFAULT_BASE_URL = "http://127.0.0.1:8080/v1"
# llama-server answers whatever the name; vLLM, Ollama and llama-swap need the served model's name.
DEFAULT_MODEL = "local-model"
DEFAULT_CONNECT_TIMEOUT = 10.0
# Longest silence allowed from the server, including prompt processing before the first token.
DEFAULT_READ_TIMEOUT = 300.0
# Whole request, first byte sent to [DONE].
DEFAULT_REQUEST_TIMEOUT = 1800.0
# An idle kept-alive connection is closed after this long (servers drop theirs after 5-75 s).
KEEPALIVE_EXPIRY = 30.0
# How long the end of a response body may take after its [DONE].
DRAIN_GRACE = 1.0

CHAT_PATH = "/chat/completions"
MODELS_PATH = "/models"
# Body keys the backend owns; model_options may not replace them.
RESERVED_BODY_KEYS = frozenset({"model", "messages", "stream", "stream_options"})
# How much of an error response is read, and how much of it goes into the task's error.
ERROR_BODY_BYTES = 16_384
ERROR_TEXT_CHARS = 500
TOOL_NOT_RUN = "not run: a native turn has no tools"
TRANSIENT_STATUSES = frozenset({408, 429})

# Failure reasons (TurnOutcome.stop_reason of a failed turn, then tasks.failure_reason).
UNREACHABLE = "model_unreachable"
TIMEOUT = "model_timeout"
RATE_LIMITED = "model_rate_limited"
SERVER_ERROR = "model_server_error"
REJECTED = "model_rejected"
STREAM_ERROR = "model_stream_error"
INTERRUPTED = "model_stream_interrupted"
BAD_RESPONSE = "model_bad_response"
CONFIG_ERROR = "model_config_error"

log = get_logger("backends.native")


class NativeConfigError(BackendError):
    """The native settings cannot work as given (e.g. the API key variable is not set)."""


class ModelListError(BackendError):
    """``GET /models`` failed: endpoint unreachable, an HTTP error, or not a model list."""


@dataclass(frozen=True)
class NativeSettings:
    """Where the native track's model lives and how a request is made."""

    base_url: str = DEFAULT_BASE_URL
    # Name of the environment variable holding the API key; None sends no key.
    api_key_env: str | None = None
    # Default model; a task's ``model`` overrides it.
    model: str = DEFAULT_MODEL
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    # Extra request body per model name, e.g. {"qwen3": {"temperature": 0.6, "max_tokens": 4096}}.
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # How long the gateway keeps the endpoint's model list (the WebSocket ``list_models``).
    models_cache_ttl: float = 60.0

    def __post_init__(self) -> None:
        try:
            url = httpx.URL(self.base_url)
        except httpx.InvalidURL as exc:
            raise ValueError(f"base_url {self.base_url!r} is not a URL: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url {self.base_url!r} must be an http:// or https:// URL with a host")
        if not self.model:
            raise ValueError("model must not be empty")
        for name in ("connect_timeout", "read_timeout", "request_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for model, options in self.model_options.items():
            reserved = sorted(RESERVED_BODY_KEYS & set(options))
            if reserved:
                raise ValueError(f"model_options.{model} may not set {', '.join(reserved)} (Switchyard sets them)")

    @property
    def endpoint(self) -> str:
        """``base_url`` without any user:password, for messages and logs."""
        return str(httpx.URL(self.base_url).copy_with(username=None, password=None))

    def headers(self, environ: Mapping[str, str]) -> dict[str, str]:
        if self.api_key_env is None:
            return {}
        key = environ.get(self.api_key_env, "")
        if not key:
            raise NativeConfigError(f"environment variable {self.api_key_env} (native.api_key_env) is not set")
        return {"Authorization": f"Bearer {key}"}

    def timeout(self) -> httpx.Timeout:
        return httpx.Timeout(
            connect=self.connect_timeout, read=self.read_timeout, write=self.connect_timeout, pool=self.connect_timeout
        )

    def request_body(self, model: str, messages: list[dict[str, str]]) -> dict[str, Any]:
        return {
            **self.model_options.get(model, {}),
            "model": model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }


def chat_messages(history: tuple[HistoryMessage, ...], user_input: str) -> list[dict[str, str]]:
    """The request's ``messages``: the session so far, oldest first, then the new user message.

    Consecutive messages of one role are joined (a user message whose turn failed has no answer):
    many chat templates (Gemma, Mistral, ...) refuse roles that do not alternate.
    """
    messages: list[dict[str, str]] = []
    for role, content in [*((m.role, m.content) for m in history), ("user", user_input)]:
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n\n" + content
        else:
            messages.append({"role": role, "content": content})
    return messages


class NativeBackend:
    execution_path = "native"
    needs_worktree = False

    def __init__(self, settings: NativeSettings | None = None, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings or NativeSettings()
        self._environ = os.environ if environ is None else environ
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> NativeBackend:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the endpoint's connections; a later turn opens new ones."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def client(self) -> httpx.AsyncClient:
        """The endpoint's client, shared by every turn (made on first use)."""
        if self._client is None:
            self._client = _client(self.settings, {}, http2=True)
        return self._client

    async def run_turn(self, turn: Turn, emit: Emit) -> TurnOutcome:
        if turn.agent_options:
            error = f"native inference offers no agent options: {dict(turn.agent_options)}"
            return TurnOutcome.failed("bad_input", error)
        try:
            headers = self.settings.headers(self._environ)
        except NativeConfigError as exc:
            return TurnOutcome.failed(CONFIG_ERROR, str(exc))
        model = turn.model or self.settings.model
        body = self.settings.request_body(model, chat_messages(turn.history, turn.input))
        stream = ChatStream()
        log.debug("native.request", task_id=turn.task_id, model=model)
        with anyio.move_on_after(self.settings.request_timeout) as deadline:
            failure = await self._stream(body, headers, stream, emit)
        if deadline.cancelled_caught:
            failure = TurnOutcome.failed(
                TIMEOUT,
                f"the model did not finish within {self.settings.request_timeout:g}s (native.request_timeout)",
                transient=True,
            )
        outcome = await self._end(stream, emit, failure)
        if outcome.error:
            log.warning(
                "native.failed",
                task_id=turn.task_id,
                reason=outcome.stop_reason,
                error=outcome.error,
            )
        return outcome

    async def _stream(
        self, body: dict[str, Any], headers: dict[str, str], stream: ChatStream, emit: Emit
    ) -> TurnOutcome | None:
        """Run the request, feeding ``stream`` and emitting its events; a failure, or None."""
        started = False
        try:
            async with aconnect_sse(self.client(), "POST", CHAT_PATH, json=body, headers=headers) as source:
                response = source.response
                if not response.is_success:
                    return _http_failure(response, await _read_error(response), self.settings.endpoint)
                if not _is_event_stream(response):
                    return await _not_a_stream(response)
                started = True
                events = source.aiter_sse()
                async for sse in events:
                    for event in stream.feed(sse.data, sse.event):
                        await emit(event)
                    if stream.done or stream.error:
                        break
                if stream.done:
                    await _drain(events)
        except httpx.TimeoutException as exc:
            return TurnOutcome.failed(TIMEOUT, _timeout_message(exc, self.settings), transient=True)
        except httpx.RequestError as exc:
            detail = str(exc) or type(exc).__name__
            if started:
                error = f"the connection to the model broke mid-stream: {detail}"
                return TurnOutcome.failed(INTERRUPTED, error, transient=True)
            error = f"cannot reach the model at {self.settings.endpoint}: {detail}"
            return TurnOutcome.failed(UNREACHABLE, error, transient=True)
        except MalformedChunk as exc:
            return TurnOutcome.failed(BAD_RESPONSE, str(exc))
        return None

    async def _end(self, stream: ChatStream, emit: Emit, failure: TurnOutcome | None) -> TurnOutcome:
        """The outcome from what the stream delivered; surfaces any tool calls the model made."""
        if stream.error is not None:
            error = f"the model reported an error mid-stream: {stream.error.message}"
            failure = TurnOutcome.failed(STREAM_ERROR, error, transient=stream.error.transient)
        elif stream.finished:
            # Whatever broke after the finish reason (say, the wait for [DONE]) lost nothing.
            failure = None
        elif failure is None:
            error = "the model's stream ended before it finished (no finish_reason and no [DONE])"
            failure = TurnOutcome.failed(INTERRUPTED, error, transient=True)
        for call in stream.tool_calls(ToolStatus.FAILED, TOOL_NOT_RUN):
            await emit(call)
        if failure is not None:
            return replace(failure, usage=stream.usage)
        return TurnOutcome.completed(stop_reason=stream.finish_reason or "stop", usage=stream.usage)


async def list_models(settings: NativeSettings, environ: Mapping[str, str] | None = None) -> list[str]:
    """The ids the endpoint offers (``GET {base_url}/models``), in the server's order."""
    headers = settings.headers(os.environ if environ is None else environ)
    url = settings.endpoint + MODELS_PATH
    try:
        async with _client(settings, headers) as client:
            response = await client.get(MODELS_PATH)
    except httpx.RequestError as exc:
        raise ModelListError(f"cannot reach {url}: {str(exc) or type(exc).__name__}") from None
    if not response.is_success:
        raise ModelListError(f"GET {url}: HTTP {response.status_code}: {_describe_error(response.content)}")
    try:
        return [str(entry["id"]) for entry in response.json()["data"]]
    except (ValueError, KeyError, TypeError):
        raise ModelListError(f"GET {url} did not return a model list: {_describe_error(response.content)}") from None


# ---------------------------------------------------------------------------- HTTP helpers


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Building one costs ~20 ms: once per process, not once per client.
    return httpx.create_ssl_context()


def _client(settings: NativeSettings, headers: dict[str, str], *, http2: bool = False) -> httpx.AsyncClient:
    # HTTP/2 only where TLS negotiates it (ALPN); plain http:// stays HTTP/1.1 with keep-alive.
    return httpx.AsyncClient(
        base_url=settings.base_url,
        headers=headers,
        timeout=settings.timeout(),
        verify=_ssl_context(),
        http2=http2,
        # The dispatcher bounds concurrent turns; the pool must not make a turn wait for a connection.
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=20, keepalive_expiry=KEEPALIVE_EXPIRY),
    )


async def _drain(events: AsyncIterator[ServerSentEvent]) -> None:
    """Read to the end of the body after ``[DONE]``, so the connection is kept for the next turn
    (one closed before its end is dropped); a server that does not end it soon loses the connection."""
    with anyio.move_on_after(DRAIN_GRACE), contextlib.suppress(httpx.HTTPError):
        async for _ in events:
            pass


def _is_event_stream(response: httpx.Response) -> bool:
    return "text/event-stream" in response.headers.get("content-type", "")


async def _read_error(response: httpx.Response) -> bytes:
    """At most ERROR_BODY_BYTES of an error response's body."""
    body = b""
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) >= ERROR_BODY_BYTES:
            break
    return body[:ERROR_BODY_BYTES]


def _describe_error(body: bytes) -> str:
    """The server's message from an error body: OpenAI-style JSON, ``{"detail": ...}``, or plain text."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        message = error_message(json.loads(text))[0]
    except ValueError:
        message = text
    message = " ".join(message.split()) or "(empty body)"
    return message if len(message) <= ERROR_TEXT_CHARS else message[:ERROR_TEXT_CHARS] + "…"


def _http_failure(response: httpx.Response, body: bytes, endpoint: str) -> TurnOutcome:
    status = response.status_code
    error = f"HTTP {status} from {endpoint}{CHAT_PATH}: {_describe_error(body)}"
    retry_after = retry_after_seconds(response.headers)
    if status == 429:
        return TurnOutcome.failed(RATE_LIMITED, error, transient=True, retry_after=retry_after)
    if status >= 500 or status in TRANSIENT_STATUSES:
        return TurnOutcome.failed(SERVER_ERROR, error, transient=True, retry_after=retry_after)
    # The next turn of the session then starts with a fresh context.
    return TurnOutcome.failed(CONTEXT_OVERFLOW if is_context_overflow(error) else REJECTED, error)


async def _not_a_stream(response: httpx.Response) -> TurnOutcome:
    content_type = response.headers.get("content-type", "(none)")
    body = _describe_error(await _read_error(response))
    return TurnOutcome.failed(BAD_RESPONSE, f"the model answered {content_type}, not an event stream: {body}")


def _timeout_message(exc: httpx.TimeoutException, settings: NativeSettings) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return f"connecting to {settings.endpoint} took over {settings.connect_timeout:g}s (native.connect_timeout)"
    if isinstance(exc, httpx.ReadTimeout):
        return f"the model sent nothing for {settings.read_timeout:g}s (native.read_timeout)"
    return f"sending the request to {settings.endpoint} timed out: {str(exc) or type(exc).__name__}"


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (OpenAI) or ``Retry-After`` (seconds or HTTP date)."""
    millis = _seconds(headers.get("retry-after-ms", ""))
    if millis is not None:
        return millis / 1000
    value = headers.get("retry-after", "")
    seconds = _seconds(value)
    if seconds is not None or not value:
        return seconds
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _seconds(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return max(0.0, number) if math.isfinite(number) else None
