"""Approvals by a person, across processes: a dispatcher process runs the fake ACP agent under a
policy that asks, a gateway process serves the clients, and the request and its answer travel
through the database (a table and NOTIFY)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from kernel.net import free_port
from testkit import fake_acp_agent_command
from testkit.clients import open_client, recv, request
from testkit.fake_model import FakeModel, message_text
from testkit.repos import sample_repo
from testkit.rows import add_project
from testkit.services import DispatcherProcess, gateway_process
from tests.dispatching import wait_state
from ws_gateway import create_token

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leftover_processes")]

TIMEOUT_S = 60.0


def agent_env(**permissions: Any) -> dict[str, str]:
    """The fake ACP agent as ``fake``, and ``[permissions]`` as given."""
    env = {
        "SWITCHYARD__AGENTS__FAKE__TRANSPORT": "acp",
        "SWITCHYARD__AGENTS__FAKE__COMMAND": json.dumps(fake_acp_agent_command()),
    }
    for key, value in permissions.items():
        env[f"SWITCHYARD__PERMISSIONS__{key.upper()}"] = str(value)
    return env


@dataclass
class Stack:
    pool: asyncpg.Pool
    url: str
    project_id: int
    token: str
    # A token of another project: it must not see (nor answer) anything of this one.
    stranger: str
    dispatcher: DispatcherProcess


@asynccontextmanager
async def stack(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path, env: dict[str, str], **dispatcher: Any
) -> AsyncIterator[Stack]:
    project_id = await add_project(pool, "approvals", sample_repo(tmp_path / "repo"))
    other = await add_project(pool, "elsewhere")
    token = await create_token(pool, "ide", [project_id])
    stranger = await create_token(pool, "stranger", [other])
    proc = DispatcherProcess(db_url, "asker", env, **dispatcher)
    try:
        await proc.started()
        async with gateway_process(db_url, free_port()) as url:
            yield Stack(pool, url, project_id, token, stranger, proc)
        # Gracefully: the dispatcher stops its warm opencode servers.
        assert await proc.terminate() == 0, proc.stderr()
    finally:
        proc.close()


async def start(ws: Any, stack: Stack, prompt: str) -> tuple[int, int]:
    """Submit a turn of the fake agent over the WebSocket and follow its session from seq 0."""
    assert (await recv(ws))["type"] == "hello"
    ack = await request(
        ws, {"type": "submit", "id": "s", "project_id": stack.project_id, "input": prompt, "agent": "fake"}
    )
    assert ack["type"] == "ack", ack
    await request(ws, {"type": "subscribe", "id": "sub", "session_ids": [ack["session_id"]], "since_seq": 0})
    return ack["task_id"], ack["session_id"]


async def next_frame(ws: Any, type_: str) -> dict[str, Any]:
    with anyio.fail_after(TIMEOUT_S):
        while True:
            frame = await recv(ws)
            if frame["type"] == type_:
                return frame


async def frames_until(ws: Any, type_: str, **match: Any) -> list[dict[str, Any]]:
    """Every frame up to the first of ``type_`` whose fields match."""
    seen: list[dict[str, Any]] = []
    with anyio.fail_after(TIMEOUT_S):
        while True:
            frame = await recv(ws)
            seen.append(frame)
            if frame["type"] == type_ and all(frame.get(k) == v for k, v in match.items()):
                return seen


async def worktree(pool: asyncpg.Pool, session_id: int) -> Path:
    return Path(await pool.fetchval("SELECT path FROM session_worktrees WHERE session_id = $1", session_id))


async def test_allow_once_writes_the_file_and_a_second_reply_is_refused(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    # A short inactivity limit and lease: the wait for a person outlasts both.
    env = agent_env(edit="ask")
    async with stack(db_url, pool, tmp_path, env, inactivity_timeout=1.0, lease_seconds=1.5) as s:
        async with open_client(s.url, s.token) as ws, open_client(s.url, s.stranger) as stranger:
            task_id, session_id = await start(ws, s, "WRITE notes.txt approved-content")
            asked = await next_frame(ws, "permission_request")
            assert asked["task_id"] == task_id and asked["tool_kind"] == "edit"
            assert asked["paths"] == ["notes.txt"]
            assert [o["kind"] for o in asked["options"]] == ["allow_once", "reject_once"]
            await anyio.sleep(3.0)  # longer than inactivity_timeout and twice the lease
            assert (await recv(stranger))["type"] == "hello"
            refused = await request(
                stranger,
                {"type": "permission_reply", "id": 1, "request_id": asked["request_id"], "decision": "allow_once"},
            )
            assert (refused["type"], refused["code"]) == ("error", "forbidden")
            ack = await request(
                ws, {"type": "permission_reply", "id": 2, "request_id": asked["request_id"], "decision": "allow_once"}
            )
            assert ack["type"] == "ack", ack
            assert (ack["state"], ack["option_id"], ack["remember"], ack["decided_by"]) == (
                "allowed",
                "allow",
                "once",
                "token:ide",
            )
            again = await request(
                ws, {"type": "permission_reply", "id": 3, "request_id": asked["request_id"], "decision": "reject"}
            )
            assert (again["type"], again["code"]) == ("error", "already_decided")
            assert "allowed by token:ide" in again["message"]
            frames = await frames_until(ws, "task_state", state="completed")
        [resolved] = [f for f in frames if f["type"] == "permission_resolved"]
        assert (resolved["request_id"], resolved["state"], resolved["decided_by"]) == (
            asked["request_id"],
            "allowed",
            "token:ide",
        )
        permission = next(f for f in frames if f["type"] == "permission")
        assert (permission["decision"], permission["reason"]) == ("allowed", "allowed by token:ide")
        text = "".join(f["text"] for f in frames if f["type"] == "delta")
        assert "write notes.txt=ok" in text
        assert (await worktree(pool, session_id) / "notes.txt").read_text() == "approved-content"
        row = await wait_state(pool, task_id, "completed")
        assert row["failure_reason"] is None


async def test_reject_leaves_the_file_unwritten_and_the_turn_goes_on(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    async with stack(db_url, pool, tmp_path, agent_env(edit="ask")) as s, open_client(s.url, s.token) as ws:
        task_id, session_id = await start(ws, s, "WRITE notes.txt nope")
        asked = await next_frame(ws, "permission_request")
        ack = await request(
            ws, {"type": "permission_reply", "id": 1, "request_id": asked["request_id"], "option_id": "reject"}
        )
        assert ack["state"] == "denied"
        frames = await frames_until(ws, "task_state", state="completed")
        text = "".join(f["text"] for f in frames if f["type"] == "delta")
        assert "write notes.txt=error -32602 denied by token:ide" in text
        assert not (await worktree(pool, session_id) / "notes.txt").exists()
        assert (await wait_state(pool, task_id, "completed"))["state"] == "completed"


async def test_nobody_answering_denies_at_ask_timeout(db_url: str, pool: asyncpg.Pool, tmp_path: Path) -> None:
    env = agent_env(edit="ask", ask_timeout=1.5)
    async with stack(db_url, pool, tmp_path, env) as s, open_client(s.url, s.token) as ws:
        task_id, session_id = await start(ws, s, "WRITE notes.txt late")
        asked = await next_frame(ws, "permission_request")
        resolved = await next_frame(ws, "permission_resolved")
        assert (resolved["request_id"], resolved["state"], resolved["decided_by"]) == (
            asked["request_id"],
            "expired",
            None,
        )
        assert "1.5 s" in resolved["reason"]
        late = await request(
            ws, {"type": "permission_reply", "id": 1, "request_id": asked["request_id"], "decision": "allow_once"}
        )
        assert (late["type"], late["code"]) == ("error", "already_decided")
        await wait_state(pool, task_id, "completed")
        assert not (await worktree(pool, session_id) / "notes.txt").exists()
        row = await pool.fetchrow("SELECT state, option_id, decided_at FROM permission_requests")
        assert (row["state"], row["option_id"]) == ("expired", "reject") and row["decided_at"] is not None


async def test_a_client_connecting_later_gets_the_open_request_and_another_gateway_answers(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    async with stack(db_url, pool, tmp_path, agent_env(execute="ask")) as s:
        async with open_client(s.url, s.token) as first:
            task_id, session_id = await start(first, s, "PERMISSION")
            asked = await next_frame(first, "permission_request")
            assert (asked["tool_kind"], asked["command"], asked["title"]) == ("execute", "rm -rf build", "rm -rf build")
        # A client of a second gateway process, connecting while the request is open.
        async with gateway_process(db_url, free_port()) as other_url, open_client(other_url, s.token) as late:
            assert (await recv(late))["type"] == "hello"
            await request(late, {"type": "subscribe", "id": 1, "session_ids": [session_id]})
            snapshot = await next_frame(late, "snapshot")
            [open_request] = snapshot["open_requests"]
            assert (open_request["request_id"], open_request["kind"]) == (asked["request_id"], "permission")
            await request(late, {"type": "subscribe", "id": 2, "session_ids": [session_id], "since_seq": 0})
            replayed = await next_frame(late, "permission_request")
            assert replayed == asked
            ack = await request(
                late, {"type": "permission_reply", "id": 3, "request_id": asked["request_id"], "decision": "allow_once"}
            )
            assert ack["state"] == "allowed"
            frames = await frames_until(late, "task_state", state="completed")
        text = "".join(f["text"] for f in frames if f["type"] == "delta")
        assert "permission=selected:opt-allow" in text
        assert (await wait_state(pool, task_id, "completed"))["state"] == "completed"


async def test_allow_always_is_remembered_for_the_session(db_url: str, pool: asyncpg.Pool, tmp_path: Path) -> None:
    async with stack(db_url, pool, tmp_path, agent_env(edit="ask")) as s, open_client(s.url, s.token) as ws:
        _, session_id = await start(ws, s, "WRITE a.txt first WRITE b.txt second")
        asked = await next_frame(ws, "permission_request")
        ack = await request(
            ws, {"type": "permission_reply", "id": 1, "request_id": asked["request_id"], "decision": "allow_always"}
        )
        assert (ack["state"], ack["remember"]) == ("allowed", "session")
        frames = await frames_until(ws, "task_state", state="completed")
        assert [f for f in frames if f["type"] == "permission_request"] == []
        # The first write was decided by the person, the second by the remembered grant.
        decisions = [(f["decision"], f["reason"]) for f in frames if f["type"] == "permission"]
        assert decisions == [("allowed", "allowed always for this session by token:ide")] * 2
        wt = await worktree(pool, session_id)
        assert (wt / "a.txt").read_text() == "first" and (wt / "b.txt").read_text() == "second"
        # The next turn of the session is allowed without asking, too.
        follow = await request(
            ws, {"type": "submit", "id": 2, "session_id": session_id, "input": "WRITE c.txt third", "agent": "fake"}
        )
        await wait_state(pool, follow["task_id"], "completed")
        assert (wt / "c.txt").read_text() == "third"
        assert await pool.fetchval("SELECT count(*) FROM permission_requests") == 1
        assert await pool.fetchval("SELECT count(*) FROM permission_grants WHERE session_id = $1", session_id) == 1


async def test_cancelling_the_task_withdraws_the_request(db_url: str, pool: asyncpg.Pool, tmp_path: Path) -> None:
    async with stack(db_url, pool, tmp_path, agent_env(execute="ask")) as s, open_client(s.url, s.token) as ws:
        task_id, _ = await start(ws, s, "PERMISSION")
        asked = await next_frame(ws, "permission_request")
        assert (await request(ws, {"type": "cancel", "id": 1, "task_id": task_id}))["state"] == "running"
        resolved = await next_frame(ws, "permission_resolved")
        assert (resolved["request_id"], resolved["state"]) == (asked["request_id"], "withdrawn")
        await wait_state(pool, task_id, "cancelled")
        late = await request(
            ws, {"type": "permission_reply", "id": 2, "request_id": asked["request_id"], "decision": "allow_once"}
        )
        assert (late["type"], late["code"]) == ("error", "already_decided")


# ---------------------------------------------------------------------------- the real opencode


def opencode_env(fake_model: FakeModel, **permissions: Any) -> dict[str, str]:
    env = {
        "SWITCHYARD__OPENCODE__BASE_URL": fake_model.base_url,
        "SWITCHYARD__OPENCODE__MODELS": '["fake-model"]',
    }
    return {**env, **{f"SWITCHYARD__PERMISSIONS__{k.upper()}": str(v) for k, v in permissions.items()}}


async def submit(ws: Any, stack: Stack, prompt: str, agent: str) -> tuple[int, int]:
    assert (await recv(ws))["type"] == "hello"
    frame = {"type": "submit", "id": "s", "project_id": stack.project_id, "input": prompt, "agent": agent}
    ack = await request(ws, frame)
    assert ack["type"] == "ack", ack
    await request(ws, {"type": "subscribe", "id": "sub", "session_ids": [ack["session_id"]], "since_seq": 0})
    return ack["task_id"], ack["session_id"]


@pytest.mark.parametrize("agent", ["opencode-acp", "opencode"])
async def test_opencode_asks_before_an_edit_and_writes_once_allowed(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path, fake_model: FakeModel, agent: str
) -> None:
    """``opencode acp`` (one-shot, ACP) and a warm ``opencode serve`` with ``edit = "ask"``."""
    env = opencode_env(fake_model, edit="ask")
    if agent == "opencode":
        env["SWITCHYARD__OPENCODE_POOL__MIN_SERVERS"] = "1"
    async with stack(db_url, pool, tmp_path, env) as s, open_client(s.url, s.token) as ws:
        task_id, session_id = await submit(ws, s, "WRITE_FILE notes/asked.txt TOKEN-ASKED", agent)
        asked = await next_frame(ws, "permission_request")
        assert asked["tool_kind"] == "edit" and asked["paths"], asked
        assert {o["kind"] for o in asked["options"]} == {"allow_once", "allow_always", "reject_once"}
        ack = await request(
            ws, {"type": "permission_reply", "id": 1, "request_id": asked["request_id"], "decision": "allow_once"}
        )
        assert (ack["state"], ack["option_id"]) == ("allowed", "once")
        frames = await frames_until(ws, "task_state", task_id=task_id, state="completed")
        assert any(f["type"] == "permission_resolved" and f["state"] == "allowed" for f in frames)
        assert (await worktree(pool, session_id) / "notes" / "asked.txt").read_text() == "TOKEN-ASKED\n"
        # Exactly one person's decision: the write that follows the approval is not asked again.
        assert await pool.fetchval("SELECT count(*) FROM permission_requests") == 1


async def test_opencode_rejected_edit_writes_nothing(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path, fake_model: FakeModel
) -> None:
    async with stack(db_url, pool, tmp_path, opencode_env(fake_model, edit="ask")) as s:
        async with open_client(s.url, s.token) as ws:
            task_id, session_id = await submit(ws, s, "WRITE_FILE notes/no.txt TOKEN-NO", "opencode-acp")
            asked = await next_frame(ws, "permission_request")
            frame = {"type": "permission_reply", "id": 1, "request_id": asked["request_id"], "decision": "reject"}
            assert (await request(ws, frame))["state"] == "denied"
            row = await wait_state(pool, task_id, "completed", "failed")
        assert not (await worktree(pool, session_id) / "notes" / "no.txt").exists(), row["error"]


async def test_the_warm_opencode_question_tool_is_answered_by_a_person(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path, fake_model: FakeModel
) -> None:
    env = opencode_env(fake_model, questions="ask")
    env["SWITCHYARD__OPENCODE_POOL__MIN_SERVERS"] = "1"
    async with stack(db_url, pool, tmp_path, env) as s, open_client(s.url, s.token) as ws:
        task_id, _ = await submit(ws, s, "ASK_QUESTION", "opencode")
        asked = await next_frame(ws, "question")
        [question] = asked["questions"]
        assert question["question"] == "Which colour should the button be?"
        assert [o["label"] for o in question["options"]] == ["red", "blue"]
        ack = await request(
            ws, {"type": "question_reply", "id": 1, "request_id": asked["request_id"], "answers": [["blue"]]}
        )
        assert (ack["state"], ack["answers"]) == ("answered", [["blue"]])
        frames = await frames_until(ws, "task_state", task_id=task_id, state="completed")
        [resolved] = [f for f in frames if f["type"] == "question_resolved"]
        assert (resolved["state"], resolved["answers"], resolved["decided_by"]) == ("answered", [["blue"]], "token:ide")
    # The model got the answer as the question tool's result.
    tool_results = [m for r in fake_model.chat_requests for m in r.messages if m.get("role") == "tool"]
    assert any("blue" in message_text(m) for m in tool_results)
