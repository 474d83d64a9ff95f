"""A real OpenAI-compatible chat-completions server on 127.0.0.1 for tests.

It runs in its own thread, so sync tests, async tests (any event loop) and subprocesses such as
opencode can all talk to it. Replies are scripted with ``enqueue`` (``Reply``, ``HttpError``, ``Hang``);
when nothing scripted matches a request, ``keyword_reply`` steers by the last user message
(``WRITE_FILE``, ``SLEEP_TOOL``, ``FAIL_500``, ``HANG``, otherwise an echo), and opencode's
title-generation requests get a short title without consuming scripted replies.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import PurePosixPath
from types import TracebackType
from typing import Any, Literal

import anyio.to_thread

DEFAULT_MODELS = ("fake-model",)
TITLE = "Fake session title"
# opencode's title agent prompt starts with this (1.18.x); it is sent to the small_model.
_TITLE_PROMPT_MARKER = "you are a title generator"
_WORKDIR_RE = re.compile(r"^\s*Working directory:\s*(\S.*?)\s*$", re.MULTILINE)
_SHUTDOWN_JOIN_SECONDS = 5.0

ReasoningField = Literal["reasoning_content", "reasoning"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]
Ending = Literal["done", "abrupt", "eof", "error"]


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request the fake received: header names lower-cased, ``body`` parsed JSON or None."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: Any
    # The client's port: requests with the same one came over one (kept-alive) connection.
    client_port: int = 0

    @property
    def is_chat(self) -> bool:
        return self.method == "POST" and self.path.rstrip("/").endswith("/chat/completions")

    @property
    def messages(self) -> list[dict[str, Any]]:
        msgs = self.body.get("messages") if isinstance(self.body, dict) else None
        return [m for m in msgs if isinstance(m, dict)] if isinstance(msgs, list) else []

    @property
    def system_text(self) -> str:
        return "\n".join(message_text(m) for m in self.messages if m.get("role") == "system")

    @property
    def last_user_text(self) -> str:
        users = [m for m in self.messages if m.get("role") == "user"]
        return message_text(users[-1]) if users else ""

    @property
    def last_role(self) -> str | None:
        return self.messages[-1].get("role") if self.messages else None

    @property
    def tool_names(self) -> list[str]:
        tools = self.body.get("tools") if isinstance(self.body, dict) else None
        if not isinstance(tools, list):
            return []
        return [t["function"]["name"] for t in tools if isinstance(t, dict) and "function" in t]

    @property
    def is_title(self) -> bool:
        return _TITLE_PROMPT_MARKER in self.system_text.lower()

    @property
    def stream(self) -> bool:
        return isinstance(self.body, dict) and bool(self.body.get("stream"))

    @property
    def include_usage(self) -> bool:
        opts = self.body.get("stream_options") if isinstance(self.body, dict) else None
        return isinstance(opts, dict) and bool(opts.get("include_usage"))

    @property
    def working_directory(self) -> str | None:
        """The directory opencode announces in its system prompt, if any."""
        match = _WORKDIR_RE.search(self.system_text)
        return match.group(1) if match else None


def message_text(message: Mapping[str, Any]) -> str:
    """Text of a chat message whose content is a string or a list of parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 100
    completion_tokens: int = 20
    reasoning_tokens: int | None = None
    cached_tokens: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        if self.reasoning_tokens is not None:
            out["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        if self.cached_tokens is not None:
            out["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return out


@dataclass(frozen=True)
class ToolCall:
    """A tool call, streamed as ``fragments`` pieces of its JSON arguments (merged by index)."""

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    id: str | None = None
    fragments: int = 3

    @property
    def arguments_json(self) -> str:
        return self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)


@dataclass(frozen=True)
class Stall:
    """Hang mid-stream after ``after_events`` data events (the role chunk is the first; 0: headers only).

    ``seconds=None`` hangs until the server shuts down, which then cuts the connection; after a
    finite stall the stream continues normally.
    """

    after_events: int = 1
    seconds: float | None = None


@dataclass(frozen=True)
class Reply:
    """A successful (HTTP 200) completion.

    Streamed in this order: a role chunk, ``reasoning`` chunks, ``text`` chunks, tool-call fragments,
    a finish chunk, the usage chunk (only if the request asked for it) and ``[DONE]``. A str is split
    into ``chunks`` pieces; a sequence is sent piece by piece. ``ending="abrupt"`` closes the
    connection after the content (no finish_reason, no [DONE], no chunked-encoding terminator);
    ``ending="eof"`` ends the body cleanly after the content, but with no finish_reason and no [DONE];
    ``ending="error"`` sends ``data: {"error": ...}`` after the content, then ``[DONE]``.
    """

    text: str | Sequence[str] = ""
    reasoning: str | Sequence[str] = ""
    reasoning_field: ReasoningField = "reasoning_content"
    tool_calls: Sequence[ToolCall] = ()
    chunks: int = 1
    chunk_delay: float = 0.0
    finish_reason: FinishReason | None = None  # None: "tool_calls" if there are tool calls, else "stop"
    usage: Usage | None = Usage()
    stall: Stall | None = None
    ending: Ending = "done"
    error_message: str = "fake stream error"

    @property
    def text_pieces(self) -> list[str]:
        return _pieces(self.text, self.chunks)

    @property
    def reasoning_pieces(self) -> list[str]:
        return _pieces(self.reasoning, self.chunks)

    @property
    def full_text(self) -> str:
        return "".join(self.text_pieces)

    @property
    def full_reasoning(self) -> str:
        return "".join(self.reasoning_pieces)

    @property
    def effective_finish_reason(self) -> str:
        return self.finish_reason or ("tool_calls" if self.tool_calls else "stop")


@dataclass(frozen=True)
class HttpError:
    """An HTTP error response; ``body`` (raw text) overrides the OpenAI-style JSON error."""

    status: int = 500
    message: str = "fake internal error"
    body: str | None = None
    retry_after: str | None = None

    def payload(self) -> bytes:
        if self.body is not None:
            return self.body.encode()
        kind = "invalid_request_error" if 400 <= self.status < 500 else "server_error"
        return json.dumps({"error": {"message": self.message, "type": kind, "code": self.status}}).encode()


@dataclass(frozen=True)
class Hang:
    """Never answer (not even headers) for ``seconds``, or until the server shuts down; then cut."""

    seconds: float | None = None


Scripted = Reply | HttpError | Hang
Predicate = Callable[[RecordedRequest], bool]
DefaultPolicy = Callable[[RecordedRequest], Scripted]


def is_main_turn(request: RecordedRequest) -> bool:
    """Default predicate for scripted replies: any chat request except title generation."""
    return not request.is_title


def _pieces(value: str | Sequence[str], chunks: int) -> list[str]:
    if not isinstance(value, str):
        return [p for p in value if p]
    if not value:
        return []
    n = max(1, min(chunks, len(value)))
    size, extra = divmod(len(value), n)
    pieces, start = [], 0
    for k in range(n):
        end = start + size + (1 if k < extra else 0)
        pieces.append(value[start:end])
        start = end
    return pieces


def _words(text: str) -> list[str]:
    # `opencode run` wraps each argument that contains a space in double quotes.
    return [w.strip("\"'") for w in text.split()]


def _keyword_args(text: str, keyword: str, count: int) -> list[str] | None:
    words = _words(text)
    if keyword not in words:
        return None
    args = words[words.index(keyword) + 1 : words.index(keyword) + 1 + count]
    return args if len(args) == count else None


def keyword_reply(request: RecordedRequest) -> Scripted:
    """The default policy: steer by keywords in the last user message.

    - title-generation request: a short plain title;
    - ``FAIL_500``: HTTP 500 every time; ``HANG``: never answers;
    - last message is a tool result: a final text mentioning it;
    - ``WRITE_FILE <relative path> <token>``: calls the ``write`` tool (path resolved against the
      working directory in opencode's system prompt, content ``<token>\\n``);
    - ``SLEEP_TOOL``: calls the ``bash`` tool with ``sleep 30``;
    - ``ASK_QUESTION``: calls the ``question`` tool (one question, options ``red`` and ``blue``);
    - otherwise a short text that echoes the prompt (with a little reasoning).
    """
    if request.is_title:
        return Reply(text=TITLE)
    prompt = request.last_user_text
    words = _words(prompt)
    if "FAIL_500" in words:
        return HttpError(500, "fake internal error (FAIL_500)")
    if "HANG" in words:
        return Hang()
    if request.last_role == "tool":
        result = message_text(request.messages[-1]).strip().splitlines()
        return Reply(text=f"Done. Tool said: {result[0] if result else '(nothing)'}", chunks=2)
    write_args = _keyword_args(prompt, "WRITE_FILE", 2)
    if write_args is not None and "write" in request.tool_names:
        rel, token = write_args
        workdir = request.working_directory
        path = str(PurePosixPath(workdir) / rel) if workdir else rel
        return Reply(
            text="I will write the file.",
            tool_calls=(ToolCall("write", {"filePath": path, "content": token + "\n"}),),
        )
    if "ASK_QUESTION" in words and "question" in request.tool_names:
        options = [{"label": "red", "description": "A warm colour"}, {"label": "blue", "description": "A cool one"}]
        question = {"question": "Which colour should the button be?", "header": "Colour", "options": options}
        return Reply(text="I have a question.", tool_calls=(ToolCall("question", {"questions": [question]}),))
    if "SLEEP_TOOL" in words and "bash" in request.tool_names:
        command = {"command": "sleep 30", "description": "Sleep for thirty seconds"}
        return Reply(text="Sleeping.", tool_calls=(ToolCall("bash", command),))
    return Reply(
        reasoning="The user wants a reply.",
        text=f"Fake reply to: {' '.join(words)[:80]}",
        chunks=3,
    )


@dataclass
class _Queued:
    reply: Scripted
    when: Predicate


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, model: FakeModel) -> None:
        self.model = model
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client going away mid-stream is normal in these tests; anything else is a bug worth seeing.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Cut(Exception):
    """Raised to drop the connection without finishing the response."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY, as asyncio servers (uvicorn, vLLM) set it: otherwise, on a kept-alive
    # connection, each small chunk after the headers waits for the client's delayed ACK (~10 ms).
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.model._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.model._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # --- routing ---------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._record(None)
        if self.path.rstrip("/").endswith("/models"):
            models = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.server.model.models]
            self._send_json(200, {"object": "list", "data": models})
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        request = self._record(body)
        if not request.is_chat:
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            self._send_json(400, {"error": {"message": "body must be JSON with messages", "type": "bad"}})
            return
        reply = self.server.model._next_reply(request)
        try:
            self._answer(request, reply)
        except (_Cut, OSError):
            self.close_connection = True
            self._cut()

    # --- answers ---------------------------------------------------------------------------------

    def _answer(self, request: RecordedRequest, reply: Scripted) -> None:
        if isinstance(reply, Hang):
            self._wait(reply.seconds)
            raise _Cut
        if isinstance(reply, HttpError):
            headers = {"Retry-After": reply.retry_after} if reply.retry_after is not None else {}
            self._send_bytes(reply.status, reply.payload(), "application/json", headers)
            return
        if request.stream:
            self._stream(request, reply)
        else:
            self._complete(request, reply)

    def _complete(self, request: RecordedRequest, reply: Reply) -> None:
        if reply.stall is not None:
            self._wait_or_cut(reply.stall.seconds)
        if reply.ending == "abrupt":
            raise _Cut
        if reply.ending == "error":
            self._send_json(500, {"error": {"message": reply.error_message, "type": "server_error"}})
            return
        message: dict[str, Any] = {"role": "assistant", "content": reply.full_text or None}
        if reply.full_reasoning:
            message[reply.reasoning_field] = reply.full_reasoning
        if reply.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id or self.server.model._call_id(),
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments_json},
                }
                for call in reply.tool_calls
            ]
        body: dict[str, Any] = {
            **self._envelope(request, "chat.completion"),
            "choices": [{"index": 0, "message": message, "finish_reason": reply.effective_finish_reason}],
        }
        if reply.usage is not None:
            body["usage"] = reply.usage.to_json()
        self._send_json(200, body)

    def _stream(self, request: RecordedRequest, reply: Reply) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        envelope = self._envelope(request, "chat.completion.chunk")

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {**envelope, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        events: list[dict[str, Any]] = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": None, reply.reasoning_field: p}) for p in reply.reasoning_pieces]
        events += [chunk({"content": p}) for p in reply.text_pieces]
        for index, call in enumerate(reply.tool_calls):
            call_id = call.id or self.server.model._call_id()
            head = {"index": index, "id": call_id, "type": "function"}
            events.append(chunk({"tool_calls": [{**head, "function": {"name": call.name, "arguments": ""}}]}))
            for piece in _pieces(call.arguments_json, call.fragments):
                events.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))

        for n, event in enumerate(events):
            if reply.stall is not None and n == reply.stall.after_events:
                self._wait_or_cut(reply.stall.seconds)
            if n and reply.chunk_delay:
                self._wait_or_cut(reply.chunk_delay)
            self._sse(event)
        if reply.stall is not None and reply.stall.after_events >= len(events):
            self._wait_or_cut(reply.stall.seconds)
        if reply.ending == "abrupt":
            raise _Cut
        if reply.ending == "eof":
            self._write_chunk(b"")
            return
        if reply.ending == "error":
            self._sse({"error": {"message": reply.error_message, "type": "server_error", "code": 500}})
        else:
            self._sse(chunk({}, reply.effective_finish_reason))
            if reply.usage is not None and request.include_usage:
                self._sse({**envelope, "choices": [], "usage": reply.usage.to_json()})
        self._write_chunk(b"data: [DONE]\n\n")
        self._write_chunk(b"")

    # --- low level -------------------------------------------------------------------------------

    def _record(self, body: Any) -> RecordedRequest:
        headers = {k.lower(): v for k, v in self.headers.items()}
        request = RecordedRequest(self.command, self.path, headers, body, self.client_address[1])
        self.server.model._record(request)
        return request

    def _envelope(self, request: RecordedRequest, obj: str) -> dict[str, Any]:
        model = request.body.get("model") if isinstance(request.body, dict) else None
        return {
            "id": f"chatcmpl-fake-{id(self):x}",
            "object": obj,
            "created": int(time.time()),
            "model": model or self.server.model.models[0],
        }

    def _sse(self, payload: Mapping[str, Any]) -> None:
        self._write_chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")
        if self.server.model.on_event is not None:
            self.server.model.on_event(payload)

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _send_json(self, status: int, payload: Mapping[str, Any]) -> None:
        self._send_bytes(status, json.dumps(payload).encode(), "application/json", {})

    def _send_bytes(self, status: int, data: bytes, content_type: str, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _wait(self, seconds: float | None) -> bool:
        """Sleep, waking early on shutdown; True if the server is shutting down."""
        return self.server.model._closing.wait(seconds)

    def _wait_or_cut(self, seconds: float | None) -> None:
        if self._wait(seconds):
            raise _Cut

    def _cut(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class FakeModel:
    """An OpenAI-compatible model server on 127.0.0.1 (random port), run in a background thread.

    Use as ``with FakeModel() as fm:`` (or ``async with``). Point clients at ``fm.base_url``.
    """

    def __init__(
        self,
        models: Sequence[str] = DEFAULT_MODELS,
        default: DefaultPolicy = keyword_reply,
        on_event: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> None:
        self.models = tuple(models)
        self.default = default
        # Called (in the server thread) right after each SSE data payload is written; benchmarks
        # use it to timestamp the bytes they measure from.
        self.on_event = on_event
        self._closing = threading.Event()
        self._lock = threading.Condition()
        self._requests: list[RecordedRequest] = []
        self._queue: list[_Queued] = []
        self._connections: set[socket.socket] = set()
        self._call_ids = itertools.count(1)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FakeModel:
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-model", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and cut every open connection (hanging and stalled ones included)."""
        if self._server is None:
            return
        self._closing.set()
        self._server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(_SHUTDOWN_JOIN_SECONDS)
        deadline = time.monotonic() + _SHUTDOWN_JOIN_SECONDS
        with self._lock:
            while self._connections and time.monotonic() < deadline:
                self._lock.wait(0.05)
        self._server = None

    def __enter__(self) -> FakeModel:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> FakeModel:
        return await anyio.to_thread.run_sync(self.start)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await anyio.to_thread.run_sync(self.close)

    # --- public API ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeModel is not running")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far (a snapshot copy), in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """Chat-completion requests, title-generation ones excluded."""
        return [r for r in self.requests if r.is_chat and not r.is_title]

    def enqueue(self, *replies: Scripted, when: Predicate = is_main_turn) -> None:
        """Script the next replies, in order, for requests matching ``when``."""
        with self._lock:
            self._queue.extend(_Queued(r, when) for r in replies)

    @property
    def pending_replies(self) -> int:
        with self._lock:
            return len(self._queue)

    @property
    def open_connections(self) -> int:
        """Client connections the server still holds (a closed client is noticed on the next write)."""
        with self._lock:
            return len(self._connections)

    def wait_for_requests(
        self, count: int = 1, *, when: Predicate = lambda r: r.is_chat, timeout: float = 10.0
    ) -> list[RecordedRequest]:
        """Block until ``count`` received requests match ``when``; return them (TimeoutError if not)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                matching = [r for r in self._requests if when(r)]
                if len(matching) >= count:
                    return matching
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(matching)} of {count} expected requests after {timeout}s")
                self._lock.wait(left)

    # --- internals used by the handler -----------------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)
            self._lock.notify_all()

    def _next_reply(self, request: RecordedRequest) -> Scripted:
        with self._lock:
            for i, queued in enumerate(self._queue):
                if queued.when(request):
                    return self._queue.pop(i).reply
        return self.default(request)

    def _call_id(self) -> str:
        with self._lock:
            return f"call_fake_{next(self._call_ids)}"

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)
                self._lock.notify_all()
