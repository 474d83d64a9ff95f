"""The fake model speaks correct OpenAI-style SSE for every scripted reply kind (httpx + httpx-sse)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse, connect_sse

from testkit.fake_model import (
    TITLE,
    FakeModel,
    Hang,
    HttpError,
    ReasoningField,
    RecordedRequest,
    Reply,
    Stall,
    ToolCall,
    Usage,
)

USER = [{"role": "user", "content": "hello there"}]
TITLE_SYSTEM = "You are a title generator. You output ONLY a thread title. Nothing else."
OPENCODE_SYSTEM = "You are opencode.\n<env>\n  Working directory: /srv/proj\n</env>"
TOOLS = [{"type": "function", "function": {"name": n, "parameters": {}}} for n in ("bash", "write")]


@pytest.fixture
def fm() -> Iterator[FakeModel]:
    with FakeModel() as model:
        yield model


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def chat_body(messages: list[dict[str, Any]] = USER, *, usage: bool = True, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "fake-model", "messages": messages, "stream": True, **extra}
    if usage:
        body["stream_options"] = {"include_usage": True}
    return body


def stream(client: httpx.Client, fm: FakeModel, body: dict[str, Any]) -> list[Any]:
    """All SSE data payloads (parsed JSON, or the literal "[DONE]")."""
    with connect_sse(client, "POST", f"{fm.base_url}/chat/completions", json=body) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        return [e.data if e.data == "[DONE]" else json.loads(e.data) for e in source.iter_sse()]


def deltas(events: list[Any]) -> list[dict[str, Any]]:
    return [e["choices"][0]["delta"] for e in events if isinstance(e, dict) and e.get("choices")]


def finish_reasons(events: list[Any]) -> list[str]:
    return [
        e["choices"][0]["finish_reason"]
        for e in events
        if isinstance(e, dict) and e.get("choices") and e["choices"][0]["finish_reason"]
    ]


def merge_tool_calls(events: list[Any]) -> dict[int, dict[str, str]]:
    calls: dict[int, dict[str, str]] = {}
    for delta in deltas(events):
        for fragment in delta.get("tool_calls", []):
            call = calls.setdefault(fragment["index"], {"id": "", "name": "", "arguments": ""})
            call["id"] = fragment.get("id") or call["id"]
            call["name"] = fragment.get("function", {}).get("name") or call["name"]
            call["arguments"] += fragment.get("function", {}).get("arguments", "")
    return calls


def test_text_in_chunks_with_usage_chunk_and_done(fm: FakeModel, client: httpx.Client) -> None:
    fm.enqueue(Reply(text="Hello, streaming world", chunks=4, usage=Usage(7, 3)))
    events = stream(client, fm, chat_body())

    assert events[-1] == "[DONE]"
    texts = [d["content"] for d in deltas(events) if d.get("content")]
    assert len(texts) == 4
    assert "".join(texts) == "Hello, streaming world"
    assert deltas(events)[0]["role"] == "assistant"
    assert finish_reasons(events) == ["stop"]
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])


def test_usage_chunk_only_when_requested(fm: FakeModel, client: httpx.Client) -> None:
    fm.enqueue(Reply(text="no usage"))
    events = stream(client, fm, chat_body(usage=False))
    assert not any("usage" in e for e in events if isinstance(e, dict))
    assert events[-1] == "[DONE]"


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_in_either_field(fm: FakeModel, client: httpx.Client, field: ReasoningField) -> None:
    fm.enqueue(Reply(reasoning=("Let me ", "think."), reasoning_field=field, text="Answer"))
    events = stream(client, fm, chat_body())
    thought = "".join(d.get(field) or "" for d in deltas(events))
    other = "reasoning" if field == "reasoning_content" else "reasoning_content"
    assert thought == "Let me think."
    assert not any(other in d for d in deltas(events))
    assert "".join(d.get("content") or "" for d in deltas(events)) == "Answer"


def test_parallel_tool_calls_stream_as_fragments_merged_by_index(fm: FakeModel, client: httpx.Client) -> None:
    fm.enqueue(
        Reply(
            tool_calls=(
                ToolCall("bash", {"command": "echo hi"}, id="call_a", fragments=4),
                ToolCall("write", {"filePath": "/x/y.txt", "content": "data\n"}),
            )
        )
    )
    events = stream(client, fm, chat_body(tools=TOOLS))
    fragments = [f for d in deltas(events) for f in d.get("tool_calls", [])]
    assert len(fragments) > 2  # really fragmented, not one chunk per call
    calls = merge_tool_calls(events)
    assert calls[0]["id"] == "call_a"
    assert calls[0]["name"] == "bash"
    assert json.loads(calls[0]["arguments"]) == {"command": "echo hi"}
    assert calls[1]["id"].startswith("call_fake_")
    assert json.loads(calls[1]["arguments"]) == {"filePath": "/x/y.txt", "content": "data\n"}
    assert finish_reasons(events) == ["tool_calls"]


def test_finish_reason_length_and_chunk_delay(fm: FakeModel, client: httpx.Client) -> None:
    fm.enqueue(Reply(text="truncat", chunks=3, chunk_delay=0.01, finish_reason="length"))
    events = stream(client, fm, chat_body())
    assert finish_reasons(events) == ["length"]
    assert "".join(d.get("content") or "" for d in deltas(events)) == "truncat"


@pytest.mark.parametrize(
    ("error", "expected_body"),
    [
        (HttpError(500), {"error": {"message": "fake internal error", "type": "server_error", "code": 500}}),
        (HttpError(429, "slow down", retry_after="3"), None),
        (HttpError(400, body='{"error": "context too long"}'), {"error": "context too long"}),
    ],
)
def test_http_errors(
    fm: FakeModel, client: httpx.Client, error: HttpError, expected_body: dict[str, Any] | None
) -> None:
    fm.enqueue(error)
    response = client.post(f"{fm.base_url}/chat/completions", json=chat_body())
    assert response.status_code == error.status
    assert response.headers.get("retry-after") == error.retry_after
    if expected_body is not None:
        assert response.json() == expected_body
    else:
        assert response.json()["error"]["message"] == "slow down"


def test_finite_stall_then_the_stream_completes(fm: FakeModel, client: httpx.Client) -> None:
    fm.enqueue(Reply(text="after the pause", chunks=2, stall=Stall(after_events=1, seconds=0.2)))
    events = stream(client, fm, chat_body())
    assert "".join(d.get("content") or "" for d in deltas(events)) == "after the pause"
    assert events[-1] == "[DONE]"


def test_stall_hangs_until_shutdown_then_connection_is_cut(client: httpx.Client) -> None:
    fm = FakeModel().start()
    try:
        fm.enqueue(Reply(text="partial", stall=Stall(after_events=2)))
        with connect_sse(client, "POST", f"{fm.base_url}/chat/completions", json=chat_body()) as source:
            events = source.iter_sse()
            assert json.loads(next(events).data)["choices"][0]["delta"]["role"] == "assistant"
            assert json.loads(next(events).data)["choices"][0]["delta"]["content"] == "partial"
            closer = threading.Thread(target=fm.close)
            closer.start()
            with pytest.raises(httpx.RemoteProtocolError):
                next(events)
            closer.join()
    finally:
        fm.close()


def test_stall_is_a_hang_a_read_timeout_can_see(fm: FakeModel) -> None:
    fm.enqueue(Reply(text="never", stall=Stall(after_events=0)))
    with (
        httpx.Client(timeout=httpx.Timeout(5, read=0.3)) as client,
        connect_sse(client, "POST", f"{fm.base_url}/chat/completions", json=chat_body()) as source,
    ):
        assert source.response.status_code == 200  # headers came, then nothing
        with pytest.raises(httpx.ReadTimeout):
            next(source.iter_sse())


def test_abrupt_end_cuts_the_stream_without_finish_or_done(fm: FakeModel, client: httpx.Client) -> None:
    fm.enqueue(Reply(text="cut short", chunks=2, ending="abrupt"))
    seen: list[Any] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        connect_sse(client, "POST", f"{fm.base_url}/chat/completions", json=chat_body()) as source,
    ):
        for event in source.iter_sse():
            seen.append(event.data if event.data == "[DONE]" else json.loads(event.data))
    assert "".join(d.get("content") or "" for d in deltas(seen)) == "cut short"
    assert "[DONE]" not in seen
    assert finish_reasons(seen) == []


def test_mid_stream_error_event(fm: FakeModel, client: httpx.Client) -> None:
    fm.enqueue(Reply(text="half", ending="error", error_message="model crashed"))
    events = stream(client, fm, chat_body())
    errors = [e for e in events if isinstance(e, dict) and "error" in e]
    assert errors == [{"error": {"message": "model crashed", "type": "server_error", "code": 500}}]
    assert finish_reasons(events) == []


def test_non_streaming_completion(fm: FakeModel, client: httpx.Client) -> None:
    fm.enqueue(Reply(text="whole answer", reasoning="why", tool_calls=(ToolCall("bash", {"command": "ls"}),)))
    response = client.post(f"{fm.base_url}/chat/completions", json=chat_body(stream=False))
    body = response.json()
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"]["content"] == "whole answer"
    assert choice["message"]["reasoning_content"] == "why"
    assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {"command": "ls"}
    assert choice["finish_reason"] == "tool_calls"
    assert body["usage"]["total_tokens"] == 120


def test_models_listing_and_unknown_route(client: httpx.Client) -> None:
    with FakeModel(models=("a-model", "b-model")) as fm:
        listing = client.get(f"{fm.base_url}/models").json()
        assert [m["id"] for m in listing["data"]] == ["a-model", "b-model"]
        assert client.post(f"{fm.base_url}/embeddings", json={}).status_code == 404
        assert client.post(f"{fm.base_url}/chat/completions", content=b"not json").status_code == 400


def test_requests_are_recorded_with_headers_and_body(fm: FakeModel, client: httpx.Client) -> None:
    stream(client, fm, chat_body())
    [recorded] = fm.requests
    assert recorded.path == "/v1/chat/completions"
    assert recorded.body["messages"] == USER
    assert recorded.headers["content-type"] == "application/json"
    assert recorded.last_user_text == "hello there"


def test_title_requests_get_a_title_and_leave_scripts_alone(fm: FakeModel, client: httpx.Client) -> None:
    fm.enqueue(Reply(text="scripted main answer"))
    title = stream(client, fm, chat_body([{"role": "system", "content": TITLE_SYSTEM}, *USER]))
    assert "".join(d.get("content") or "" for d in deltas(title)) == TITLE
    main = stream(client, fm, chat_body())
    assert "".join(d.get("content") or "" for d in deltas(main)) == "scripted main answer"
    assert [r.is_title for r in fm.requests] == [True, False]
    assert len(fm.chat_requests) == 1


def test_scripts_can_match_on_a_predicate(fm: FakeModel, client: httpx.Client) -> None:
    def mentions_b(r: RecordedRequest) -> bool:
        return "b" in r.last_user_text.split()

    fm.enqueue(Reply(text="for b"), when=mentions_b)
    first = stream(client, fm, chat_body([{"role": "user", "content": "a"}]))
    assert "for b" not in json.dumps(first)
    assert fm.pending_replies == 1
    second = stream(client, fm, chat_body([{"role": "user", "content": "b"}]))
    assert "".join(d.get("content") or "" for d in deltas(second)) == "for b"


def test_keyword_write_file_calls_write_then_answers_the_tool_result(fm: FakeModel, client: httpx.Client) -> None:
    system = {"role": "system", "content": OPENCODE_SYSTEM}
    prompt = {"role": "user", "content": '"WRITE_FILE notes/a.txt TOKEN42"'}  # as `opencode run` quotes it
    events = stream(client, fm, chat_body([system, prompt], tools=TOOLS))
    [call] = merge_tool_calls(events).values()
    assert call["name"] == "write"
    assert json.loads(call["arguments"]) == {"filePath": "/srv/proj/notes/a.txt", "content": "TOKEN42\n"}

    history: list[dict[str, Any]] = [
        system,
        prompt,
        {"role": "assistant", "tool_calls": [{"id": call["id"], "type": "function", "function": call}]},
        {"role": "tool", "tool_call_id": call["id"], "content": "Wrote file successfully."},
    ]
    final = stream(client, fm, chat_body(history, tools=TOOLS))
    assert merge_tool_calls(final) == {}
    assert "Wrote file successfully." in "".join(d.get("content") or "" for d in deltas(final))
    assert finish_reasons(final) == ["stop"]


def test_keyword_sleep_tool_fail_500_and_echo(fm: FakeModel, client: httpx.Client) -> None:
    sleep = stream(client, fm, chat_body([{"role": "user", "content": "please SLEEP_TOOL"}], tools=TOOLS))
    [call] = merge_tool_calls(sleep).values()
    assert call["name"] == "bash"
    assert json.loads(call["arguments"])["command"] == "sleep 30"

    for _ in range(2):
        failing = client.post(
            f"{fm.base_url}/chat/completions", json=chat_body([{"role": "user", "content": "FAIL_500"}])
        )
        assert failing.status_code == 500

    echo = stream(client, fm, chat_body([{"role": "user", "content": "tell me a story"}]))
    assert "tell me a story" in "".join(d.get("content") or "" for d in deltas(echo))


def test_keyword_hang_never_answers(fm: FakeModel) -> None:
    fm.enqueue(Hang(seconds=0.1))  # a scripted hang is cut after its time
    with httpx.Client(timeout=5) as client, pytest.raises(httpx.RemoteProtocolError):
        client.post(f"{fm.base_url}/chat/completions", json=chat_body())
    with httpx.Client(timeout=httpx.Timeout(5, read=0.3)) as client, pytest.raises(httpx.ReadTimeout):
        client.post(f"{fm.base_url}/chat/completions", json=chat_body([{"role": "user", "content": "HANG"}]))


def test_wait_for_requests(fm: FakeModel, client: httpx.Client) -> None:
    thread = threading.Thread(target=lambda: stream(client, fm, chat_body()))
    thread.start()
    [request] = fm.wait_for_requests(1)
    thread.join()
    assert request.is_chat
    with pytest.raises(TimeoutError):
        fm.wait_for_requests(2, timeout=0.1)


@pytest.mark.anyio
async def test_usable_from_async_code() -> None:
    async with FakeModel() as fm, httpx.AsyncClient(timeout=10) as client:
        fm.enqueue(Reply(text="async hello", chunks=2))
        async with aconnect_sse(client, "POST", f"{fm.base_url}/chat/completions", json=chat_body()) as source:
            data = [e.data async for e in source.aiter_sse()]
    assert data[-1] == "[DONE]"
    assert "".join(d.get("content") or "" for d in deltas([json.loads(x) for x in data[:-1]])) == "async hello"
