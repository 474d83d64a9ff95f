"""The snapshot frame: where a session stands, consistent with its last_seq."""

from __future__ import annotations

import asyncpg
import pytest

from kernel import SessionFrame, append_event, task_state
from testkit.rows import add_project, add_session, add_task
from ws_gateway.snapshot import read_snapshot

pytestmark = pytest.mark.anyio


async def test_a_session_with_messages_tools_tasks_and_a_change(pool: asyncpg.Pool) -> None:
    project = await add_project(pool)
    session = await add_session(pool, project)
    done = await add_task(pool, project, "first", session_id=session)
    queued = await add_task(pool, project, "second", session_id=session)
    await pool.execute("UPDATE tasks SET state = 'completed', ended_at = now() WHERE id = $1", done)
    message = await pool.fetchval(
        "INSERT INTO messages (session_id, task_id, role, content) VALUES ($1, $2, 'assistant', 'hi') RETURNING id",
        session,
        done,
    )
    await pool.execute(
        "INSERT INTO message_parts (message_id, session_id, tool_call_id, name, status)"
        " VALUES ($1, $2, 't1', 'ls', 'completed')",
        message,
        session,
    )
    await pool.execute(
        "INSERT INTO pending_changes (session_id, task_id, base_commit, diff) VALUES ($1, $2, $3, '')",
        session,
        done,
        "a" * 40,
    )
    seq = await append_event(pool, session, SessionFrame.TASK_STATE, task_state(done, "completed", 1))
    async with pool.acquire() as conn:
        snapshot = await read_snapshot(conn, session, message_limit=10)
    assert snapshot is not None
    assert snapshot["type"] == "snapshot" and snapshot["last_seq"] == seq
    assert snapshot["session"]["project_id"] == project
    [only] = snapshot["messages"]
    assert only["content"] == "hi" and [p["tool_call_id"] for p in only["parts"]] == ["t1"]
    assert [t["id"] for t in snapshot["tasks"]] == [queued]
    assert snapshot["pending_change"] is not None and snapshot["pending_change"]["task_id"] == done


async def test_only_the_latest_messages_and_none_for_a_missing_session(pool: asyncpg.Pool) -> None:
    session = await add_session(pool, await add_project(pool))
    for i in range(5):
        await pool.execute("INSERT INTO messages (session_id, role, content) VALUES ($1, 'user', $2)", session, str(i))
    async with pool.acquire() as conn:
        snapshot = await read_snapshot(conn, session, message_limit=2)
        assert await read_snapshot(conn, 999_999, message_limit=2) is None
    assert snapshot is not None and [m["content"] for m in snapshot["messages"]] == ["3", "4"]
    assert snapshot["pending_change"] is None and snapshot["tasks"] == []
