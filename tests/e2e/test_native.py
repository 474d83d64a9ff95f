"""Native inference end to end: a task row inserted by SQL -> dispatcher -> NativeBackend -> the
fake model over real HTTP -> frames in session_events, messages, usage and cost_tokens stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import pytest

from backends.native import NativeBackend, NativeSettings
from orchestrator.dispatch.dispatcher import Dispatcher
from orchestrator.dispatch.routing import Router
from orchestrator.dispatch.settings import DispatcherSettings
from testkit import fake_model as fake
from testkit.fake_model import FakeModel, HttpError, Reply

TERMINAL = ("completed", "failed", "cancelled")
WAIT_SECONDS = 30

INSERT_PROJECT = "INSERT INTO projects (name, repo_path) VALUES ('native', '/srv/native') RETURNING id"
INSERT_TASK = """
INSERT INTO tasks (project_id, session_id, input, max_attempts) VALUES ($1, $2, $3, $4) RETURNING id
"""
TASK = "SELECT * FROM tasks WHERE id = $1"
MESSAGES = "SELECT * FROM messages WHERE task_id = $1 ORDER BY id"
EVENTS = "SELECT seq, type, payload FROM session_events WHERE session_id = $1 ORDER BY seq"


@pytest.fixture
async def fm() -> AsyncIterator[FakeModel]:
    async with FakeModel() as model:
        yield model


@pytest.fixture
async def project(pool: asyncpg.Pool) -> int:
    project_id: int = await pool.fetchval(INSERT_PROJECT)
    return project_id


@pytest.fixture
async def dispatcher(db_url: str, fm: FakeModel) -> AsyncIterator[Dispatcher]:
    settings = DispatcherSettings(poll_interval=0.5, retry_backoff=0.05, finalize_timeout=10)
    native = NativeSettings(base_url=fm.base_url, model="fake-model", read_timeout=5)
    running = Dispatcher(db_url, settings, Router(native=lambda: NativeBackend(native)))
    async with anyio.create_task_group() as tg:
        tg.start_soon(running.run)
        yield running
        running.request_shutdown()


async def submit(pool: asyncpg.Pool, project: int, text: str, session: int | None = None, attempts: int = 1) -> int:
    task_id: int = await pool.fetchval(INSERT_TASK, project, session, text, attempts)
    return task_id


async def wait_for(pool: asyncpg.Pool, task_id: int, states: tuple[str, ...] = TERMINAL) -> asyncpg.Record:
    with anyio.fail_after(WAIT_SECONDS):
        while True:
            row = await pool.fetchrow(TASK, task_id)
            if row["state"] in states:
                return row
            await anyio.sleep(0.02)


def frames(events: list[asyncpg.Record], type_: str) -> list[dict[str, Any]]:
    return [e["payload"] for e in events if e["type"] == type_]


@pytest.mark.anyio
@pytest.mark.usefixtures("dispatcher")
async def test_sql_task_streams_deltas_and_completes(pool: asyncpg.Pool, project: int, fm: FakeModel) -> None:
    # Pauses between chunks, so the deltas land in several rows rather than one coalesced batch.
    reply = Reply(
        reasoning="Greeting time.",
        text=["Hello", " from", " the", " model."],
        chunk_delay=0.05,
        usage=fake.Usage(prompt_tokens=11, completion_tokens=7),
    )
    fm.enqueue(reply)
    task_id = await submit(pool, project, "Say hello")
    task = await wait_for(pool, task_id)

    assert (task["state"], task["failure_reason"], task["error"]) == ("completed", None, None)
    assert task["execution_path"] == "native"
    assert task["cost_tokens"] == 18
    assert task["output_summary"] == "Hello from the model."
    user, assistant = await pool.fetch(MESSAGES, task_id)
    assert (user["role"], user["content"], user["status"]) == ("user", "Say hello", "complete")
    assert (assistant["role"], assistant["status"], assistant["stop_reason"]) == ("assistant", "complete", "stop")
    assert (assistant["content"], assistant["reasoning"]) == ("Hello from the model.", "Greeting time.")
    assert (assistant["prompt_tokens"], assistant["completion_tokens"]) == (11, 7)

    events = await pool.fetch(EVENTS, task["session_id"])
    deltas = frames(events, "delta")
    assert len(deltas) > 1
    assert "".join(d["text"] for d in deltas) == "Hello from the model."
    assert "".join(d["text"] for d in frames(events, "reasoning_delta")) == "Greeting time."
    assert {d["message_id"] for d in deltas} == {assistant["id"]}
    types = [e["type"] for e in events]
    assert types[:2] == ["task_state", "message_started"]
    assert types[-2:] == ["message_complete", "task_state"]
    assert types.index("reasoning_delta") < types.index("delta")
    (complete,) = frames(events, "message_complete")
    assert (complete["status"], complete["stop_reason"], complete["prompt_tokens"], complete["completion_tokens"]) == (
        "complete",
        "stop",
        11,
        7,
    )
    assert frames(events, "task_state")[-1]["state"] == "completed"
    (request,) = fm.chat_requests
    assert request.messages == [{"role": "user", "content": "Say hello"}]


@pytest.mark.anyio
async def test_turns_share_the_dispatchers_connection_which_shutdown_closes(
    db_url: str, pool: asyncpg.Pool, project: int, fm: FakeModel
) -> None:
    settings = DispatcherSettings(poll_interval=0.5, finalize_timeout=10)
    native = NativeSettings(base_url=fm.base_url, model="fake-model")
    dispatcher = Dispatcher(db_url, settings, Router(native=lambda: NativeBackend(native)))
    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatcher.run)
        session = None
        for n in range(3):
            fm.enqueue(Reply(text=f"answer {n}"))
            task = await wait_for(pool, await submit(pool, project, f"question {n}", session))
            assert task["state"] == "completed"
            session = task["session_id"]
        assert fm.open_connections == 1
        dispatcher.request_shutdown()
    assert len({r.client_port for r in fm.chat_requests}) == 1
    with anyio.fail_after(10):
        while fm.open_connections:
            await anyio.sleep(0.02)


@pytest.mark.anyio
@pytest.mark.usefixtures("dispatcher")
async def test_second_task_sees_the_first_exchange(pool: asyncpg.Pool, project: int, fm: FakeModel) -> None:
    fm.enqueue(Reply(text="Paris.", finish_reason="length"), Reply(text="About 2 million."))
    first = await wait_for(pool, await submit(pool, project, "Capital of France?"))
    assert (first["state"], first["cost_tokens"]) == ("completed", 120)
    second = await wait_for(pool, await submit(pool, project, "How many people live there?", first["session_id"]))
    assert second["state"] == "completed"
    assert second["session_id"] == first["session_id"]
    assert [r.messages for r in fm.chat_requests] == [
        [{"role": "user", "content": "Capital of France?"}],
        [
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "How many people live there?"},
        ],
    ]
    (_, assistant) = await pool.fetch(MESSAGES, first["id"])
    assert assistant["stop_reason"] == "length"


@pytest.mark.anyio
@pytest.mark.usefixtures("dispatcher")
@pytest.mark.parametrize(
    ("reply", "reason", "error", "partial"),
    [
        (HttpError(400, "maximum context length exceeded"), "context_overflow", "maximum context length exceeded", ""),
        (HttpError(400, "unknown parameter: top_k"), "model_rejected", "unknown parameter: top_k", ""),
        (Reply(text=["half ", "a reply"], ending="abrupt"), "model_stream_interrupted", "mid-stream", "half a reply"),
        (
            Reply(text="so far", ending="error", error_message="KV cache full"),
            "model_stream_error",
            "KV cache",
            "so far",
        ),
    ],
)
async def test_failures_keep_the_partial_reply(
    pool: asyncpg.Pool, project: int, fm: FakeModel, reply: fake.Scripted, reason: str, error: str, partial: str
) -> None:
    fm.enqueue(reply)
    task = await wait_for(pool, await submit(pool, project, "Tell me a story"))
    assert (task["state"], task["failure_reason"]) == ("failed", reason)
    assert error in task["error"]
    _, assistant = await pool.fetch(MESSAGES, task["id"])
    assert (assistant["status"], assistant["content"]) == ("failed", partial)
    events = await pool.fetch(EVENTS, task["session_id"])
    assert "".join(d["text"] for d in frames(events, "delta")) == partial
    (complete,) = frames(events, "message_complete")
    assert (complete["status"], complete["stop_reason"]) == ("failed", reason)
    assert error in complete["error"]


@pytest.mark.anyio
@pytest.mark.usefixtures("dispatcher")
async def test_transient_failure_is_retried_then_completes(pool: asyncpg.Pool, project: int, fm: FakeModel) -> None:
    fm.enqueue(HttpError(503, "loading model", retry_after="0"), Reply(text="Ready now."))
    task = await wait_for(pool, await submit(pool, project, "Are you there?", attempts=2))
    assert (task["state"], task["attempt"], task["failure_reason"]) == ("completed", 2, None)
    attempts = await pool.fetch(
        "SELECT outcome, failure_reason FROM task_attempts WHERE task_id = $1 ORDER BY attempt", task["id"]
    )
    assert [(a["outcome"], a["failure_reason"]) for a in attempts] == [
        ("retry", "model_server_error"),
        ("completed", None),
    ]
    # The retry asks the same question once: the failed attempt's user message is not context.
    assert [r.messages for r in fm.chat_requests] == [[{"role": "user", "content": "Are you there?"}]] * 2


@pytest.mark.anyio
@pytest.mark.usefixtures("dispatcher")
async def test_rate_limit_honours_retry_after(pool: asyncpg.Pool, project: int, fm: FakeModel) -> None:
    fm.enqueue(HttpError(429, "too many requests", retry_after="120"))
    task_id = await submit(pool, project, "Hurry", attempts=2)
    with anyio.fail_after(WAIT_SECONDS):
        while not await pool.fetchval("SELECT ended_at FROM task_attempts WHERE task_id = $1 AND attempt = 1", task_id):
            await anyio.sleep(0.02)
    task = await pool.fetchrow(TASK, task_id)
    assert (task["state"], task["failure_reason"]) == ("pending", "model_rate_limited")
    wait = await pool.fetchval(
        "SELECT extract(epoch FROM not_before - clock_timestamp()) FROM tasks WHERE id = $1", task_id
    )
    assert 100 < wait <= 120


@pytest.mark.anyio
@pytest.mark.usefixtures("dispatcher")
async def test_cancel_closes_the_model_stream(pool: asyncpg.Pool, project: int, fm: FakeModel) -> None:
    fm.enqueue(Reply(text="z" * 3000, chunks=3000, chunk_delay=0.01))
    task_id = await submit(pool, project, "Write forever")
    with anyio.fail_after(WAIT_SECONDS):
        while not await pool.fetchval("SELECT count(*) FROM session_events WHERE type = 'delta'"):
            await anyio.sleep(0.02)
    await pool.execute("UPDATE tasks SET cancel_requested_at = now() WHERE id = $1", task_id)
    task = await wait_for(pool, task_id)
    assert (task["state"], task["failure_reason"]) == ("cancelled", "cancelled")
    _, assistant = await pool.fetch(MESSAGES, task_id)
    assert assistant["status"] == "cancelled"
    assert 0 < len(assistant["content"]) < 3000
    with anyio.fail_after(WAIT_SECONDS):
        while fm.open_connections:
            await anyio.sleep(0.02)
