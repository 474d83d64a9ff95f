"""The dispatcher in process, against a real PostgreSQL, with the noop and scripted backends."""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from backends import AgentSpec, PtyBackend
from backends.base import (
    AgentCommands,
    AgentSession,
    ReasoningDelta,
    Status,
    TextDelta,
    ToolCall,
    ToolStatus,
    Turn,
    TurnOutcome,
    Usage,
)
from orchestrator.db.embedded import EmbeddedPostgres
from orchestrator.dispatch.dispatcher import Dispatcher
from orchestrator.dispatch.routing import Router
from orchestrator.errors import NotFound
from orchestrator.services.review import ReviewService
from orchestrator.services.tasks import cancel_task, submit_task
from testkit.repos import sample_repo
from testkit.rows import add_project, add_session, add_task
from testkit.scripted_backend import ScriptedBackend
from tests.dispatching import events, holds, running_dispatcher, task, wait_for, wait_state
from worktrees import WorktreeSettings
from ws_gateway.actions import TaskSubmission

pytestmark = pytest.mark.anyio


def router(**agents: ScriptedBackend) -> Router:
    return Router(agents={name: (lambda b=backend: b) for name, backend in agents.items()})


async def attempts(pool: asyncpg.Pool, task_id: int) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT * FROM task_attempts WHERE task_id = $1 ORDER BY attempt", task_id
    )
    return rows


# ---------------------------------------------------------------------------- a turn's record


async def test_noop_turn_writes_messages_frames_and_attempt(db_url: str, pool: asyncpg.Pool) -> None:
    project = await add_project(pool)
    session = await add_session(pool, project)
    async with running_dispatcher(db_url) as dispatcher:
        task_id = await add_task(pool, project, "hello there", session_id=session)
        row = await wait_state(pool, task_id, "completed")
    assert (row["attempt"], row["execution_path"], row["output_summary"]) == (1, "noop", "hello there")
    assert row["claimed_by"] == dispatcher.worker_id and row["failure_reason"] is None and row["cost_tokens"] == 0
    messages = await pool.fetch("SELECT id, role, content, status, task_id FROM messages ORDER BY id")
    assert [(m["role"], m["content"], m["status"], m["task_id"]) for m in messages] == [
        ("user", "hello there", "complete", task_id),
        ("assistant", "hello there", "complete", task_id),
    ]
    reply = messages[1]["id"]
    assert await events(pool, session) == [
        ("task_state", {"task_id": task_id, "state": "running", "attempt": 1}),
        ("message_started", {"message_id": reply, "task_id": task_id, "role": "assistant"}),
        ("delta", {"message_id": reply, "text": "hello there"}),
        (
            "message_complete",
            {
                "message_id": reply,
                "task_id": task_id,
                "status": "complete",
                "stop_reason": "end_turn",
                "prompt_tokens": 0,
                "completion_tokens": 0,
            },
        ),
        ("task_state", {"task_id": task_id, "state": "completed", "attempt": 1}),
    ]
    [attempt] = await attempts(pool, task_id)
    assert attempt["outcome"] == "completed" and attempt["worker_id"] == dispatcher.worker_id
    assert attempt["started_at"] < attempt["ended_at"]


