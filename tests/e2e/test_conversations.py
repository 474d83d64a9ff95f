"""Conversations that survive turns, and fresh contexts: task rows -> an in-process dispatcher with
the configured router -> the real ``opencode acp`` (which resumes its session), the fake ACP agent
(which cannot, so it gets a transcript), native inference -> the fake model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from backends import AgentConfig, NativeSettings, OpencodeSettings
from orchestrator.app.config import Config
from orchestrator.app.wiring import build_router
from orchestrator.dispatch import Dispatcher, DispatcherSettings
from testkit import fake_acp_agent_command
from testkit.fake_model import FakeModel, HttpError, RecordedRequest, message_text
from testkit.repos import sample_repo
from testkit.rows import add_project, add_task
from tests.dispatching import wait_state
from worktrees import WorktreeManager, WorktreeSettings

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leftover_processes")]

TRANSCRIPT = "Earlier conversation in this session"


@pytest.fixture
async def project(pool: asyncpg.Pool, tmp_path: Path) -> int:
    return await add_project(pool, "conversations", sample_repo(tmp_path / "project"))


@pytest.fixture
async def dispatcher(db_url: str, pool: asyncpg.Pool, fake_model: FakeModel, tmp_path: Path) -> AsyncIterator[None]:
    config = Config(
        data_dir=tmp_path / "data",
        native=NativeSettings(base_url=fake_model.base_url, model="fake-model"),
        opencode=OpencodeSettings(base_url=fake_model.base_url, models=("fake-model",)),
        agents={"fake": AgentConfig(transport="acp", command=tuple(fake_acp_agent_command()))},
    )
    worktrees = WorktreeManager(pool, WorktreeSettings(root=tmp_path / "worktrees"))
    settings = DispatcherSettings(poll_interval=0.5, retry_backoff=0.05, finalize_timeout=10)
    running = Dispatcher(db_url, settings, build_router(config), worktrees)
    async with anyio.create_task_group() as tg:
        tg.start_soon(running.run)
        yield
        running.request_shutdown()


async def turn(
    pool: asyncpg.Pool, project: int, text: str, session: int | None = None, **columns: Any
) -> asyncpg.Record:
    task_id = await add_task(pool, project, text, session_id=session, **columns)
    return await wait_state(pool, task_id, "completed", "failed", "cancelled", timeout=90)


async def reply(pool: asyncpg.Pool, task: asyncpg.Record) -> str:
    content: str = await pool.fetchval(
        "SELECT content FROM messages WHERE task_id = $1 AND role = 'assistant' ORDER BY id DESC LIMIT 1", task["id"]
    )
    return content


def answering(fake_model: FakeModel, text: str) -> RecordedRequest:
    return next(r for r in reversed(fake_model.chat_requests) if r.last_user_text == text)


def user_texts(request: RecordedRequest) -> list[str]:
    return [message_text(m) for m in request.messages if m.get("role") == "user"]


@pytest.mark.usefixtures("dispatcher")
@pytest.mark.slow
async def test_opencode_acp_resumes_its_session_and_switchyard_resends_nothing(
    pool: asyncpg.Pool, project: int, fake_model: FakeModel
) -> None:
    first = await turn(pool, project, "remember ALPHA-CODEWORD", agent="opencode-acp")
    assert (first["state"], first["error"]) == ("completed", None)
    session = first["session_id"]
    upstream = await pool.fetchval("SELECT upstream_session_id FROM agent_sessions WHERE session_id = $1", session)
    assert upstream is not None

    second = await turn(pool, project, "what was the codeword?", session, agent="opencode-acp")
    assert (second["state"], second["error"]) == ("completed", None)
    request = answering(fake_model, "what was the codeword?")
    # opencode's own session carries the first turn: the model sees it, Switchyard sent only the new input.
    assert user_texts(request) == ["remember ALPHA-CODEWORD", "what was the codeword?"]
    assert TRANSCRIPT not in request.system_text
    assert (
        await pool.fetchval("SELECT upstream_session_id FROM agent_sessions WHERE session_id = $1", session) == upstream
    )

    # A fresh context: a new opencode session, without the earlier turns.
    fresh = await turn(pool, project, "start over please", session, agent="opencode-acp", fresh_context=True)
    assert fresh["state"] == "completed"
    assert user_texts(answering(fake_model, "start over please")) == ["start over please"]
    renewed = await pool.fetchval("SELECT upstream_session_id FROM agent_sessions WHERE session_id = $1", session)
    assert renewed not in (None, upstream)
    statuses = await pool.fetch("SELECT payload FROM session_events WHERE session_id = $1 AND type = 'status'", session)
    assert [s["payload"]["state"] for s in statuses] == ["fresh_context"]

    # The turn after it continues from the fresh one, not from before it.
    after = await turn(pool, project, "and now?", session, agent="opencode-acp")
    assert after["state"] == "completed"
    assert user_texts(answering(fake_model, "and now?")) == ["start over please", "and now?"]


@pytest.mark.usefixtures("dispatcher")
async def test_an_agent_that_cannot_resume_gets_a_bounded_transcript(pool: asyncpg.Pool, project: int) -> None:
    first = await turn(pool, project, "hello BRAVO", agent="fake")
    session = first["session_id"]
    second = await turn(pool, project, "hello again", session, agent="fake")
    echoed = await reply(pool, second)
    assert TRANSCRIPT in echoed and "user: hello BRAVO" in echoed and "assistant: Done: echo hello BRAVO" in echoed
    assert echoed.rstrip().endswith("hello again")

    fresh = await turn(pool, project, "hello fresh", session, agent="fake", fresh_context=True)
    assert await reply(pool, fresh) == "Done: echo hello fresh"
    after = await turn(pool, project, "hello after", session, agent="fake")
    echoed = await reply(pool, after)
    assert "user: hello fresh" in echoed and "hello BRAVO" not in echoed


@pytest.mark.usefixtures("dispatcher")
async def test_a_context_overflow_makes_the_next_turn_fresh_and_says_so(
    pool: asyncpg.Pool, project: int, fake_model: FakeModel
) -> None:
    first = await turn(pool, project, "a long conversation", agent="native")
    session = first["session_id"]
    fake_model.enqueue(HttpError(400, "This model's maximum context length is 4096 tokens"))
    overflowed = await turn(pool, project, "one more", session, agent="native")
    assert (overflowed["state"], overflowed["failure_reason"]) == ("failed", "context_overflow")

    recovered = await turn(pool, project, "so, where were we?", session, agent="native")
    assert recovered["state"] == "completed"
    assert recovered["fresh_context"] is True
    request = answering(fake_model, "so, where were we?")
    assert [m.get("role") for m in request.messages] == ["user"]
    [status] = await pool.fetch("SELECT payload FROM session_events WHERE session_id = $1 AND type = 'status'", session)
    assert status["payload"]["state"] == "fresh_context"
    assert "context_overflow" in status["payload"]["detail"]
