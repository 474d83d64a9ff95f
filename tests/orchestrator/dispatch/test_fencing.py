"""Fencing: a turn that lost its claim, or could not renew its lease in time, writes nothing more.

The partition test puts dispatcher A behind a pausable TCP proxy (testkit.proxy) and pauses it
mid-turn: A must stop its turn at its local lease deadline, dispatcher B runs attempt 2, and once
the partition heals nothing of A's turn lands after B's ``running`` frame.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
import asyncpg
import pytest

from backends import TextDelta, Turn, TurnOutcome
from backends.base import Emit
from orchestrator.dispatch import Router, queue
from orchestrator.dispatch.queue import ClaimLost
from orchestrator.dispatch.sink import TurnSink
from testkit.proxy import PausableProxy
from testkit.rows import add_project, add_session, add_task, start_turn
from tests.dispatching import events, running_dispatcher, task, wait_for, wait_state

pytestmark = pytest.mark.anyio

LEASE = 3.0
MARGIN = 1.0


@dataclass
class Streamer:
    """Emits a delta every ``pause`` seconds for ``count`` deltas; records when it ran (monotonic)."""

    label: str
    count: int = 400
    pause: float = 0.05
    runs: list[tuple[int, float, float]] = field(default_factory=list)  # (attempt, start, end)
    execution_path: str = "noop"
    needs_worktree: bool = False

    async def run_turn(self, turn: Turn, emit: Emit) -> TurnOutcome:
        start = time.monotonic()
        try:
            for i in range(self.count):
                await emit(TextDelta(f"{self.label}{i} "))
                await anyio.sleep(self.pause)
        finally:
            self.runs.append((turn.attempt, start, time.monotonic()))
        return TurnOutcome.completed()


@pytest.fixture
async def proxy(db_url: str) -> AsyncIterator[PausableProxy]:
    port = int(db_url.rsplit(":", 1)[1].split("/", 1)[0])
    proxy = PausableProxy(port)
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.run)
        yield proxy
        proxy.resume()
        tg.cancel_scope.cancel()


async def test_a_partitioned_turn_stops_at_its_lease_deadline_and_writes_nothing_after_attempt_2(
    db_url: str, pool: asyncpg.Pool, proxy: PausableProxy
) -> None:
    slow, quick = Streamer("A"), Streamer("B", count=3, pause=0.0)
    project = await add_project(pool)
    session = await add_session(pool, project)
    settings = {"lease_seconds": LEASE, "lease_margin": MARGIN, "finalize_timeout": 3.0}
    async with running_dispatcher(
        proxy.url(db_url), Router(agents={"stream": lambda: slow}), worker_id="A", **settings
    ):
        task_id = await add_task(pool, project, "go", agent="stream", session_id=session)
        await wait_state(pool, task_id, "running")
        # A's output is streaming into the session before the partition.
        await wait_for(_has_delta(pool, session), "A's first delta in the log")
        proxy.pause()
        paused_at = time.monotonic()
        async with running_dispatcher(db_url, Router(agents={"stream": lambda: quick}), worker_id="B", **settings):
            row = await wait_state(pool, task_id, "completed", timeout=60)
            # A stopped its turn on its own, while it could not reach the database.
            assert slow.runs, "A's turn never stopped"
            a_attempt, _, a_end = slow.runs[0]
            assert a_attempt == 1 and a_end > paused_at
            assert quick.runs and quick.runs[0][0] == 2
            # The two attempts never ran at the same time.
            assert a_end <= quick.runs[0][1]
            proxy.resume()
            # Whatever A still had in flight now reaches the database, and must be refused.
            await anyio.sleep(LEASE)
    assert row["attempt"] == 2
    frames = await events(pool, session)
    running_2 = next(
        i
        for i, (kind, p) in enumerate(frames)
        if kind == "task_state" and p["state"] == "running" and p["attempt"] == 2
    )
    a_message = await pool.fetchval("SELECT min(id) FROM messages WHERE task_id = $1 AND role = 'assistant'", task_id)
    late = [f for f in frames[running_2:] if f[1].get("message_id") == a_message or f[1].get("attempt") == 1]
    assert late == [], late
    after = "".join(p["text"] for kind, p in frames[running_2:] if kind == "delta")
    assert after == "B0 B1 B2 "
    # A's message was ended by the recovery, never left streaming; attempt 1 ended before 2 began.
    statuses = await pool.fetch(
        "SELECT status, content FROM messages WHERE task_id = $1 AND role = 'assistant' ORDER BY id", task_id
    )
    assert [s["status"] for s in statuses] == ["failed", "complete"]
    assert "B" not in statuses[0]["content"] and statuses[1]["content"] == "B0 B1 B2 "
    spans = await pool.fetch(
        "SELECT started_at, ended_at FROM task_attempts WHERE task_id = $1 ORDER BY attempt", task_id
    )
    assert spans[0]["ended_at"] <= spans[1]["started_at"]


def _has_delta(pool: asyncpg.Pool, session: int) -> object:
    async def check() -> bool:
        return bool(
            await pool.fetchval("SELECT count(*) FROM session_events WHERE session_id = $1 AND type = 'delta'", session)
        )

    return check


async def test_a_flush_after_the_claim_was_lost_writes_nothing(pool: asyncpg.Pool) -> None:
    project = await add_project(pool)
    session = await add_session(pool, project)
    task_id = await start_turn(pool, session)
    token = await pool.fetchval("SELECT claim_token FROM tasks WHERE id = $1", task_id)
    lost = []
    sink = TurnSink(task_id, session, "hi", 1, claim_token=token, on_claim_lost=lambda: lost.append(True))
    sink.open_message()
    await sink.emit(TextDelta("mine"))
    await sink.flush(pool)
    assert [kind for kind, _ in await events(pool, session)] == ["message_started", "delta"]
    # Another dispatcher recovered the task and claimed it again: a new token.
    await pool.execute("UPDATE tasks SET claim_token = $2 WHERE id = $1", task_id, uuid.uuid4())
    await sink.emit(TextDelta(" not any more"))
    with pytest.raises(ClaimLost):
        await sink.flush(pool)
    assert lost == [True] and sink.fenced
    assert [kind for kind, _ in await events(pool, session)] == ["message_started", "delta"]
    content = await pool.fetchval("SELECT content FROM messages WHERE task_id = $1 AND role = 'assistant'", task_id)
    assert content == "mine"
    # Nothing more is buffered or written, whatever the backend still emits.
    await sink.emit(TextDelta("later"))
    await sink.flush(pool)
    assert len(await events(pool, session)) == 2
    assert (await task(pool, task_id))["state"] == "running"


async def test_a_write_whose_commit_went_unanswered_is_looked_up_not_repeated(pool: asyncpg.Pool) -> None:
    project = await add_project(pool)
    session = await add_session(pool, project)
    task_id = await start_turn(pool, session)
    token = await pool.fetchval("SELECT claim_token FROM tasks WHERE id = $1", task_id)
    async with pool.acquire() as conn:
        async with conn.transaction():
            committed = await queue.hold_claim_of(conn, task_id, token)
        tx = conn.transaction()
        await tx.start()
        rolled_back = await queue.hold_claim_of(conn, task_id, token)
        await tx.rollback()
    assert committed is not None and rolled_back is not None
    assert await queue.transaction_status(pool, committed) == "committed"
    assert await queue.transaction_status(pool, rolled_back) == "aborted"