async def test_every_backend_event_becomes_its_frame_and_rows(db_url: str, pool: asyncpg.Pool) -> None:
    call = ToolCall("call-1", "read", ToolStatus.IN_PROGRESS, kind="read", input={"path": "a.txt"})
    backend = ScriptedBackend(
        events=[
            ReasoningDelta("thinking "),
            ReasoningDelta("hard"),
            TextDelta("Hel"),
            TextDelta("lo"),
            call,
            ToolCall("call-1", "read", ToolStatus.COMPLETED, kind="read", input={"path": "a.txt"}, output="ok"),
            AgentCommands([{"name": "init", "description": "set up"}]),
            Status("retrying", "429"),
            Usage(10, 3),
            Usage(5, 2),
        ],
        outcomes=[TurnOutcome.completed("end_turn", agent_session=AgentSession("up-1", "hash"))],
    )
    project = await add_project(pool)
    session = await add_session(pool, project)
    async with running_dispatcher(db_url, router(scripted=backend)):
        task_id = await add_task(pool, project, "go", session_id=session, agent="scripted")
        row = await wait_state(pool, task_id, "completed")
    assert row["cost_tokens"] == 20 and row["output_summary"] == "Hello"
    reply = await pool.fetchrow("SELECT * FROM messages WHERE role = 'assistant'")
    assert (reply["content"], reply["reasoning"], reply["prompt_tokens"], reply["completion_tokens"]) == (
        "Hello",
        "thinking hard",
        15,
        5,
    )
    part = await pool.fetchrow("SELECT * FROM message_parts")
    assert (part["tool_call_id"], part["status"], part["input"], part["output"]) == (
        "call-1",
        "completed",
        {"path": "a.txt"},
        "ok",
    )
    frames = await events(pool, session)
    types = [t for t, _ in frames]
    # Deltas of one flush are coalesced; no frame is lost or reordered.
    assert "".join(p["text"] for t, p in frames if t == "delta") == "Hello"
    assert "".join(p["text"] for t, p in frames if t == "reasoning_delta") == "thinking hard"
    assert types[0:2] == ["task_state", "message_started"] and types[-2:] == ["message_complete", "task_state"]
    assert types.index("reasoning_delta") < types.index("delta") < types.index("tool_call")
    assert [p["status"] for t, p in frames if t == "tool_call"][-1] == "completed"
    assert (
        "agent_commands",
        {"message_id": reply["id"], "commands": [{"name": "init", "description": "set up"}]},
    ) in frames
    assert ("status", {"message_id": reply["id"], "state": "retrying", "detail": "429"}) in frames
    upstream = await pool.fetchrow("SELECT * FROM agent_sessions")
    assert (upstream["session_id"], upstream["agent"], upstream["upstream_session_id"]) == (session, "scripted", "up-1")


async def test_deltas_are_coalesced_into_few_frames(db_url: str, pool: asyncpg.Pool) -> None:
    backend = ScriptedBackend(events=[TextDelta(f"{i} ") for i in range(200)], pause=0.001)
    project = await add_project(pool)
    session = await add_session(pool, project)
    async with running_dispatcher(db_url, router(scripted=backend), coalesce_ms=50.0):
        task_id = await add_task(pool, project, "go", session_id=session, agent="scripted")
        await wait_state(pool, task_id, "completed")
    deltas = [p["text"] for t, p in await events(pool, session) if t == "delta"]
    assert "".join(deltas) == "".join(f"{i} " for i in range(200))
    assert len(deltas) < 200


async def test_session_less_task_gets_a_session_and_later_turns_get_history(db_url: str, pool: asyncpg.Pool) -> None:
    backend = ScriptedBackend(events=[TextDelta("answer")])
    project = await add_project(pool)
    async with running_dispatcher(db_url, router(scripted=backend)):
        first = await add_task(pool, project, "question one", agent="scripted", model="m1")
        row = await wait_state(pool, first, "completed")
        session = row["session_id"]
        assert session is not None
        second = await add_task(pool, project, "question two", agent="scripted", session_id=session)
        await wait_state(pool, second, "completed")
    created = await pool.fetchrow("SELECT * FROM sessions WHERE id = $1", session)
    assert (created["project_id"], created["agent"], created["model"], created["title"]) == (
        project,
        "scripted",
        "m1",
        "question one",
    )
    assert backend.turns[0].history == ()
    assert [(m.role, m.content) for m in backend.turns[1].history] == [
        ("user", "question one"),
        ("assistant", "answer"),
    ]
    assert backend.turns[1].input == "question two"


