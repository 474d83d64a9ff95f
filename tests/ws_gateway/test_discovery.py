"""Sign-in by an ``auth`` frame, discovery frames and the project feed, against a real gateway."""

from __future__ import annotations

import json
from typing import Any

import anyio
import asyncpg
import pytest
from websockets.asyncio.client import ClientConnection

from kernel.eventlog import append_events
from testkit.clients import open_client, recv, request, session_frames
from testkit.rows import add_project, add_session, add_task
from tests.dispatching import running_dispatcher, wait_state
from tests.ws_gateway.conftest import running_gateway, with_settings
from tests.ws_gateway.test_server import close_code
from ws_gateway import Gateway, create_token

pytestmark = pytest.mark.anyio


async def sign_in(ws: ClientConnection, token: str) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "auth", "token": token}))
    hello = await recv(ws)
    assert hello["type"] == "hello", hello
    return hello


async def project_frame(ws: ClientConnection, session_id: int) -> dict[str, Any]:
    """The next session_created/session_updated frame about ``session_id``."""
    while True:
        frame = await recv(ws)
        if frame["type"] in ("session_created", "session_updated") and frame["session"]["id"] == session_id:
            return frame


# ------------------------------------------------------------------------------------- sign-in


async def test_auth_frame_signs_in(gateway: Gateway, token: str, projects: tuple[int, int]) -> None:
    async with open_client(gateway.url) as ws:
        hello = await sign_in(ws, token)
        assert hello["token"] == {"name": "ide", "project_ids": [projects[0]]}
        assert (await request(ws, {"type": "ping", "id": 1}))["type"] == "pong"
        again = await request(ws, {"type": "auth", "id": 2, "token": token})
        assert again["code"] == "invalid_frame" and "already signed in" in again["message"]
        assert (await request(ws, {"type": "ping", "id": 3}))["type"] == "pong"


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "auth"},
        {"type": "auth", "token": 5},
        {"type": "auth", "token": ""},
        {"type": "auth", "token": "x" * 600},
        {"type": "auth", "token": "sy_x", "extra": 1},
        {"type": "auth", "id": [1], "token": "sy_x"},
    ],
)
async def test_malformed_auth_frame_gets_invalid_frame_and_the_wait_goes_on(
    gateway: Gateway, token: str, bad: dict[str, Any]
) -> None:
    async with open_client(gateway.url) as ws:
        await ws.send(json.dumps(bad))
        error = await recv(ws)
        assert (error["type"], error["code"]) == ("error", "invalid_frame")
        await sign_in(ws, token)


@pytest.mark.parametrize(
    "first",
    [
        {"type": "auth", "token": "sy_wrong"},
        {"type": "ping", "id": 1},
        None,  # nothing at all until gateway.auth_timeout
    ],
)
async def test_no_valid_auth_frame_closes_4401(gateway: Gateway, first: dict[str, Any] | None) -> None:
    async with open_client(gateway.url) as ws:
        if first is not None:
            await ws.send(json.dumps(first))
        assert await close_code(ws) == 4401


async def test_the_token_is_never_logged(
    gateway: Gateway, token: str, session_id: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    async with open_client(gateway.url) as ws:
        await sign_in(ws, token)
        await request(ws, {"type": "subscribe", "id": 1, "session_ids": [session_id]})
    async with open_client(gateway.url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token + "x"}))
        assert await close_code(ws) == 4401
    assert "gateway.connected" in caplog.text
    assert token not in caplog.text


# ----------------------------------------------------------------------------------- discovery


async def test_list_projects_shows_only_the_tokens_projects(
    gateway: Gateway, pool: asyncpg.Pool, token: str, projects: tuple[int, int]
) -> None:
    await add_session(pool, projects[0])
    operator = await create_token(pool, "operator")
    async with open_client(gateway.url, token) as ws:
        await recv(ws)
        ack = await request(ws, {"type": "list_projects", "id": 1})
    assert ack["action"] == "list_projects"
    [project] = ack["projects"]
    assert (project["id"], project["name"], project["sessions"]) == (projects[0], "alpha", 1)
    async with open_client(gateway.url, operator) as ws:
        await recv(ws)
        ack = await request(ws, {"type": "list_projects", "id": 1})
    assert [p["name"] for p in ack["projects"]] == ["alpha", "beta"]


