"""Folding an OpenAI-compatible ``chat.completion.chunk`` stream into backend events.

No I/O here: :class:`ChatStream` is fed the ``data`` of each server-sent event and returns the
events to emit, while keeping what the end of the turn needs (finish reason, usage, tool calls,
whether ``[DONE]`` arrived, a mid-stream error). Servers differ in small ways, all tolerated:
thinking arrives as ``reasoning_content`` (llama.cpp, SGLang, DeepSeek, older vLLM) or
``reasoning`` (vLLM >= 0.10, OpenRouter); ``choices`` may be ``null`` on the usage chunk; a tool
call may come in fragments merged by ``index``, in one piece, or with its ``id`` repeated.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from backends.base import BackendEvent, ReasoningDelta, TextDelta, ToolCall, ToolStatus, Usage
from backends.errors import BackendError

DONE = "[DONE]"
REASONING_FIELDS = ("reasoning_content", "reasoning")


class MalformedChunk(BackendError):
    """A server-sent event whose data is not a JSON object."""


@dataclass(frozen=True)
class StreamError:
    """An error the server reported inside the stream (``data: {"error": {...}}``)."""

    message: str
    code: int | None = None

    @property
    def transient(self) -> bool:
        # A 4xx code (context too long, bad parameter) will fail again; anything else may not.
        return self.code is None or not 400 <= self.code < 500 or self.code in (408, 429)


@dataclass
class _ToolCallParts:
    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""

    def merge(self, fragment: Mapping[str, Any]) -> None:
        if isinstance(fragment.get("id"), str) and fragment["id"]:
            self.id = fragment["id"]
        function = fragment.get("function")
        if not isinstance(function, Mapping):
            return
        if isinstance(function.get("name"), str) and function["name"]:
            self.name = function["name"]
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            self.arguments += arguments
        elif isinstance(arguments, Mapping):  # a few servers send the parsed object
            self.arguments = json.dumps(arguments)

    def snapshot(self, status: ToolStatus, output: Any) -> ToolCall:
        return ToolCall(
            tool_call_id=self.id or f"call_{self.index}",
            name=self.name,
            status=status,
            input=parse_arguments(self.arguments),
            output=output,
        )


def parse_arguments(arguments: str) -> Any:
    """The JSON value of a tool call's arguments; the raw text when it is not valid JSON."""
    if not arguments.strip():
        return {}
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def error_message(payload: Any) -> tuple[str, int | None]:
    """Message and numeric code of an OpenAI-style error body, ``{"error": "..."}`` or ``{"detail": ...}``."""
    error = payload.get("error", payload) if isinstance(payload, Mapping) else payload
    if isinstance(error, Mapping):
        code = error.get("code")
        code = code if isinstance(code, int) and not isinstance(code, bool) else None
        for key in ("message", "detail", "error"):
            value = error.get(key)
            if isinstance(value, str) and value:
                return value, code
            if isinstance(value, Mapping | list):
                return json.dumps(value), code
        return json.dumps(error), code
    return str(error), None


class ChatStream:
    """The state of one streamed chat completion (choice 0; ``n`` is never set above 1)."""

    def __init__(self) -> None:
        self.done = False
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.error: StreamError | None = None
        self._tool_calls: dict[int, _ToolCallParts] = {}

    @property
    def finished(self) -> bool:
        """The model said it is done: a finish reason or ``[DONE]``."""
        return self.done or self.finish_reason is not None

    def feed(self, data: str, event: str = "") -> list[BackendEvent]:
        """Take the data of one server-sent event; return the events it carries, in order."""
        if data.strip() == DONE:
            self.done = True
            return []
        try:
            payload = json.loads(data)
        except ValueError:
            raise MalformedChunk(f"the model sent a chunk that is not JSON: {data[:200]!r}") from None
        if not isinstance(payload, dict):
            raise MalformedChunk(f"the model sent a chunk that is not a JSON object: {data[:200]!r}")
        if "error" in payload or event == "error":
            self.error = StreamError(*error_message(payload))
            return []
        events: list[BackendEvent] = []
        for choice in payload.get("choices") or ():
            if isinstance(choice, Mapping) and choice.get("index", 0) == 0:
                self._choice(choice, events)
        usage = payload.get("usage")
        if isinstance(usage, Mapping):
            self.usage = Usage(_count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")))
            events.append(self.usage)
        return events

    def tool_calls(self, status: ToolStatus, output: Any = None) -> list[ToolCall]:
        """Snapshots of every tool call seen so far, in index order."""
        return [self._tool_calls[i].snapshot(status, output) for i in sorted(self._tool_calls)]

    def _choice(self, choice: Mapping[str, Any], events: list[BackendEvent]) -> None:
        delta = choice.get("delta")
        if isinstance(delta, Mapping):
            reasoning = next((delta[f] for f in REASONING_FIELDS if isinstance(delta.get(f), str) and delta[f]), "")
            if reasoning:
                events.append(ReasoningDelta(reasoning))
            content = delta.get("content")
            if isinstance(content, str) and content:
                events.append(TextDelta(content))
            fragments = delta.get("tool_calls")
            if isinstance(fragments, list):
                for fragment in fragments:
                    if isinstance(fragment, Mapping):
                        self._merge_tool_call(fragment)
        finish = choice.get("finish_reason")
        if isinstance(finish, str) and finish:
            self.finish_reason = finish

    def _merge_tool_call(self, fragment: Mapping[str, Any]) -> None:
        index = fragment.get("index")
        if not isinstance(index, int):
            # No index: continue the call with the same id, else start a new one.
            same = [p.index for p in self._tool_calls.values() if fragment.get("id") and p.id == fragment.get("id")]
            index = same[0] if same else len(self._tool_calls)
        self._tool_calls.setdefault(index, _ToolCallParts(index)).merge(fragment)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