async def test_worktree_turn_runs_in_the_session_worktree_and_leaves_a_pending_change(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    repo = sample_repo(tmp_path / "project")
    project = await pool.fetchval("INSERT INTO projects (name, repo_path) VALUES ('p', $1) RETURNING id", str(repo))
    review = ReviewService(pool, WorktreeSettings(root=tmp_path / "worktrees"))

    def edit(turn: Turn) -> None:
        assert turn.workdir is not None
        (turn.workdir / "new.txt").write_text("hello\n")

    editor = ScriptedBackend(events=[TextDelta("edited")], needs_worktree=True, work=edit)
    async with running_dispatcher(db_url, router(editor=editor), worktrees=review.worktrees):
        task_id = await add_task(pool, project, "add a file", agent="editor")
        row = await wait_state(pool, task_id, "completed")
    workdir = editor.turns[0].workdir
    assert workdir is not None and workdir.is_relative_to(tmp_path / "worktrees")
    assert not (repo / "new.txt").exists()  # the project checkout is untouched until accepted
    change = await pool.fetchrow("SELECT * FROM pending_changes")
    assert (change["task_id"], change["status"], change["agent"]) == (task_id, "pending", "editor")
    assert "new.txt" in change["diff"]
    frames = await events(pool, row["session_id"])
    types = [t for t, _ in frames]
    # As docs/PROTOCOL.md shows a turn: the reply, then its change, then the task's end.
    assert types[-3:] == ["message_complete", "pending_change", "task_state"]
    assert frames[-2][1]["change_id"] == change["id"]


async def test_worktree_backend_without_worktrees_is_unavailable(db_url: str, pool: asyncpg.Pool) -> None:
    editor = ScriptedBackend(needs_worktree=True)
    project = await add_project(pool)
    async with running_dispatcher(db_url, router(editor=editor)):
        task_id = await add_task(pool, project, "x", agent="editor")
        row = await wait_state(pool, task_id, "failed")
    assert row["failure_reason"] == "agent_unavailable" and "worktrees" in row["error"]
    assert editor.turns == []


# ---------------------------------------------------------------------------- bad rows


async def test_bad_rows_fail_with_a_clear_reason_and_others_still_run(db_url: str, pool: asyncpg.Pool) -> None:
    project = await add_project(pool, "mine")
    other_project = await add_project(pool, "theirs")
    session = await add_session(pool, project)
    foreign = await add_session(pool, other_project)
    async with running_dispatcher(db_url):
        bad = {
            "unknown_agent": await add_task(pool, project, "x", agent="nope", session_id=session),
            "project_not_found": await add_task(pool, 9999, "x"),
            "empty_input": await add_task(pool, project, "  \n", session_id=session),
            "session_project_mismatch": await add_task(pool, project, "x", session_id=foreign),
            "session_not_found": await add_task(pool, project, "x", session_id=8888),
            "agent_unavailable": await add_task(pool, project, "x", agent=None),  # no native configured
        }
        good = await add_task(pool, project, "fine", session_id=session)
        for reason, task_id in bad.items():
            row = await wait_state(pool, task_id, "failed")
            assert row["failure_reason"] == reason, (reason, row["error"])
            assert row["error"], reason
        await wait_state(pool, good, "completed")
    unknown = await task(pool, bad["unknown_agent"])
    assert "unknown agent 'nope'" in unknown["error"] and "noop" in unknown["error"]
    # Nothing was written into the other project's session.
    assert await events(pool, foreign) == []
    # The bad task in our own session left only its task_state frame; the good one ran in order.
    states = [(p["task_id"], p["state"]) for t, p in await events(pool, session) if t == "task_state"]
    assert (bad["unknown_agent"], "failed") in states and (good, "completed") in states


async def test_duplicate_dispatch_key_runs_once(db_url: str, pool: asyncpg.Pool) -> None:
    project = await add_project(pool)
    async with running_dispatcher(db_url):
        submission = TaskSubmission(project_id=project, input="once", agent="noop", dispatch_key="k")
        first = await submit_task(pool, submission)
        again = await submit_task(pool, submission)
        assert first.created and not again.created and again.task_id == first.task_id
        await wait_state(pool, first.task_id, "completed")
    assert await pool.fetchval("SELECT count(*) FROM task_attempts") == 1


async def test_expired_pending_task_fails_expired(db_url: str, pool: asyncpg.Pool) -> None:
    project = await add_project(pool)
    session = await add_session(pool, project)
    blocker = ScriptedBackend(block=True)
    async with running_dispatcher(db_url, router(scripted=blocker)):
        running = await add_task(pool, project, "hold", session_id=session, agent="scripted")
        await wait_state(pool, running, "running")
        # Queued behind the running turn, it expires before it can start.
        soon = datetime.now(UTC) + timedelta(milliseconds=200)
        stale = await add_task(pool, project, "late", session_id=session, expires_at=soon)
        row = await wait_state(pool, stale, "failed")
        blocker.release()
        await wait_state(pool, running, "completed")
    assert row["failure_reason"] == "expired" and "expires_at" in row["error"]
    assert ("task_state", {"task_id": stale, "state": "failed", "attempt": 0, "failure_reason": "expired",
            "error": row["error"]}) in await events(pool, session)  # fmt: skip
    assert await attempts(pool, stale) == []


# ---------------------------------------------------------------------------- order and priority


async def test_session_fifo_and_priority_across_sessions(db_url: str, pool: asyncpg.Pool) -> None:
    project = await add_project(pool)
    low, high = await add_session(pool, project), await add_session(pool, project)
    order: list[int] = []
    backend = ScriptedBackend(work=lambda turn: order.append(turn.task_id))
    low_tasks = [await add_task(pool, project, f"low {i}", session_id=low, agent="scripted") for i in range(3)]
    high_tasks = [
        await add_task(pool, project, f"high {i}", session_id=high, agent="scripted", priority=5) for i in range(3)
    ]
    async with running_dispatcher(db_url, router(scripted=backend), max_concurrent_turns=1):
        for task_id in low_tasks + high_tasks:
            await wait_state(pool, task_id, "completed")
    # One turn at a time: the high-priority session first, each session in its own order.
    assert order == high_tasks + low_tasks


# ---------------------------------------------------------------------------- retries and limits


async def test_transient_failure_is_retried_with_backoff_then_completes(db_url: str, pool: asyncpg.Pool) -> None:
    backend = ScriptedBackend(
        outcomes=[
            TurnOutcome.failed("model_unreachable", "connection refused", transient=True),
            TurnOutcome.failed("model_rate_limited", "429", transient=True, retry_after=0.3),
            TurnOutcome.completed(),
        ]
    )
    project = await add_project(pool)
    session = await add_session(pool, project)
    async with running_dispatcher(db_url, router(scripted=backend)):
        task_id = await add_task(pool, project, "retry me", session_id=session, agent="scripted", max_attempts=3)
        row = await wait_state(pool, task_id, "completed")
    assert row["attempt"] == 3 and row["failure_reason"] is None
    rows = await attempts(pool, task_id)
    assert [(a["outcome"], a["failure_reason"]) for a in rows] == [
        ("retry", "model_unreachable"),
        ("retry", "model_rate_limited"),
        ("completed", None),
    ]
    # retry_after was honoured: the third attempt started no sooner than 0.3 s after the second ended.
    assert rows[2]["started_at"] - rows[1]["ended_at"] >= timedelta(seconds=0.29)
    states = [(p["state"], p["attempt"]) for t, p in await events(pool, session) if t == "task_state"]
    assert states == [("running", 1), ("pending", 1), ("running", 2), ("pending", 2), ("running", 3), ("completed", 3)]
    # One user message for the task; a failed assistant message per failed attempt.
    messages = await pool.fetch("SELECT role, status FROM messages ORDER BY id")
    assert [(m["role"], m["status"]) for m in messages] == [
        ("user", "complete"),
        ("assistant", "failed"),
        ("assistant", "failed"),
        ("assistant", "complete"),
    ]


async def test_retries_stop_at_max_attempts_and_permanent_failures_are_not_retried(
    db_url: str, pool: asyncpg.Pool
) -> None:
    flaky = ScriptedBackend(outcomes=[TurnOutcome.failed("model_server_error", "502", transient=True)])
    broken = ScriptedBackend(outcomes=[TurnOutcome.failed("model_rejected", "bad request")])
    project = await add_project(pool)
    async with running_dispatcher(db_url, router(flaky=flaky, broken=broken)):
        a = await add_task(pool, project, "x", agent="flaky", max_attempts=2)
        b = await add_task(pool, project, "x", agent="broken", max_attempts=3)
        row_a = await wait_state(pool, a, "failed")
        row_b = await wait_state(pool, b, "failed")
    assert (row_a["attempt"], row_a["failure_reason"]) == (2, "model_server_error")
    assert "attempt 2 of 2" in row_a["error"]
    assert (row_b["attempt"], row_b["failure_reason"], row_b["error"]) == (1, "model_rejected", "bad request")


async def test_turn_timeout_and_inactivity_abort_the_backend(db_url: str, pool: asyncpg.Pool) -> None:
    slow = ScriptedBackend(block=True)
    project = await add_project(pool)
    async with running_dispatcher(db_url, router(slow=slow), turn_timeout=0.5):
        timed = await add_task(pool, project, "x", agent="slow")
        row = await wait_state(pool, timed, "failed")
    assert row["failure_reason"] == "timeout" and "turn_timeout" in row["error"]
    async with running_dispatcher(db_url, router(slow=slow), inactivity_timeout=0.3):
        idle = await add_task(pool, project, "x", agent="slow")
        row = await wait_state(pool, idle, "failed")
    assert row["failure_reason"] == "inactive" and "inactivity_timeout" in row["error"]
    assert slow.aborted == [timed, idle]
    message = await pool.fetchrow(
        "SELECT status, stop_reason FROM messages WHERE task_id = $1 AND role = 'assistant'", idle
    )
    assert (message["status"], message["stop_reason"]) == ("failed", "inactive")


async def test_a_crashing_backend_fails_the_task(db_url: str, pool: asyncpg.Pool) -> None:
    def crash(turn: Any) -> None:
        raise RuntimeError("boom")

    project = await add_project(pool)
    async with running_dispatcher(db_url, router(crashy=ScriptedBackend(work=crash))):
        task_id = await add_task(pool, project, "x", agent="crashy")
        row = await wait_state(pool, task_id, "failed")
        after = await add_task(pool, project, "still fine")
        await wait_state(pool, after, "completed")
    assert (row["failure_reason"], row["error"]) == ("backend_error", "RuntimeError: boom")


async def test_concurrency_limit_is_kept(db_url: str, pool: asyncpg.Pool) -> None:
    blocker = ScriptedBackend(block=True)
    project = await add_project(pool)
    async with running_dispatcher(db_url, router(slow=blocker), max_concurrent_turns=2) as dispatcher:
        ids = [await add_task(pool, project, "x", agent="slow") for _ in range(4)]

        async def two_running() -> bool:
            return bool(await pool.fetchval("SELECT count(*) = 2 FROM tasks WHERE state = 'running'"))

        await wait_for(two_running, "two running turns")
        await anyio.sleep(0.3)  # time enough to (wrongly) start a third
        assert len(dispatcher.running_task_ids) == 2
        assert await pool.fetchval("SELECT count(*) FROM tasks WHERE state = 'pending'") == 2
        blocker.release()
        for task_id in ids:
            await wait_state(pool, task_id, "completed")


# ---------------------------------------------------------------------------- cancellation


async def test_cancel_pending_and_running_tasks(db_url: str, pool: asyncpg.Pool) -> None:
    slow = ScriptedBackend(events=[TextDelta("partial")], block=True)
    project = await add_project(pool)
    session = await add_session(pool, project)
    async with running_dispatcher(db_url, router(slow=slow)):
        running = await add_task(pool, project, "x", agent="slow", session_id=session)
        queued = await add_task(pool, project, "y", agent="slow", session_id=session)
        await wait_state(pool, running, "running")
        await slow.wait_started()
        async with pool.acquire() as conn:
            assert await cancel_task(conn, queued) == "cancelled"
            assert (await task(pool, queued))["state"] == "cancelled"  # at once, no dispatcher involved
            assert await cancel_task(conn, running) == "running"
        row = await wait_state(pool, running, "cancelled", timeout=5)
        async with pool.acquire() as conn:
            assert await cancel_task(conn, running) == "cancelled"  # a repeat changes nothing
    assert slow.aborted == [running]
    assert (row["failure_reason"], row["ended_at"] is not None) == ("cancelled", True)
    [attempt] = await attempts(pool, running)
    assert attempt["outcome"] == "cancelled"
    message = await pool.fetchrow(
        "SELECT content, status FROM messages WHERE task_id = $1 AND role = 'assistant'", running
    )
    assert (message["content"], message["status"]) == ("partial", "cancelled")
    states = [(p["task_id"], p["state"]) for t, p in await events(pool, session) if t == "task_state"]
    # (The running frame is batched with the turn's first output, so the other cancel may come first.)
    assert [s for s in states if s[0] == running] == [(running, "running"), (running, "cancelled")]
    assert [s for s in states if s[0] == queued] == [(queued, "cancelled")]
    assert await attempts(pool, queued) == []


async def test_cancel_of_a_finished_or_missing_task_changes_nothing(pool: asyncpg.Pool) -> None:
    project = await add_project(pool)
    done = await add_task(pool, project)
    await pool.execute("UPDATE tasks SET state = 'completed', ended_at = now() WHERE id = $1", done)
    async with pool.acquire() as conn:
        assert await cancel_task(conn, done) == "completed"
        with pytest.raises(NotFound, match="no task 99999"):
            await cancel_task(conn, 99999)
    assert (await task(pool, done))["cancel_requested_at"] is None


async def test_cancel_by_plain_sql_update(db_url: str, pool: asyncpg.Pool) -> None:
    slow = ScriptedBackend(block=True)
    project = await add_project(pool)
    session = await add_session(pool, project)
    async with running_dispatcher(db_url, router(slow=slow)):
        running = await add_task(pool, project, "x", agent="slow", session_id=session)
        queued = await add_task(pool, project, "y", agent="slow", session_id=session)
        await wait_state(pool, running, "running")
        await pool.execute("UPDATE tasks SET cancel_requested_at = now() WHERE id = ANY($1)", [running, queued])
        await wait_state(pool, running, "cancelled", timeout=5)
        await wait_state(pool, queued, "cancelled", timeout=5)
    assert slow.aborted == [running]


async def test_task_cancelled_before_its_claim_never_reaches_the_backend(db_url: str, pool: asyncpg.Pool) -> None:
    backend = ScriptedBackend()
    project = await add_project(pool)
    task_id = await add_task(pool, project, "x", agent="scripted", cancel_requested_at=datetime.now(UTC))
    async with running_dispatcher(db_url, router(scripted=backend)):
        row = await wait_state(pool, task_id, "cancelled")
    assert backend.turns == [] and row["failure_reason"] == "cancelled"


# ---------------------------------------------------------------------------- shutdown and recovery


async def test_shutdown_hands_running_turns_back_after_the_grace_period(db_url: str, pool: asyncpg.Pool) -> None:
    slow = ScriptedBackend(block=True)
    project = await add_project(pool)
    async with running_dispatcher(db_url, router(slow=slow), shutdown_grace=0.2) as dispatcher:
        again = await add_task(pool, project, "x", agent="slow", max_attempts=2)
        last = await add_task(pool, project, "x", agent="slow", max_attempts=1)
        await wait_state(pool, again, "running")
        await wait_state(pool, last, "running")
    assert dispatcher.running_task_ids == frozenset()
    row = await task(pool, again)
    # Handed back, not failed: the row carries no failure; the attempt row says why it stopped.
    assert (row["state"], row["failure_reason"], row["error"], row["attempt"]) == ("pending", None, None, 1)
    row = await task(pool, last)
    assert (row["state"], row["failure_reason"]) == ("failed", "shutdown")
    assert [(a["outcome"], a["failure_reason"]) for a in await attempts(pool, again)] == [("interrupted", "shutdown")]
    assert sorted(slow.aborted) == sorted([again, last])
    # The next dispatcher runs the handed-back task.
    slow.release()
    async with running_dispatcher(db_url, router(slow=slow)):
        await wait_state(pool, again, "completed")


async def test_shutdown_lets_turns_finish_within_the_grace_period(db_url: str, pool: asyncpg.Pool) -> None:
    slow = ScriptedBackend(block=True)
    project = await add_project(pool)
    async with anyio.create_task_group() as tg:
        async with running_dispatcher(db_url, router(slow=slow), shutdown_grace=30) as dispatcher:
            task_id = await add_task(pool, project, "x", agent="slow")
            await wait_state(pool, task_id, "running")
            tg.start_soon(_release_later, slow)
        assert dispatcher.running_task_ids == frozenset()
    assert (await task(pool, task_id))["state"] == "completed"
    assert slow.aborted == []


async def _release_later(backend: ScriptedBackend) -> None:
    await anyio.sleep(0.3)
    backend.release()


async def test_expired_lease_is_recovered_and_the_session_goes_on(db_url: str, pool: asyncpg.Pool) -> None:
    project = await add_project(pool)
    session = await add_session(pool, project)
    # A turn of a dispatcher that died: its lease ran out; its message is still streaming.
    dead = await add_task(pool, project, "x", session_id=session, max_attempts=1)
    await pool.execute(
        """UPDATE tasks SET state = 'running', attempt = 1, claimed_by = 'ghost', claim_token = gen_random_uuid(),
                  lease_expires_at = now() - interval '1 s', started_at = now() WHERE id = $1""",
        dead,
    )
    await pool.execute(
        "INSERT INTO messages (session_id, task_id, role, status) VALUES ($1, $2, 'assistant', 'streaming')",
        session,
        dead,
    )
    retried = await add_task(pool, project, "y", max_attempts=2)
    await pool.execute(
        """UPDATE tasks SET state = 'running', attempt = 1, claimed_by = 'ghost', claim_token = gen_random_uuid(),
                  lease_expires_at = now() - interval '1 s', started_at = now() WHERE id = $1""",
        retried,
    )
    after = await add_task(pool, project, "z", session_id=session)
    async with running_dispatcher(db_url):
        row = await wait_state(pool, dead, "failed")
        await wait_state(pool, after, "completed")
        await wait_state(pool, retried, "completed")
    assert row["failure_reason"] == "interrupted" and "ghost" in row["error"]
    assert await pool.fetchval("SELECT status FROM messages WHERE task_id = $1", dead) == "failed"
    types = [(t, p.get("task_id")) for t, p in await events(pool, session)]
    assert types[:2] == [("message_complete", dead), ("task_state", dead)]


async def test_start_up_recovers_what_the_same_worker_left_running(db_url: str, pool: asyncpg.Pool) -> None:
    project = await add_project(pool)
    task_id = await add_task(pool, project, "x", max_attempts=1)
    # Left by an earlier run of worker "w1", with a lease that has not even expired.
    await pool.execute(
        """UPDATE tasks SET state = 'running', attempt = 1, claimed_by = 'w1', claim_token = gen_random_uuid(),
                  lease_expires_at = now() + interval '1 hour', started_at = now() WHERE id = $1""",
        task_id,
    )
    async with running_dispatcher(db_url, worker_id="w1"):
        row = await wait_state(pool, task_id, "failed")
    assert row["failure_reason"] == "interrupted" and "earlier run" in row["error"]


# ---------------------------------------------------------------------------- the database going away


async def test_listen_connection_terminated(db_url: str, pool: asyncpg.Pool) -> None:
    project = await add_project(pool)
    # A long poll interval: only LISTEN (or the poll on resubscribe) can pick tasks up quickly.
    async with running_dispatcher(db_url, poll_interval=60.0) as dispatcher:
        name = dispatcher.application_name("listener")
        killed = await pool.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1", name
        )
        assert killed == 1
        missed = await add_task(pool, project, "inserted while LISTEN was down")
        await wait_state(pool, missed, "completed", timeout=15)
        await wait_for(_listening_again(dispatcher, pool, name), "LISTEN to be re-established")
        later = await add_task(pool, project, "after")
        await wait_state(pool, later, "completed", timeout=15)
    assert dispatcher.listener.subscriptions >= 2


