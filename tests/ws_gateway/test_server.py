"""The gateway with real WebSocket clients against a real PostgreSQL."""

from __future__ import annotations

import json
import uuid
from typing import Any

import anyio
import asyncpg
import httpx
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from kernel.eventlog import append_events
from testkit.clients import open_client, recv, request, session_frames
from testkit.rows import add_session
from tests.ws_gateway.conftest import running_gateway, with_settings
from ws_gateway import Gateway, create_token
from ws_gateway.auth import revoke_token

pytestmark = pytest.mark.anyio


def deltas(count: int, start: int = 0, size: int = 0) -> list[tuple[str, dict[str, Any]]]:
    return [("delta", {"message_id": 1, "text": f"{i}" + "x" * size}) for i in range(start, start + count)]


async def subscribe(ws: ClientConnection, session_id: int, since_seq: int | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "subscribe", "id": "sub", "session_ids": [session_id]}
    if since_seq is not None:
        frame["since_seq"] = since_seq
    ack = await request(ws, frame)
    assert ack["type"] == "ack", ack
    return ack


async def close_code(ws: ClientConnection) -> int | None:
    """Read until the server closes; the close code it sent."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await recv(ws)
    return None if closed.value.rcvd is None else closed.value.rcvd.code


async def test_hello_after_header_or_query_token(gateway: Gateway, token: str, projects: tuple[int, int]) -> None:
    async with open_client(gateway.url, token) as ws:
        hello = await recv(ws)
    assert hello["type"] == "hello"
    assert hello["protocol"] == 1
    assert hello["token"] == {"name": "ide", "project_ids": [projects[0]]}
    assert hello["limits"]["send_queue_frames"] == gateway.settings.send_queue_frames
    assert hello["limits"]["send_queue_bytes"] == gateway.settings.send_queue_bytes
    async with open_client(f"{gateway.url}?token={token}") as ws:
        assert (await recv(ws))["type"] == "hello"


@pytest.mark.parametrize("token_text", [None, "sy_not-a-token"])
async def test_missing_or_invalid_token_closes_4401(gateway: Gateway, token_text: str | None) -> None:
    async with open_client(gateway.url, token_text) as ws:
        assert await close_code(ws) == 4401


async def test_revoked_token_closes_4401(gateway: Gateway, pool: asyncpg.Pool, token: str) -> None:
    await pool.execute("UPDATE api_tokens SET revoked_at = now()")
    async with open_client(gateway.url, token) as ws:
        assert await close_code(ws) == 4401


async def test_revoking_closes_open_connections_of_that_token_only(pool: asyncpg.Pool, db_url: str, token: str) -> None:
    other = await create_token(pool, "other")
    async with (
        running_gateway(pool, db_url, with_settings(poll_interval=0.2)) as gw,
        open_client(gw.url, token) as revoked_ws,
        open_client(gw.url, other) as kept_ws,
    ):
        assert (await recv(revoked_ws))["type"] == "hello"
        assert (await recv(kept_ws))["type"] == "hello"
        token_id = await pool.fetchval("SELECT id FROM api_tokens WHERE name = 'ide'")
        assert await revoke_token(pool, token_id)
        assert await close_code(revoked_ws) == 4401
        assert (await request(kept_ws, {"type": "ping", "id": 1}))["type"] == "pong"


async def test_snapshot_then_live_frames(gateway: Gateway, pool: asyncpg.Pool, token: str, session_id: int) -> None:
    await append_events(pool, session_id, deltas(3))
    task_id = await pool.fetchval(
        "INSERT INTO tasks (session_id, input, state, claim_token, lease_expires_at, started_at)"
        " VALUES ($1, 'go', 'running', $2, now() + interval '1 minute', now()) RETURNING id",
        session_id,
        uuid.uuid4(),
    )
    await pool.execute("INSERT INTO tasks (session_id, input) VALUES ($1, 'next')", session_id)
    await pool.execute(
        "INSERT INTO messages (session_id, task_id, role, content) VALUES ($1, $2, 'user', 'go')", session_id, task_id
    )
    message_id = await pool.fetchval(
        "INSERT INTO messages (session_id, task_id, role, content, status)"
        " VALUES ($1, $2, 'assistant', 'hi', 'streaming') RETURNING id",
        session_id,
        task_id,
    )
    await pool.execute(
        "INSERT INTO message_parts (message_id, session_id, tool_call_id, name, input)"
        " VALUES ($1, $2, 'c1', 'read', $3)",
        message_id,
        session_id,
        {"path": "README.md"},
    )
    change_id = await pool.fetchval(
        "INSERT INTO pending_changes (session_id, task_id, base_commit, diff, files) VALUES ($1, $2, $3, 'd', $4)"
        " RETURNING id",
        session_id,
        task_id,
        "a" * 40,
        [{"path": "README.md", "status": "modified"}],
    )

    async with open_client(gateway.url, token) as ws:
        await recv(ws)
        ack = await subscribe(ws, session_id)
        assert ack["since_seq"] == {str(session_id): 3}
        snapshot = await recv(ws)
        assert snapshot["type"] == "snapshot"
        assert snapshot["session_id"] == session_id
        assert snapshot["last_seq"] == 3
        assert [(m["role"], m["content"], m["status"]) for m in snapshot["messages"]] == [
            ("user", "go", "complete"),
            ("assistant", "hi", "streaming"),
        ]
        assert snapshot["messages"][1]["parts"][0]["input"] == {"path": "README.md"}
        assert [(t["input"], t["state"]) for t in snapshot["tasks"]] == [("go", "running"), ("next", "pending")]
        assert snapshot["pending_change"]["change_id"] == change_id
        assert snapshot["pending_change"]["files"] == [{"path": "README.md", "status": "modified"}]
        assert "diff" not in snapshot["pending_change"]

        await append_events(pool, session_id, deltas(5, start=3))
        frames = await session_frames(ws, 5)
    assert [f["seq"] for f in frames] == [4, 5, 6, 7, 8]
    assert [f["text"] for f in frames] == ["3", "4", "5", "6", "7"]
    assert all(f["session_id"] == session_id and f["type"] == "delta" for f in frames)


async def test_replay_from_seq_then_live(gateway: Gateway, pool: asyncpg.Pool, token: str, session_id: int) -> None:
    # More than a replay page, so the replay pages through the log.
    total = gateway.settings.replay_page + 50
    await append_events(pool, session_id, deltas(total))
    async with open_client(gateway.url, token) as ws:
        await recv(ws)
        await subscribe(ws, session_id, since_seq=10)
        await append_events(pool, session_id, deltas(20, start=total))
        frames = await session_frames(ws, total + 20 - 10)
    assert [f["seq"] for f in frames] == list(range(11, total + 21))


async def test_reconnect_mid_turn_gets_every_frame_once(
    gateway: Gateway, pool: asyncpg.Pool, token: str, session_id: int
) -> None:
    total = 300
    seen: list[int] = []

    async def turn() -> None:
        for start in range(0, total, 3):
            await append_events(pool, session_id, deltas(3, start=start))
            await anyio.sleep(0.002)

    async with anyio.create_task_group() as tg:
        async with open_client(gateway.url, token) as ws:
            await recv(ws)
            await subscribe(ws, session_id, since_seq=0)
            tg.start_soon(turn)
            seen += [f["seq"] for f in await session_frames(ws, 40)]
        # Disconnected mid-turn; frames keep being written.
        await anyio.sleep(0.05)
        async with open_client(gateway.url, token) as ws:
            await recv(ws)
            await subscribe(ws, session_id, since_seq=seen[-1])
            seen += [f["seq"] for f in await session_frames(ws, total - len(seen))]
    assert seen == list(range(1, total + 1))


async def test_two_sessions_on_one_connection(
    gateway: Gateway, pool: asyncpg.Pool, token: str, projects: tuple[int, int], session_id: int
) -> None:
    other = await add_session(pool, projects[0])
    await append_events(pool, other, deltas(2))
    async with open_client(gateway.url, token) as ws:
        await recv(ws)
        ack = await request(
            ws, {"type": "subscribe", "id": 1, "session_ids": [session_id, other], "since_seq": {str(other): 1}}
        )
        assert ack["since_seq"] == {str(session_id): 0, str(other): 1}
        await append_events(pool, session_id, deltas(2))
        frames = await session_frames(ws, 3)
        by_session = {(f["session_id"], f["seq"]) for f in frames}
        assert by_session == {(other, 2), (session_id, 1), (session_id, 2)}

        unsub = await request(ws, {"type": "unsubscribe", "id": 2, "session_ids": [session_id]})
        assert unsub["action"] == "unsubscribe"
        await append_events(pool, session_id, deltas(1))
        await append_events(pool, other, deltas(1))
        [frame] = await session_frames(ws, 1)
        assert (frame["session_id"], frame["seq"]) == (other, 3)


async def test_session_of_another_project_is_refused_and_connection_kept(
    gateway: Gateway, pool: asyncpg.Pool, token: str, projects: tuple[int, int], session_id: int
) -> None:
    foreign = await add_session(pool, projects[1])
    async with open_client(gateway.url, token) as ws:
        await recv(ws)
        for session_ids in ([foreign], [session_id, foreign], [999_999]):
            error = await request(ws, {"type": "subscribe", "id": "x", "session_ids": session_ids})
            assert error["type"] == "error"
            assert error["code"] == "forbidden"
        # Nothing was subscribed (all or nothing), and the connection still works.
        await append_events(pool, foreign, deltas(1))
        await append_events(pool, session_id, deltas(1))
        assert (await request(ws, {"type": "ping", "id": 7})) == {"type": "pong", "id": 7}
        await subscribe(ws, session_id, since_seq=0)
        [frame] = await session_frames(ws, 1)
        assert frame["session_id"] == session_id


async def test_operator_token_sees_every_project(
    gateway: Gateway, pool: asyncpg.Pool, projects: tuple[int, int]
) -> None:
    operator = await create_token(pool, "operator")
    foreign = await add_session(pool, projects[1])
    async with open_client(gateway.url, operator) as ws:
        hello = await recv(ws)
        assert hello["token"]["project_ids"] is None
        await subscribe(ws, foreign)


@pytest.mark.parametrize(
    ("frame", "code", "message"),
    [
        ({"type": "launch"}, "invalid_frame", "unknown frame type"),
        ({"session_ids": [1]}, "invalid_frame", "missing field 'type'"),
        ({"type": "subscribe"}, "invalid_frame", "missing field 'session_ids'"),
        ({"type": "subscribe", "session_ids": ["1"]}, "invalid_frame", "must be an integer"),
        ({"type": "subscribe", "session_ids": [1], "since_seq": -1}, "invalid_frame", "between 0"),
        ({"type": "subscribe", "session_ids": [1], "extra": True}, "invalid_frame", "unknown field 'extra'"),
        ({"type": "review", "change_id": 1, "action": "merge"}, "invalid_frame", "'action' must be one of"),
        ({"type": "cancel", "task_id": True}, "invalid_frame", "must be an integer"),
        ({"type": "submit", "input": "hi"}, "invalid_frame", "needs 'project_id' or 'session_id'"),
        ({"type": "subscribe", "session_ids": ["SESSION"], "since_seq": 99}, "bad_seq", "ahead of session"),
        ({"type": "permission_reply", "request_id": 1}, "invalid_frame", "exactly one of"),
        ({"type": "permission_reply", "request_id": 1, "decision": "later"}, "invalid_frame", "'decision' must be"),
        ({"type": "permission_reply", "request_id": 999, "decision": "reject"}, "forbidden", "request 999"),
        ({"type": "question_reply", "request_id": 1, "answers": "red"}, "invalid_frame", "list of 1 to 20"),
        ({"type": "question_reply", "request_id": 999, "dismiss": True}, "forbidden", "request 999"),
        ({"type": "list_agents", "x": 1}, "invalid_frame", "unknown field 'x'"),
        ({"type": "list_models", "x": 1}, "invalid_frame", "unknown field 'x'"),
        ({"type": "submit", "input": "x", "project_id": 1, "agent_options": [1]}, "invalid_frame", "must be an object"),
        ({"type": "submit", "input": "x", "project_id": 1, "fresh_context": 1}, "invalid_frame", "true or false"),
    ],
)
async def test_bad_frames_get_an_error_frame(
    gateway: Gateway, token: str, session_id: int, frame: dict[str, Any], code: str, message: str
) -> None:
    frame = {**frame, "id": "r1"}
    if frame.get("session_ids") == ["SESSION"]:
        frame["session_ids"] = [session_id]
    async with open_client(gateway.url, token) as ws:
        await recv(ws)
        await ws.send(json.dumps(frame))
        error = await recv(ws)
        assert error["type"] == "error"
        assert error["code"] == code
        assert message in error["message"]
        assert error["id"] == "r1"
        assert (await request(ws, {"type": "ping", "id": 1}))["type"] == "pong"


async def test_protocol_violations_close_but_others_keep_being_served(
    gateway: Gateway, pool: asyncpg.Pool, token: str, session_id: int
) -> None:
    async with open_client(gateway.url, token) as watcher:
        await recv(watcher)
        await subscribe(watcher, session_id, since_seq=0)
        violations: list[tuple[str | bytes, int]] = [
            ("{not json", 1007),
            ("[1, 2]", 1007),
            (b"\x00\x01", 1003),
            (json.dumps({"type": "ping", "pad": "x" * (gateway.settings.max_frame_bytes + 1)}), 1009),
        ]
        for payload, expected in violations:
            async with open_client(gateway.url, token) as ws:
                await recv(ws)
                await ws.send(payload)
                assert await close_code(ws) == expected
        await append_events(pool, session_id, deltas(2))
        assert [f["seq"] for f in await session_frames(watcher, 2)] == [1, 2]


async def test_subscribe_flood_is_rate_limited_and_others_keep_being_served(
    pool: asyncpg.Pool, db_url: str, token: str, session_id: int
) -> None:
    settings = with_settings(requests_per_second=20.0, request_burst=10)
    async with running_gateway(pool, db_url, settings) as gateway, open_client(gateway.url, token) as watcher:
        await recv(watcher)
        await subscribe(watcher, session_id, since_seq=0)
        async with open_client(gateway.url, token) as flooder:
            await recv(flooder)
            frame = json.dumps({"type": "subscribe", "session_ids": [session_id]})
            for _ in range(2000):
                await flooder.send(frame)
            await append_events(pool, session_id, deltas(3))
            assert [f["seq"] for f in await session_frames(watcher, 3)] == [1, 2, 3]
            await flooder.send(json.dumps({"type": "ping", "id": "last"}))
            replies: dict[str, int] = {}
            while True:
                reply = await recv(flooder)
                if reply.get("id") == "last" and reply["type"] in ("pong", "error"):
                    break
                kind = reply["type"] if reply["type"] != "error" else reply["code"]
                replies[kind] = replies.get(kind, 0) + 1
        assert replies["rate_limited"] > 1000
        assert replies["ack"] >= 10


async def test_too_many_subscriptions(pool: asyncpg.Pool, db_url: str, token: str, projects: tuple[int, int]) -> None:
    sessions = [await add_session(pool, projects[0]) for _ in range(3)]
    settings = with_settings(max_subscriptions=2)
    async with running_gateway(pool, db_url, settings) as gateway, open_client(gateway.url, token) as ws:
        await recv(ws)
        await request(ws, {"type": "subscribe", "id": 1, "session_ids": sessions[:2], "since_seq": 0})
        error = await request(ws, {"type": "subscribe", "id": 2, "session_ids": sessions[2:], "since_seq": 0})
        assert error["code"] == "too_many_subscriptions"
        # Re-subscribing to a session already subscribed is not an extra subscription.
        again = await request(ws, {"type": "subscribe", "id": 3, "session_ids": sessions[:1], "since_seq": 0})
        assert again["type"] == "ack"


@pytest.mark.parametrize(
    "bound",
    [{"send_queue_frames": 4}, {"send_queue_frames": 100_000, "send_queue_bytes": 256 * 1024}],
    ids=["frames", "bytes"],
)
async def test_slow_client_is_dropped_with_1013_and_resumes(
    pool: asyncpg.Pool, db_url: str, token: str, session_id: int, bound: dict[str, int]
) -> None:
    settings = with_settings(**bound)
    async with running_gateway(pool, db_url, settings) as gateway:
        async with open_client(gateway.url, token, max_queue=1) as slow:
            await recv(slow)
            await subscribe(slow, session_id, since_seq=0)
            # Never read while frames pile up: the socket buffers fill, then the send queue.
            written = 0
            with anyio.fail_after(60):
                while gateway.hub.subscriber_count():
                    await append_events(pool, session_id, deltas(10, start=written, size=64 * 1024))
                    written += 10
                    await anyio.sleep(0.01)
            seqs: list[int] = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    frame = await recv(slow)
                    if "seq" in frame:
                        seqs.append(frame["seq"])
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1013
        assert seqs == list(range(1, len(seqs) + 1))
        async with open_client(gateway.url, token) as ws:
            await recv(ws)
            await subscribe(ws, session_id, since_seq=seqs[-1])
            rest = await session_frames(ws, written - len(seqs))
        assert [f["seq"] for f in rest] == list(range(len(seqs) + 1, written + 1))


async def test_origin_allow_list(pool: asyncpg.Pool, db_url: str, token: str) -> None:
    settings = with_settings(allowed_origins=("https://ide.example",))
    async with running_gateway(pool, db_url, settings) as gateway:
        async with open_client(gateway.url, token, origin="https://ide.example") as ws:
            assert (await recv(ws))["type"] == "hello"
        async with open_client(gateway.url, token) as ws:  # not a browser: no Origin
            assert (await recv(ws))["type"] == "hello"
        with pytest.raises(InvalidStatus) as refused:
            async with open_client(gateway.url, token, origin="https://evil.example"):
                pass
        assert refused.value.response.status_code == 403


async def test_health_and_unknown_paths(gateway: Gateway) -> None:
    base = f"http://{gateway.settings.host}:{gateway.port}"
    async with httpx.AsyncClient() as http:
        health = await http.get(f"{base}/health")
        assert (health.status_code, health.text) == (200, "ok\n")
        assert (await http.get(f"{base}/elsewhere")).status_code == 404


async def test_lost_listen_connection_loses_no_frames(
    gateway: Gateway, pool: asyncpg.Pool, token: str, session_id: int
) -> None:
    async with open_client(gateway.url, token) as ws:
        await recv(ws)
        await subscribe(ws, session_id, since_seq=0)
        await append_events(pool, session_id, deltas(2))
        assert [f["seq"] for f in await session_frames(ws, 2)] == [1, 2]
        listen_pid = gateway.hub.listen_pid
        assert listen_pid is not None
        await pool.execute("SELECT pg_terminate_backend($1)", listen_pid)
        with anyio.fail_after(20):
            while await pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", listen_pid):
                await anyio.sleep(0.01)
        # Written while nobody listens: found by the resync after reconnecting.
        await append_events(pool, session_id, deltas(3, start=2))
        assert [f["seq"] for f in await session_frames(ws, 3)] == [3, 4, 5]
        assert gateway.hub.listen_pid not in (None, listen_pid)
