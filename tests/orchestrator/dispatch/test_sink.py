"""The turn sink: buffered frames and message rows, written in order, visible while the turn runs."""

from __future__ import annotations

import anyio
import asyncpg
import pytest

from backends.base import ReasoningDelta, TextDelta, ToolCall, ToolStatus
from kernel.eventlog import task_state
from orchestrator.dispatch.sink import FlushScheduler, MessageEnd, TurnSink
from testkit.rows import add_project, add_session, add_task
from tests.dispatching import events, holds, wait_for

pytestmark = pytest.mark.anyio


async def test_flusher_streams_while_the_turn_runs_and_coalesces(pool: asyncpg.Pool) -> None:
    project = await add_project(pool)
    session = await add_session(pool, project)
    task_id = await add_task(pool, project, "q", session_id=session)
    flusher = FlushScheduler(pool, coalesce=0.05, flush_limit=5.0)
    sink = TurnSink(task_id, session, "q", attempt=1, on_output=flusher.schedule)
    sink.add_task_state(task_state(task_id, "running", 1))
    sink.open_message()
    async with anyio.create_task_group() as tg:
        tg.start_soon(flusher.run)
        for piece in ("a", "b", "c"):
            await sink.emit(TextDelta(piece))
        await wait_for(holds(lambda: sink.message_id is not None), "the first flush")
        await wait_for(lambda: _has(pool, session, "delta"), "the delta frame")
        await sink.emit(ToolCall("t1", "read", ToolStatus.PENDING))
        await sink.emit(ToolCall("t1", "read", ToolStatus.COMPLETED, output="done"))
        await sink.emit(ReasoningDelta("hm"))
        await wait_for(lambda: _has(pool, session, "reasoning_delta"), "the second flush")
        tg.cancel_scope.cancel()
    frames = await events(pool, session)
    message = sink.message_id
    assert frames == [
        ("task_state", {"task_id": task_id, "state": "running", "attempt": 1}),
        ("message_started", {"message_id": message, "task_id": task_id, "role": "assistant"}),
        ("delta", {"message_id": message, "text": "abc"}),
        # Two snapshots of one tool call in one batch: only the newer one is written.
        (
            "tool_call",
            {
                "message_id": message,
                "tool_call_id": "t1",
                "name": "read",
                "kind": None,
                "status": "completed",
                "input": None,
                "output": "done",
                "locations": [],
            },
        ),
        ("reasoning_delta", {"message_id": message, "text": "hm"}),
    ]
    row = await pool.fetchrow("SELECT content, reasoning, status FROM messages WHERE id = $1", message)
    assert (row["content"], row["reasoning"], row["status"]) == ("abc", "hm", "streaming")
    assert await pool.fetchval("SELECT status FROM message_parts WHERE message_id = $1", message) == "completed"


async def test_a_failed_write_puts_the_batch_back_in_order(pool: asyncpg.Pool) -> None:
    project = await add_project(pool)
    session = await add_session(pool, project)
    task_id = await add_task(pool, project, "q", session_id=session)
    sink = TurnSink(task_id, session, "q", attempt=1)
    sink.open_message()
    await sink.emit(TextDelta("first "))
    batch = sink.take()
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.PostgresError):
            async with conn.transaction():
                await sink.write(conn, batch)
                await conn.execute("SELECT 1/0")
    sink.put_back(batch)
    assert sink.message_id is None  # the insert was rolled back with the rest
    await sink.emit(TextDelta("second"))
    sink.end_message(MessageEnd("complete", "end_turn", None, None))
    await sink.flush(pool)
    row = await pool.fetchrow("SELECT content, status FROM messages WHERE role = 'assistant'")
    assert (row["content"], row["status"]) == ("first second", "complete")
    assert [t for t, _ in await events(pool, session)] == ["message_started", "delta", "message_complete"]
    assert await pool.fetchval("SELECT count(*) FROM messages WHERE role = 'user'") == 1


async def test_nothing_is_written_without_a_session_of_its_own(pool: asyncpg.Pool) -> None:
    sink = TurnSink(1, None, "q", attempt=1)
    sink.add_task_state(task_state(1, "failed", 1, "session_project_mismatch", "no"))
    sink.open_message()
    await sink.emit(TextDelta("x"))
    assert sink.take().frames == []


async def _has(pool: asyncpg.Pool, session: int, type_: str) -> bool:
    return bool(
        await pool.fetchval("SELECT count(*) FROM session_events WHERE session_id = $1 AND type = $2", session, type_)
    )
