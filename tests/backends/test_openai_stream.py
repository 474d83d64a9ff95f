"""Chunk folding on its own: the server variations the HTTP fake does not produce."""

from __future__ import annotations

import json
from typing import Any

import pytest

from backends.base import ReasoningDelta, TextDelta, ToolStatus, Usage
from backends.openai_stream import ChatStream, MalformedChunk, StreamError, error_message


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> str:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return json.dumps({"object": "chat.completion.chunk", "choices": choices, **extra})


def test_text_reasoning_usage_finish_and_done() -> None:
    stream = ChatStream()
    assert stream.feed(chunk({"role": "assistant", "content": ""})) == []
    assert stream.feed(chunk({"content": None, "reasoning_content": "hmm"})) == [ReasoningDelta("hmm")]
    assert stream.feed(chunk({"reasoning": "vllm"})) == [ReasoningDelta("vllm")]
    assert stream.feed(chunk({"content": "Hi"})) == [TextDelta("Hi")]
    assert (stream.finished, stream.finish_reason) == (False, None)
    assert stream.feed(chunk({}, "length")) == []
    assert (stream.finished, stream.finish_reason) == (True, "length")
    usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert stream.feed(json.dumps({"choices": None, "usage": usage})) == [Usage(7, 3)]
    assert stream.feed("[DONE]") == []
    assert stream.done and stream.usage == Usage(7, 3)


def test_done_alone_finishes_the_stream() -> None:
    stream = ChatStream()
    stream.feed(chunk({"content": "x"}))
    stream.feed("[DONE]")
    assert stream.finished and stream.finish_reason is None


def test_other_choices_and_odd_values_are_ignored() -> None:
    stream = ChatStream()
    other = json.dumps({"choices": [{"index": 1, "delta": {"content": "second choice"}}]})
    assert stream.feed(other) == []
    assert stream.feed(json.dumps({"choices": [{"index": 0, "delta": {"content": 5}}], "usage": None})) == []
    # A usage chunk without counts must not invent any.
    assert stream.feed(json.dumps({"usage": {"prompt_tokens": -1}})) == [Usage(0, 0)]


def test_tool_call_fragments_merge_by_index() -> None:
    stream = ChatStream()
    head = {"index": 0, "id": "call_a", "type": "function", "function": {"name": "bash", "arguments": ""}}
    stream.feed(chunk({"tool_calls": [head]}))
    stream.feed(chunk({"tool_calls": [{"index": 1, "id": "call_b", "function": {"name": "read", "arguments": "{}"}}]}))
    stream.feed(chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"command":"ec'}}]}))
    # Repeating the id (llama.cpp, vLLM) does not start a new call.
    stream.feed(chunk({"tool_calls": [{"index": 0, "id": "call_a", "function": {"arguments": 'ho hi"}'}}]}))
    stream.feed(chunk({}, "tool_calls"))
    calls = stream.tool_calls(ToolStatus.FAILED, "not run")
    assert [(c.tool_call_id, c.name, c.input, c.status, c.output) for c in calls] == [
        ("call_a", "bash", {"command": "echo hi"}, ToolStatus.FAILED, "not run"),
        ("call_b", "read", {}, ToolStatus.FAILED, "not run"),
    ]


def test_whole_tool_calls_without_index_and_unparsable_arguments() -> None:
    stream = ChatStream()
    stream.feed(chunk({"tool_calls": [{"id": "x1", "function": {"name": "a", "arguments": {"k": 1}}}]}))
    stream.feed(chunk({"tool_calls": [{"id": "x2", "function": {"name": "b", "arguments": "{broken"}}]}))
    stream.feed(chunk({"tool_calls": [{"function": {"name": "c"}}]}))
    calls = stream.tool_calls(ToolStatus.PENDING)
    assert [(c.tool_call_id, c.name, c.input) for c in calls] == [
        ("x1", "a", {"k": 1}),
        ("x2", "b", "{broken"),  # kept as sent rather than dropped
        ("call_2", "c", {}),
    ]


@pytest.mark.parametrize(
    ("payload", "event", "expected"),
    [
        ({"error": {"message": "context too long", "code": 400}}, "", StreamError("context too long", 400)),
        ({"error": {"message": "overloaded", "type": "server_error"}}, "", StreamError("overloaded", None)),
        ({"error": "plain text"}, "", StreamError("plain text", None)),
        ({"message": "named error event", "code": 503}, "error", StreamError("named error event", 503)),
    ],
)
def test_in_stream_errors(payload: dict[str, Any], event: str, expected: StreamError) -> None:
    stream = ChatStream()
    assert stream.feed(json.dumps(payload), event) == []
    assert stream.error == expected


def test_in_stream_error_transience() -> None:
    assert StreamError("x").transient
    assert StreamError("x", 503).transient
    assert StreamError("x", 429).transient
    assert not StreamError("x", 400).transient


@pytest.mark.parametrize("data", ["not json", "[1, 2]", '"text"'])
def test_malformed_chunks_are_refused(data: str) -> None:
    with pytest.raises(MalformedChunk, match="not"):
        ChatStream().feed(data)


def test_error_message_shapes() -> None:
    assert error_message({"detail": "Not Found"}) == ("Not Found", None)
    assert error_message({"detail": [{"loc": ["body"], "msg": "bad"}]}) == ('[{"loc": ["body"], "msg": "bad"}]', None)
    assert error_message({"error": {"code": 7}}) == ('{"code": 7}', 7)
    assert error_message(["odd"]) == ("['odd']", None)
