"""A real turn (dispatcher + noop backend) followed over WebSocket: submit, frames, cancel."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from websockets.asyncio.client import ClientConnection

from testkit.clients import open_client, recv, request
from tests.dispatching import running_dispatcher
from ws_gateway import Gateway

pytestmark = pytest.mark.anyio


async def frames_until(ws: ClientConnection, task_id: int, *final: str) -> list[dict[str, Any]]:
    """Session frames up to the task_state frame that ends the task."""
    frames: list[dict[str, Any]] = []
    while True:
        frame = await recv(ws)
        if "seq" not in frame:
            continue
        frames.append(frame)
        if frame["type"] == "task_state" and frame["task_id"] == task_id and frame["state"] in final:
            return frames


async def test_a_submitted_turn_streams_every_frame_in_order(
    gateway: Gateway, db_url: str, token: str, session_id: int, pool: asyncpg.Pool
) -> None:
    async with running_dispatcher(db_url), open_client(gateway.url, token) as ws:
        await recv(ws)
        await request(ws, {"type": "subscribe", "id": "s", "session_ids": [session_id]})
        snapshot = await recv(ws)
        ack = await request(
            ws, {"type": "submit", "id": "t", "session_id": session_id, "agent": "noop", "input": "hello there"}
        )
        frames = await frames_until(ws, ack["task_id"], "completed", "failed")

    assert [f["seq"] for f in frames] == list(range(snapshot["last_seq"] + 1, snapshot["last_seq"] + len(frames) + 1))
    assert all(f["session_id"] == session_id for f in frames)
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "task_state" and frames[0]["state"] == "running"
    assert kinds.index("message_started") < kinds.index("delta") < kinds.index("message_complete")
    assert "".join(f["text"] for f in frames if f["type"] == "delta") == "hello there"
    assert frames[-1]["state"] == "completed"
    # The log holds exactly what was sent.
    stored = await pool.fetch("SELECT seq, type FROM session_events WHERE session_id = $1 ORDER BY seq", session_id)
    assert [(r["seq"], r["type"]) for r in stored] == [(f["seq"], f["type"]) for f in frames]


async def test_cancel_over_websocket_ends_a_running_turn(
    gateway: Gateway, db_url: str, token: str, session_id: int
) -> None:
    async with running_dispatcher(db_url), open_client(gateway.url, token) as ws:
        await recv(ws)
        await request(ws, {"type": "subscribe", "id": "s", "session_ids": [session_id], "since_seq": 0})
        ack = await request(
            ws, {"type": "submit", "id": "t", "session_id": session_id, "agent": "noop", "input": "sleep:60"}
        )
        await frames_until(ws, ack["task_id"], "running")
        cancelled = await request(ws, {"type": "cancel", "id": "c", "task_id": ack["task_id"]})
        assert cancelled == {
            "type": "ack",
            "id": "c",
            "action": "cancel",
            "task_id": ack["task_id"],
            "state": "running",
        }
        frames = await frames_until(ws, ack["task_id"], "cancelled", "completed", "failed")
    assert frames[-1]["state"] == "cancelled"


async def test_cancel_of_another_projects_task_is_refused(
    gateway: Gateway, pool: asyncpg.Pool, token: str, projects: tuple[int, int]
) -> None:
    foreign = await pool.fetchval("INSERT INTO tasks (project_id, input) VALUES ($1, 'x') RETURNING id", projects[1])
    async with open_client(gateway.url, token) as ws:
        await recv(ws)
        error = await request(ws, {"type": "cancel", "id": 1, "task_id": foreign})
    assert error["code"] == "forbidden"
    assert await pool.fetchval("SELECT cancel_requested_at FROM tasks WHERE id = $1", foreign) is None