async def test_list_sessions_newest_activity_first_paged_with_summaries(
    gateway: Gateway, pool: asyncpg.Pool, token: str, projects: tuple[int, int]
) -> None:
    sessions = [await add_session(pool, projects[0]) for _ in range(5)]
    await add_session(pool, projects[1])  # not visible
    # Activity order: 2, 4, then 0, 1, 3 by creation (ties broken by id, newest first).
    await append_events(pool, sessions[4], [("delta", {"message_id": 1, "text": "x"})])
    await append_events(pool, sessions[2], [("delta", {"message_id": 1, "text": "x"})])
    failed = await add_task(pool, projects[0], session_id=sessions[2])
    await pool.execute(
        "UPDATE tasks SET state = 'failed', ended_at = now(), failure_reason = 'agent_failed' WHERE id = $1", failed
    )
    queued = await add_task(pool, projects[0], session_id=sessions[2])
    change = await pool.fetchval(
        """INSERT INTO pending_changes (session_id, base_commit, diff, files) VALUES ($1, $2, 'd', $3)
           RETURNING id""",
        sessions[4],
        "a" * 40,
        [{"path": "a", "additions": 3, "deletions": 1}, {"path": "b", "additions": 2, "deletions": 0}],
    )
    async with open_client(gateway.url, token) as ws:
        await recv(ws)
        first = await request(ws, {"type": "list_sessions", "id": 1, "project_id": projects[0], "limit": 2})
        second = await request(
            ws, {"type": "list_sessions", "id": 2, "project_id": projects[0], "cursor": first["next_cursor"]}
        )
        forbidden = await request(ws, {"type": "list_sessions", "id": 3, "project_id": projects[1]})
        missing = await request(ws, {"type": "list_sessions", "id": 4, "project_id": 999})
    assert [s["id"] for s in first["sessions"]] == [sessions[2], sessions[4]]
    assert [s["id"] for s in second["sessions"]] == [sessions[3], sessions[1], sessions[0]]
    assert second["next_cursor"] is None
    top = first["sessions"][0]
    assert top["last_task"]["task_id"] == queued and top["last_task"]["state"] == "pending"
    assert (top["queued_tasks"], top["running_task_id"], top["pending_change"]) == (1, None, None)
    with_change = first["sessions"][1]
    assert with_change["pending_change"]["change_id"] == change
    assert (with_change["pending_change"]["files"], with_change["pending_change"]["additions"]) == (2, 5)
    assert with_change["last_task"] is None
    assert {"title", "agent", "model", "status", "last_seq", "created_at", "last_active_at"} <= top.keys()
    assert forbidden["code"] == missing["code"] == "forbidden"


async def test_list_tasks_of_a_session(gateway: Gateway, pool: asyncpg.Pool, token: str, session_id: int) -> None:
    project = await pool.fetchval("SELECT project_id FROM sessions WHERE id = $1", session_id)
    first = await add_task(pool, project, "one", session_id=session_id)
    second = await add_task(pool, project, "two", session_id=session_id)
    other = await add_session(pool, await pool.fetchval("SELECT id FROM projects WHERE name = 'beta'"))
    async with open_client(gateway.url, token) as ws:
        await recv(ws)
        ack = await request(ws, {"type": "list_tasks", "id": 1, "session_id": session_id})
        forbidden = await request(ws, {"type": "list_tasks", "id": 2, "session_id": other})
        await pool.execute("UPDATE tasks SET state = 'cancelled', ended_at = now() WHERE id = $1", first)
        by_id = await request(ws, {"type": "list_tasks", "id": 3, "session_id": session_id, "task_ids": [first, 999]})
        open_now = await request(ws, {"type": "list_tasks", "id": 4, "session_id": session_id})
    tasks = [(t["id"], t["input"], t["state"]) for t in ack["tasks"]]
    assert tasks == [(first, "one", "pending"), (second, "two", "pending")]
    assert [(t["id"], t["state"]) for t in by_id["tasks"]] == [(first, "cancelled")]
    assert [t["id"] for t in open_now["tasks"]] == [second]
    assert forbidden["code"] == "forbidden"


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "list_projects", "project_id": 1},
        {"type": "list_sessions"},
        {"type": "list_sessions", "project_id": "1"},
        {"type": "list_sessions", "project_id": 1, "limit": 0},
        {"type": "list_sessions", "project_id": 1, "limit": 201},
        {"type": "list_sessions", "project_id": 1, "cursor": "yesterday"},
        {"type": "list_sessions", "project_id": 1, "cursor": 5},
        {"type": "list_tasks"},
        {"type": "list_tasks", "session_id": -1},
        {"type": "list_tasks", "session_id": 1, "task_ids": []},
        {"type": "list_tasks", "session_id": 1, "task_ids": [0]},
        {"type": "subscribe_project"},
        {"type": "subscribe_project", "project_ids": []},
        {"type": "subscribe_project", "project_ids": ["a"]},
        {"type": "subscribe_project", "project_ids": list(range(1, 102))},
        {"type": "subscribe_project", "project_ids": [1], "since_seq": 0},
        {"type": "unsubscribe_project"},
        {"type": "unsubscribe_project", "project_ids": 1},
        {"type": "auth", "token": 1},
    ],
)
async def test_malformed_discovery_frames_get_invalid_frame(gateway: Gateway, token: str, bad: dict[str, Any]) -> None:
    async with open_client(gateway.url, token) as ws:
        await recv(ws)
        error = await request(ws, {**bad, "id": "bad"})
        assert (error["type"], error["code"]) == ("error", "invalid_frame"), error
        assert (await request(ws, {"type": "ping", "id": "after"}))["type"] == "pong"