def _listening_again(dispatcher: Dispatcher, pool: asyncpg.Pool, name: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        live = await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND query LIKE 'LISTEN%'", name
        )
        return bool(dispatcher.listener.connected and dispatcher.listener.subscriptions >= 2 and live == 1)

    return check


async def test_postgres_restart_while_running(db_url: str, pool: asyncpg.Pool, pg: EmbeddedPostgres) -> None:
    slow = ScriptedBackend(events=[TextDelta("before")], block=True)
    project = await add_project(pool)
    async with running_dispatcher(db_url, router(slow=slow)) as dispatcher:
        through = await add_task(pool, project, "x", agent="slow")
        await wait_state(pool, through, "running")
        # Queued just before the server goes down: some may not have run yet.
        before = [await add_task(pool, project, f"before {i}") for i in range(5)]
        await anyio.to_thread.run_sync(pg.restart)
        slow.release()  # the running turn ends while the dispatcher is still reconnecting
        # The pool notices its dead connections and opens new ones.
        after = [await add_task(pool, project, f"after {i}") for i in range(5)]
        for task_id in [through, *before, *after]:
            await wait_state(pool, task_id, "completed")
        await wait_for(holds(lambda: dispatcher.listener.subscriptions >= 2), "LISTEN after the restart")
    reply = await pool.fetchval("SELECT content FROM messages WHERE task_id = $1 AND role = 'assistant'", through)
    assert reply == "before"


