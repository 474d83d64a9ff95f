"""NativeBackend.run_turn against the real fake model server: events, outcomes, every failure kind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import anyio
import pytest

from backends.base import (
    BackendEvent,
    HistoryMessage,
    OutcomeStatus,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolStatus,
    Turn,
    TurnOutcome,
    Usage,
)
from backends.native import (
    ModelListError,
    NativeBackend,
    NativeConfigError,
    NativeSettings,
    chat_messages,
    list_models,
    retry_after_seconds,
)
from kernel.net import free_port
from testkit import fake_model as fake
from testkit.fake_model import FakeModel, Hang, HttpError, Reply, Stall

TURN = Turn(task_id=1, session_id=1, project_id=1, input="hello")


class Recorder:
    """An ``emit`` that keeps every event."""

    def __init__(self) -> None:
        self.events: list[BackendEvent] = []

    async def __call__(self, event: BackendEvent) -> None:
        self.events.append(event)

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, TextDelta))

    @property
    def reasoning(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, ReasoningDelta))

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [e for e in self.events if isinstance(e, ToolCall)]


@pytest.fixture
async def fm() -> AsyncIterator[FakeModel]:
    async with FakeModel(models=("fake-model", "other-model")) as model:
        yield model


def backend(fm: FakeModel, **settings: Any) -> NativeBackend:
    return NativeBackend(NativeSettings(base_url=fm.base_url, model="fake-model", **settings), environ={})


async def run(fm: FakeModel, reply: fake.Scripted, turn: Turn = TURN, **settings: Any) -> tuple[TurnOutcome, Recorder]:
    fm.enqueue(reply)
    emit = Recorder()
    async with backend(fm, **settings) as native:
        outcome = await native.run_turn(turn, emit)
    return outcome, emit


# ---------------------------------------------------------------------------- success


@pytest.mark.anyio
@pytest.mark.parametrize("reasoning_field", ["reasoning_content", "reasoning"])
async def test_streams_reasoning_then_text_then_usage(fm: FakeModel, reasoning_field: fake.ReasoningField) -> None:
    reply = Reply(
        reasoning="Let me think.",
        reasoning_field=reasoning_field,
        text="Hello there, friend.",
        chunks=4,
        usage=fake.Usage(prompt_tokens=12, completion_tokens=5),
    )
    outcome, emit = await run(fm, reply)
    assert outcome == TurnOutcome.completed(stop_reason="stop", usage=Usage(12, 5))
    assert emit.reasoning == "Let me think."
    assert emit.text == "Hello there, friend."
    kinds = [type(e).__name__ for e in emit.events]
    # Deltas arrive one per chunk, in stream order; usage comes last.
    assert kinds == ["ReasoningDelta"] * 4 + ["TextDelta"] * 4 + ["Usage"]


@pytest.mark.anyio
async def test_request_carries_history_model_options_and_key(fm: FakeModel) -> None:
    history = (
        HistoryMessage("system", "Be brief."),
        HistoryMessage("user", "first question"),
        HistoryMessage("assistant", "first answer"),
    )
    turn = Turn(task_id=2, session_id=1, project_id=1, input="second question", model="other-model", history=history)
    settings = NativeSettings(
        base_url=fm.base_url,
        model="fake-model",
        api_key_env="TEST_NATIVE_KEY",
        model_options={"other-model": {"temperature": 0.1, "max_tokens": 64}, "fake-model": {"top_p": 0.5}},
    )
    fm.enqueue(Reply(text="ok"))
    async with NativeBackend(settings, environ={"TEST_NATIVE_KEY": "sk-test"}) as native:
        outcome = await native.run_turn(turn, Recorder())
    assert outcome.status is OutcomeStatus.COMPLETED
    (request,) = fm.chat_requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.body == {
        "temperature": 0.1,
        "max_tokens": 64,
        "model": "other-model",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": "second question"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_roles_alternate_even_after_a_failed_turn() -> None:
    history = (HistoryMessage("user", "first"), HistoryMessage("user", "again?"), HistoryMessage("assistant", "yes"))
    assert chat_messages(history, "thanks") == [
        {"role": "user", "content": "first\n\nagain?"},
        {"role": "assistant", "content": "yes"},
        {"role": "user", "content": "thanks"},
    ]
    assert chat_messages((HistoryMessage("user", "unanswered"),), "next") == [
        {"role": "user", "content": "unanswered\n\nnext"}
    ]


@pytest.mark.anyio
async def test_default_model_and_no_key(fm: FakeModel) -> None:
    outcome, _ = await run(fm, Reply(text="ok"))
    assert outcome.status is OutcomeStatus.COMPLETED
    (request,) = fm.chat_requests
    assert request.body["model"] == "fake-model"
    assert "authorization" not in request.headers


@pytest.mark.anyio
async def test_length_is_reported_as_the_stop_reason(fm: FakeModel) -> None:
    outcome, emit = await run(fm, Reply(text="cut sho", finish_reason="length"))
    assert outcome.status is OutcomeStatus.COMPLETED
    assert outcome.stop_reason == "length"
    assert emit.text == "cut sho"


@pytest.mark.anyio
async def test_usage_missing_when_the_server_sends_none(fm: FakeModel) -> None:
    outcome, _ = await run(fm, Reply(text="ok", usage=None))
    assert outcome == TurnOutcome.completed(stop_reason="stop", usage=None)


@pytest.mark.anyio
async def test_tool_calls_are_surfaced_as_not_run(fm: FakeModel) -> None:
    calls = (
        fake.ToolCall("bash", {"command": "ls -la"}, id="call_1", fragments=4),
        fake.ToolCall("read", {"path": "README.md"}, id="call_2"),
    )
    outcome, emit = await run(fm, Reply(text="Let me look.", tool_calls=calls))
    assert outcome.status is OutcomeStatus.COMPLETED
    assert outcome.stop_reason == "tool_calls"
    assert emit.text == "Let me look."
    assert [(c.tool_call_id, c.name, c.input, c.status) for c in emit.tool_calls] == [
        ("call_1", "bash", {"command": "ls -la"}, ToolStatus.FAILED),
        ("call_2", "read", {"path": "README.md"}, ToolStatus.FAILED),
    ]
    assert all("not run" in str(c.output) for c in emit.tool_calls)


@pytest.mark.anyio
async def test_turns_share_one_kept_alive_connection_until_closed(fm: FakeModel) -> None:
    async with backend(fm) as native:
        for n in range(3):
            fm.enqueue(Reply(text=f"answer {n}"))
            outcome = await native.run_turn(TURN, Recorder())
            assert outcome.status is OutcomeStatus.COMPLETED
        first_ports = {r.client_port for r in fm.chat_requests}
        await native.aclose()
        # Closed, the backend still works: the next turn opens a connection of its own.
        fm.enqueue(Reply(text="after close"))
        assert (await native.run_turn(TURN, Recorder())).status is OutcomeStatus.COMPLETED
    assert len(first_ports) == 1
    assert fm.chat_requests[-1].client_port not in first_ports


@pytest.mark.anyio
async def test_the_key_is_read_at_every_turn_over_the_shared_connection(fm: FakeModel) -> None:
    environ = {"TEST_NATIVE_KEY": "sk-one"}
    settings = NativeSettings(base_url=fm.base_url, model="fake-model", api_key_env="TEST_NATIVE_KEY")
    async with NativeBackend(settings, environ=environ) as native:
        fm.enqueue(Reply(text="one"))
        await native.run_turn(TURN, Recorder())
        environ["TEST_NATIVE_KEY"] = "sk-two"
        fm.enqueue(Reply(text="two"))
        await native.run_turn(TURN, Recorder())
    assert [r.headers["authorization"] for r in fm.chat_requests] == ["Bearer sk-one", "Bearer sk-two"]


# ---------------------------------------------------------------------------- failures


@pytest.mark.anyio
async def test_connection_refused_is_transient() -> None:
    settings = NativeSettings(base_url=f"http://127.0.0.1:{free_port()}/v1")
    async with NativeBackend(settings, environ={}) as native:
        outcome = await native.run_turn(TURN, Recorder())
    assert outcome.status is OutcomeStatus.FAILED
    assert outcome.stop_reason == "model_unreachable"
    assert outcome.transient
    assert settings.base_url in (outcome.error or "")


@pytest.mark.anyio
async def test_no_answer_at_all_is_a_transient_timeout(fm: FakeModel) -> None:
    outcome, emit = await run(fm, Hang(), read_timeout=0.3)
    assert (outcome.status, outcome.stop_reason, outcome.transient) == (OutcomeStatus.FAILED, "model_timeout", True)
    assert "read_timeout" in (outcome.error or "")
    assert emit.events == []


@pytest.mark.anyio
async def test_stall_mid_stream_keeps_the_partial_text(fm: FakeModel) -> None:
    reply = Reply(text=["partial ", "text", " never sent"], stall=Stall(after_events=3))
    outcome, emit = await run(fm, reply, read_timeout=0.5)
    assert (outcome.status, outcome.stop_reason, outcome.transient) == (OutcomeStatus.FAILED, "model_timeout", True)
    assert emit.text == "partial text"


@pytest.mark.anyio
async def test_request_timeout_bounds_a_slow_but_steady_stream(fm: FakeModel) -> None:
    reply = Reply(text="x" * 200, chunks=200, chunk_delay=0.05)
    outcome, emit = await run(fm, reply, request_timeout=1.0, read_timeout=5)
    assert (outcome.status, outcome.stop_reason, outcome.transient) == (OutcomeStatus.FAILED, "model_timeout", True)
    assert "request_timeout" in (outcome.error or "")
    assert len(emit.text) < 200


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (500, "model_server_error"),
        (502, "model_server_error"),
        (503, "model_server_error"),
        (429, "model_rate_limited"),
    ],
)
async def test_5xx_and_429_are_transient_and_honour_retry_after(fm: FakeModel, status: int, reason: str) -> None:
    outcome, emit = await run(fm, HttpError(status, "busy, come back later", retry_after="7"))
    assert (outcome.status, outcome.stop_reason, outcome.transient) == (OutcomeStatus.FAILED, reason, True)
    assert outcome.retry_after == 7.0
    assert f"HTTP {status}" in (outcome.error or "")
    assert "busy, come back later" in (outcome.error or "")
    assert emit.events == []


@pytest.mark.anyio
async def test_retry_after_as_an_http_date(fm: FakeModel) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    outcome, _ = await run(fm, HttpError(429, "slow down", retry_after=when))
    assert outcome.retry_after is not None
    assert 60 < outcome.retry_after <= 120


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("error", "message"),
    [
        (HttpError(401, "Incorrect API key provided"), "Incorrect API key"),
        (HttpError(404, body='{"error":"model \\"nope\\" not found, try pulling it first"}'), 'model "nope" not found'),
        (HttpError(422, body='{"detail":"Field required: messages"}'), "Field required"),
        (HttpError(404, body="<html>404 page not found</html>"), "404 page not found"),
    ],
)
async def test_4xx_is_permanent_with_the_server_message(fm: FakeModel, error: HttpError, message: str) -> None:
    outcome, _ = await run(fm, error)
    assert (outcome.status, outcome.stop_reason, outcome.transient) == (OutcomeStatus.FAILED, "model_rejected", False)
    assert message in (outcome.error or "")
    assert f"HTTP {error.status}" in (outcome.error or "")


@pytest.mark.anyio
async def test_a_context_that_does_not_fit_fails_as_context_overflow(fm: FakeModel) -> None:
    outcome, _ = await run(fm, HttpError(400, "This model's maximum context length is 4096 tokens"))
    assert (outcome.status, outcome.stop_reason, outcome.transient) == (OutcomeStatus.FAILED, "context_overflow", False)
    assert "maximum context length is 4096" in (outcome.error or "")


@pytest.mark.anyio
async def test_agent_options_are_refused(fm: FakeModel) -> None:
    outcome = await NativeBackend(NativeSettings(base_url=fm.base_url)).run_turn(
        Turn(task_id=1, session_id=1, project_id=1, input="hi", agent_options={"effort": "high"}), Recorder()
    )
    assert (outcome.status, outcome.stop_reason) == (OutcomeStatus.FAILED, "bad_input")
    assert "offers no agent options" in (outcome.error or "")


@pytest.mark.anyio
async def test_abrupt_end_keeps_the_partial_text(fm: FakeModel) -> None:
    outcome, emit = await run(fm, Reply(reasoning="thinking", text="half an ans", ending="abrupt"))
    assert (outcome.status, outcome.stop_reason, outcome.transient) == (
        OutcomeStatus.FAILED,
        "model_stream_interrupted",
        True,
    )
    assert "mid-stream" in (outcome.error or "")
    assert (emit.reasoning, emit.text) == ("thinking", "half an ans")


@pytest.mark.anyio
async def test_abrupt_end_inside_a_tool_call_still_surfaces_it(fm: FakeModel) -> None:
    reply = Reply(tool_calls=(fake.ToolCall("bash", {"command": "make"}, id="call_9"),), ending="abrupt")
    outcome, emit = await run(fm, reply)
    assert outcome.stop_reason == "model_stream_interrupted"
    assert [(c.tool_call_id, c.input, c.status) for c in emit.tool_calls] == [
        ("call_9", {"command": "make"}, ToolStatus.FAILED)
    ]


@pytest.mark.anyio
async def test_clean_end_without_finish_or_done_is_a_failure(fm: FakeModel) -> None:
    outcome, emit = await run(fm, Reply(text="no ending", ending="eof"))
    assert (outcome.status, outcome.stop_reason, outcome.transient) == (
        OutcomeStatus.FAILED,
        "model_stream_interrupted",
        True,
    )
    assert "no finish_reason and no [DONE]" in (outcome.error or "")
    assert emit.text == "no ending"


@pytest.mark.anyio
async def test_error_inside_the_stream_keeps_the_partial_text(fm: FakeModel) -> None:
    outcome, emit = await run(fm, Reply(text="so far", ending="error", error_message="CUDA out of memory"))
    assert (outcome.status, outcome.stop_reason) == (OutcomeStatus.FAILED, "model_stream_error")
    assert "CUDA out of memory" in (outcome.error or "")
    assert emit.text == "so far"


@pytest.mark.anyio
async def test_a_json_answer_instead_of_a_stream_is_a_bad_response(fm: FakeModel) -> None:
    outcome, _ = await run(fm, HttpError(200, body='{"error": "streaming is disabled"}'))
    assert (outcome.status, outcome.stop_reason, outcome.transient) == (
        OutcomeStatus.FAILED,
        "model_bad_response",
        False,
    )
    assert "application/json" in (outcome.error or "")
    assert "streaming is disabled" in (outcome.error or "")


@pytest.mark.anyio
async def test_missing_api_key_fails_without_a_request(fm: FakeModel) -> None:
    outcome, _ = await run(fm, Reply(text="unused"), api_key_env="TEST_NATIVE_MISSING_KEY")
    assert (outcome.status, outcome.stop_reason, outcome.transient) == (
        OutcomeStatus.FAILED,
        "model_config_error",
        False,
    )
    assert "TEST_NATIVE_MISSING_KEY" in (outcome.error or "")
    assert fm.requests == []


# ---------------------------------------------------------------------------- cancellation


@pytest.mark.anyio
async def test_cancellation_closes_the_stream(fm: FakeModel) -> None:
    """The server keeps writing until the client goes away; it only stops because the socket closed."""
    fm.enqueue(Reply(text="y" * 2000, chunks=2000, chunk_delay=0.01))
    first = anyio.Event()
    emit = Recorder()

    async def watch(event: BackendEvent) -> None:
        await emit(event)
        first.set()

    cancelled = False
    async with backend(fm) as native:
        async with anyio.create_task_group() as tg:

            async def turn() -> None:
                nonlocal cancelled
                try:
                    await native.run_turn(TURN, watch)
                except anyio.get_cancelled_exc_class():
                    cancelled = True
                    raise

            tg.start_soon(turn)
            await first.wait()
            tg.cancel_scope.cancel()
        assert cancelled
        assert 0 < len(emit.text) < 2000
        # The handler thread notices the closed socket on its next write and lets the connection
        # go, while the backend's shared client stays open.
        with anyio.fail_after(10):
            while fm.open_connections:
                await anyio.sleep(0.01)
        # ... and serves the next turn.
        fm.enqueue(Reply(text="next"))
        assert (await native.run_turn(TURN, Recorder())).status is OutcomeStatus.COMPLETED


# ---------------------------------------------------------------------------- models, settings


@pytest.mark.anyio
async def test_list_models(fm: FakeModel) -> None:
    assert await list_models(NativeSettings(base_url=fm.base_url), environ={}) == ["fake-model", "other-model"]


@pytest.mark.anyio
async def test_list_models_errors(fm: FakeModel) -> None:
    with pytest.raises(ModelListError, match="cannot reach"):
        await list_models(NativeSettings(base_url=f"http://127.0.0.1:{free_port()}/v1"), environ={})
    with pytest.raises(NativeConfigError, match="TEST_NATIVE_MISSING_KEY"):
        await list_models(NativeSettings(base_url=fm.base_url, api_key_env="TEST_NATIVE_MISSING_KEY"), environ={})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base_url": "localhost:8080"}, "http:// or https://"),
        ({"base_url": "ftp://host/v1"}, "http:// or https://"),
        ({"model": ""}, "model must not be empty"),
        ({"read_timeout": 0.0}, "read_timeout must be positive"),
        ({"model_options": {"m": {"stream": False, "messages": []}}}, "model_options.m may not set messages, stream"),
    ],
)
def test_settings_are_validated(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NativeSettings(**kwargs)


def test_endpoint_hides_credentials() -> None:
    assert NativeSettings(base_url="https://user:secret@example.com/v1").endpoint == "https://example.com/v1"


def test_retry_after_forms() -> None:
    assert retry_after_seconds({"retry-after": "2.5"}) == 2.5
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({"retry-after": "inf"}) is None
    assert retry_after_seconds({}) is None
    assert retry_after_seconds({"retry-after": "-3"}) == 0.0