# -------------------------------------------------------------------------------- project feed


async def test_project_feed_announces_sessions_tasks_and_changes(
    gateway: Gateway, pool: asyncpg.Pool, token: str, projects: tuple[int, int]
) -> None:
    async with open_client(gateway.url, token) as ws:
        await recv(ws)
        ack = await request(ws, {"type": "subscribe_project", "id": 1, "project_ids": [projects[0]]})
        assert ack == {"type": "ack", "id": 1, "action": "subscribe_project", "project_ids": [projects[0]]}
        await add_session(pool, projects[1])  # another project: never announced to this client
        session = await add_session(pool, projects[0])
        created = await project_frame(ws, session)
        assert created["type"] == "session_created" and created["project_id"] == projects[0]
        assert created["session"]["last_task"] is None
        task = await add_task(pool, projects[0], session_id=session)
        queued = await project_frame(ws, session)
        assert queued["type"] == "session_updated"
        assert (queued["session"]["last_task"]["task_id"], queued["session"]["queued_tasks"]) == (task, 1)
        await pool.execute(
            "INSERT INTO pending_changes (session_id, base_commit, diff, files) VALUES ($1, $2, 'd', '[]')",
            session,
            "a" * 40,
        )
        changed = await project_frame(ws, session)
        assert changed["session"]["pending_change"]["files"] == 0
        await pool.execute("UPDATE pending_changes SET status = 'rejected', resolved_at = now()")
        assert (await project_frame(ws, session))["session"]["pending_change"] is None
        forbidden = await request(ws, {"type": "subscribe_project", "id": 2, "project_ids": [projects[0], projects[1]]})
        assert forbidden["code"] == "forbidden"
        assert gateway.projects.subscriber_count() == 1
        await request(ws, {"type": "unsubscribe_project", "id": 3, "project_ids": [projects[0]]})
        assert gateway.projects.subscriber_count() == 0


async def test_project_feed_resyncs_after_its_listen_connection_is_lost(
    pool: asyncpg.Pool, db_url: str, token: str, projects: tuple[int, int]
) -> None:
    async with (
        running_gateway(pool, db_url, with_settings(poll_interval=0.2)) as gateway,
        open_client(gateway.url, token) as ws,
    ):
        await recv(ws)
        await request(ws, {"type": "subscribe_project", "id": 1, "project_ids": [projects[0]]})
        listen_pid = gateway.projects.listen_pid
        await pool.execute("SELECT pg_terminate_backend($1)", listen_pid)
        # Created while the feed may be away: announced live or by the resync, either way.
        session = await add_session(pool, projects[0])
        frame = await project_frame(ws, session)
        assert frame["session"]["id"] == session
        with anyio.fail_after(10):
            while gateway.projects.listen_pid in (None, listen_pid):
                await anyio.sleep(0.05)