async def test_running_frame_is_written_before_the_backend_says_anything(db_url: str, pool: asyncpg.Pool) -> None:
    # An agent may take seconds before its first output; clients must see the turn start at once.
    project = await add_project(pool)
    task_id = await add_task(pool, project, "sleep:30", agent="noop")
    async with running_dispatcher(db_url):
        await wait_state(pool, task_id, "running")

        async def running_frame_written() -> bool:
            # Read each time: a session-less task gets its session just after the claim.
            session_id = (await task(pool, task_id))["session_id"]
            running = ("task_state", {"task_id": task_id, "state": "running", "attempt": 1})
            return session_id is not None and running in await events(pool, session_id)

        await wait_for(running_frame_written, "the running frame", timeout=5)
        assert (await task(pool, task_id))["state"] == "running"  # the backend is still sleeping
        async with pool.acquire() as conn:
            await cancel_task(conn, task_id)
        await wait_state(pool, task_id, "cancelled")


# ---------------------------------------------------------------------------- bad input, not faults


async def test_a_removed_repository_fails_once_at_once_naming_the_path(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    repo = sample_repo(tmp_path / "project")
    project = await pool.fetchval("INSERT INTO projects (name, repo_path) VALUES ('p', $1) RETURNING id", str(repo))
    review = ReviewService(pool, WorktreeSettings(root=tmp_path / "worktrees"))
    editor = ScriptedBackend(needs_worktree=True)
    async with running_dispatcher(db_url, router(editor=editor), worktrees=review.worktrees):
        first = await add_task(pool, project, "x", agent="editor")
        await wait_state(pool, first, "completed")  # its worktree exists now
        shutil.rmtree(repo)
        again = await add_task(pool, project, "y", agent="editor", max_attempts=3)
        row = await wait_state(pool, again, "failed")
    assert (row["failure_reason"], row["attempt"]) == ("repository_missing", 1)
    assert str(repo) in row["error"] and "does not exist" in row["error"]
    assert len(editor.turns) == 1


async def test_a_prompt_too_long_for_a_pty_agent_is_refused_with_the_limit(db_url: str, pool: asyncpg.Pool) -> None:
    spec = AgentSpec("printer", "pty", ("true",))
    project = await add_project(pool)
    async with running_dispatcher(db_url, Router(agents={"printer": lambda: PtyBackend(spec)})):
        task_id = await add_task(pool, project, "x" * 200_000, agent="printer")
        row = await wait_state(pool, task_id, "failed")
    assert (row["failure_reason"], row["attempt"]) == ("input_too_long", 1)
    assert "200,000 bytes" in row["error"] and "131,071 bytes" in row["error"]