async def test_submit_without_a_session_answers_its_new_session(
    gateway: Gateway, pool: asyncpg.Pool, token: str, projects: tuple[int, int]
) -> None:
    async with open_client(gateway.url, token) as ws:
        await recv(ws)
        await request(ws, {"type": "subscribe_project", "id": 1, "project_ids": [projects[0]]})
        frame = {"type": "submit", "id": 2, "project_id": projects[0], "input": "Explain  the\nbuild", "agent": "noop"}
        ack = await request(ws, {**frame, "dispatch_key": "k1"})
        assert ack["created"] is True and isinstance(ack["session_id"], int)
        created = await project_frame(ws, ack["session_id"])
        assert created["type"] == "session_created"
        assert (created["session"]["title"], created["session"]["agent"]) == ("Explain the build", "noop")
        assert created["session"]["last_task"]["task_id"] == ack["task_id"]
        again = await request(ws, {**frame, "id": 3, "dispatch_key": "k1"})
        assert (again["task_id"], again["session_id"], again["created"]) == (ack["task_id"], ack["session_id"], False)
    assert await pool.fetchval("SELECT count(*) FROM sessions") == 1
    row = await pool.fetchrow("SELECT session_id, project_id FROM tasks WHERE id = $1", ack["task_id"])
    assert (row["session_id"], row["project_id"]) == (ack["session_id"], projects[0])


async def test_a_session_created_at_claim_is_announced_while_its_turn_runs_and_replays_whole(
    gateway: Gateway, pool: asyncpg.Pool, db_url: str, token: str, projects: tuple[int, int]
) -> None:
    """A task inserted by SQL without a session: its session is announced at claim time, and a
    client subscribing from seq 0 then sees every frame of the turn exactly once."""
    async with running_dispatcher(db_url), open_client(gateway.url, token) as ws:
        await recv(ws)
        await request(ws, {"type": "subscribe_project", "id": 1, "project_ids": [projects[0]]})
        task = await add_task(pool, projects[0], "sleep:1")
        while True:
            frame = await recv(ws)
            if frame["type"] == "session_created":
                break
        session = frame["session"]["id"]
        row = await pool.fetchrow("SELECT session_id, state FROM tasks WHERE id = $1", task)
        # Announced before the turn could end: the claim's session, its task running.
        assert (row["session_id"], row["state"]) == (session, "running")
        await request(ws, {"type": "subscribe", "id": 2, "session_ids": [session], "since_seq": 0})
        await wait_state(pool, task, "completed")
        last = await pool.fetchval("SELECT last_seq FROM sessions WHERE id = $1", session)
        frames = await session_frames(ws, last)
    stored = await pool.fetch("SELECT seq, type FROM session_events WHERE session_id = $1 ORDER BY seq", session)
    assert [(f["seq"], f["type"]) for f in frames] == [(r["seq"], r["type"]) for r in stored]
    assert frames[-1]["type"] == "task_state" and frames[-1]["state"] == "completed"


async def test_every_project_frame_reaches_only_tokens_that_see_the_project(
    gateway: Gateway, pool: asyncpg.Pool, projects: tuple[int, int]
) -> None:
    alpha = await create_token(pool, "alpha", [projects[0]])
    operator = await create_token(pool, "operator")
    async with open_client(gateway.url, alpha) as mine, open_client(gateway.url, operator) as everyone:
        for ws in (mine, everyone):
            await recv(ws)
        await request(everyone, {"type": "subscribe_project", "id": 1, "project_ids": list(projects)})
        refused = await request(mine, {"type": "subscribe_project", "id": 1, "project_ids": [projects[1]]})
        assert refused["code"] == "forbidden"
        await request(mine, {"type": "subscribe_project", "id": 2, "project_ids": [projects[0]]})
        beta = await add_session(pool, projects[1])
        alpha_session = await add_session(pool, projects[0])
        assert (await project_frame(everyone, beta))["project_id"] == projects[1]
        # The beta session was announced first; this client's first project frame is alpha's.
        while (frame := await recv(mine))["type"] not in ("session_created", "session_updated"):
            pass
        assert (frame["project_id"], frame["session"]["id"]) == (projects[0], alpha_session)


async def test_a_new_project_is_seen_by_an_operator_token(
    gateway: Gateway, pool: asyncpg.Pool, projects: tuple[int, int]
) -> None:
    operator = await create_token(pool, "operator")
    gamma = await add_project(pool, "gamma")
    async with open_client(gateway.url, operator) as ws:
        await recv(ws)
        ack = await request(ws, {"type": "subscribe_project", "id": 1, "project_ids": [gamma]})
        assert ack["type"] == "ack"
