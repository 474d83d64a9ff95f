"""WebSocket actions do what the CLI does: the same task row, the same review outcome."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from orchestrator.services.gateway_actions import OrchestratorActions
from orchestrator.services.review import ReviewService
from testkit import SWITCHYARD
from testkit.clients import open_client, recv, request, session_frames
from testkit.repos import LINES, sample_repo
from testkit.rows import add_project, add_repo_session, finished_turn
from tests.ws_gateway.conftest import running_gateway
from worktrees import WorktreeSettings
from ws_gateway import Gateway, create_token

pytestmark = pytest.mark.anyio

TASK_COLUMNS = "project_id, session_id, input, agent, model, mode_id, priority, state, max_attempts, attempt"


def cli(db_url: str, *args: str, worktree_root: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD")}
    env["SWITCHYARD_DATABASE_URL"] = db_url
    if worktree_root is not None:
        env["SWITCHYARD__WORKTREES__ROOT"] = str(worktree_root)
    result = subprocess.run([*SWITCHYARD, *args], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
async def gateway(pool: asyncpg.Pool, db_url: str, review: ReviewService) -> AsyncIterator[Gateway]:
    async with running_gateway(pool, db_url, actions=OrchestratorActions(pool, review)) as gw:
        yield gw


async def test_submit_inserts_the_row_the_cli_inserts(gateway: Gateway, pool: asyncpg.Pool, db_url: str) -> None:
    project = await add_project(pool, "alpha")
    token = await create_token(pool, "operator", None)  # priority 2: more than a scoped token may set
    fields: dict[str, Any] = {"agent": "opencode", "model": "m1", "mode_id": "build", "priority": 2, "max_attempts": 1}
    cli(db_url, "submit", "explain", "--project", "alpha", "--agent", "opencode", "--model", "m1", "--mode", "build",
        "--priority", "2", "--max-attempts", "1", "--dispatch-key", "cli-1")  # fmt: skip
    async with open_client(gateway.url, token) as ws:
        await recv(ws)
        frame = {"type": "submit", "id": 1, "input": "explain", "project_id": project, "dispatch_key": "ws-1", **fields}
        ack = await request(ws, frame)
        assert ack["type"] == "ack" and ack["created"] is True
        again = await request(ws, {**frame, "id": 2})
        assert (again["task_id"], again["created"]) == (ack["task_id"], False)
    rows = [dict(row) for row in await pool.fetch(f"SELECT {TASK_COLUMNS} FROM tasks ORDER BY id")]
    assert len(rows) == 2
    # Each got its own new session at submit time, with the task's agent and model.
    sessions = [row.pop("session_id") for row in rows]
    assert sessions[1] == ack["session_id"] and sessions[0] != sessions[1]
    assert rows[0] == rows[1]
    agents = await pool.fetch("SELECT agent, model FROM sessions WHERE id = ANY($1) ORDER BY id", sessions)
    assert [tuple(r) for r in agents] == [("opencode", "m1")] * 2


async def test_a_dispatch_key_is_per_project_and_never_reveals_another_projects_task(
    gateway: Gateway, pool: asyncpg.Pool
) -> None:
    alpha, beta = await add_project(pool, "alpha"), await add_project(pool, "beta")
    frame = {"type": "submit", "input": "x", "dispatch_key": "shared-key"}
    async with open_client(gateway.url, await create_token(pool, "a", [alpha])) as ws:
        await recv(ws)
        theirs = await request(ws, {**frame, "id": 1, "project_id": alpha})
    # An attacker limited to beta tries alpha's key: it gets a task of its own, not alpha's.
    async with open_client(gateway.url, await create_token(pool, "b", [beta])) as ws:
        await recv(ws)
        mine = await request(ws, {**frame, "id": 2, "project_id": beta})
        again = await request(ws, {**frame, "id": 3, "project_id": beta})
    assert (theirs["created"], mine["created"], again["created"]) == (True, True, False)
    assert mine["task_id"] != theirs["task_id"] and again["task_id"] == mine["task_id"]
    rows = await pool.fetch("SELECT id, project_id FROM tasks ORDER BY id")
    assert [(r["id"], r["project_id"]) for r in rows] == [(theirs["task_id"], alpha), (mine["task_id"], beta)]


async def test_a_scoped_token_cannot_jump_the_queue(gateway: Gateway, pool: asyncpg.Pool) -> None:
    project = await add_project(pool, "alpha")
    frame = {"type": "submit", "input": "x", "project_id": project}
    async with open_client(gateway.url, await create_token(pool, "ide", [project])) as ws:
        await recv(ws)
        refused = await request(ws, {**frame, "id": 1, "priority": 2**31 - 1})
        assert refused["code"] == "forbidden"
        assert refused["message"] == (
            "a token limited to some projects may set priority at most 0 (gateway.scoped_max_priority)"
        )
        assert (await request(ws, {**frame, "id": 2, "priority": -5}))["type"] == "ack"
    async with open_client(gateway.url, await create_token(pool, "operator", None)) as ws:
        await recv(ws)
        assert (await request(ws, {**frame, "id": 3, "priority": 100}))["type"] == "ack"
    assert [r["priority"] for r in await pool.fetch("SELECT priority FROM tasks ORDER BY id")] == [-5, 100]


async def test_submit_to_a_session_and_authorization(
    gateway: Gateway, pool: asyncpg.Pool, repo: Path, tmp_path: Path
) -> None:
    session = await add_repo_session(pool, repo)
    project = await pool.fetchval("SELECT project_id FROM sessions WHERE id = $1", session)
    other_session = await add_repo_session(pool, sample_repo(tmp_path / "other"))
    other_project = await pool.fetchval("SELECT project_id FROM sessions WHERE id = $1", other_session)
    token = await create_token(pool, "ide", [project])
    async with open_client(gateway.url, token) as ws:
        await recv(ws)
        ack = await request(ws, {"type": "submit", "id": 1, "input": "go on", "session_id": session})
        row = await pool.fetchrow("SELECT project_id, session_id FROM tasks WHERE id = $1", ack["task_id"])
        assert (row["project_id"], row["session_id"]) == (project, session)
        refused = [
            {"session_id": other_session},
            {"project_id": other_project},
            {"project_id": 999},
            {"session_id": session, "project_id": other_project},
        ]
        for target in refused:
            error = await request(ws, {"type": "submit", "id": 2, "input": "x", **target})
            assert error["type"] == "error"
            assert error["code"] in ("forbidden", "invalid_frame")
    assert await pool.fetchval("SELECT count(*) FROM tasks") == 1


async def test_review_over_websocket_matches_the_cli(
    gateway: Gateway,
    pool: asyncpg.Pool,
    db_url: str,
    repo: Path,
    review: ReviewService,
    worktree_settings: WorktreeSettings,
) -> None:
    by_ws = await add_repo_session(pool, repo)
    by_cli = await add_repo_session(pool, repo)
    project = await pool.fetchval("SELECT project_id FROM sessions WHERE id = $1", by_ws)
    token = await create_token(pool, "ide", [project])
    ws_change = await finished_turn(review, pool, by_ws, {"from_ws.txt": "ws\n"})
    cli_change = await finished_turn(review, pool, by_cli, {"from_cli.txt": "cli\n"})

    async with open_client(gateway.url, token) as ws:
        await recv(ws)
        await request(ws, {"type": "subscribe", "id": "s", "session_ids": [by_ws], "since_seq": 0})
        [announced] = await session_frames(ws, 1)
        assert (announced["type"], announced["change_id"], announced["status"]) == (
            "pending_change",
            ws_change,
            "pending",
        )

        diff = await request(ws, {"type": "get_diff", "id": "d", "change_id": ws_change})
        assert diff["change_id"] == ws_change
        assert "+ws" in diff["diff"] and "from_ws.txt" in diff["diff"]
        assert diff["diff"] == cli(db_url, "diff", str(ws_change), worktree_root=worktree_settings.root).stdout

        ack = await request(ws, {"type": "review", "id": "r", "change_id": ws_change, "action": "accept"})
        assert (ack["action"], ack["change_id"], ack["status"]) == ("review", ws_change, "accepted")
        assert ack["resolved_by"] == "token:ide"
        [accepted] = await session_frames(ws, 1)
        assert (accepted["change_id"], accepted["status"]) == (ws_change, "accepted")

        again = await request(ws, {"type": "review", "id": "r2", "change_id": ws_change, "action": "reject"})
        assert again["code"] == "not_pending"
        missing = await request(ws, {"type": "get_diff", "id": "m", "change_id": 999})
        assert missing["code"] == "forbidden"

    cli(db_url, "accept", str(cli_change), "--by", "token:ide", worktree_root=worktree_settings.root)
    assert (repo / "from_ws.txt").read_text() == "ws\n"
    assert (repo / "from_cli.txt").read_text() == "cli\n"
    rows = await pool.fetch(
        "SELECT status, resolved_by, resolved_at IS NOT NULL AS resolved FROM pending_changes WHERE id = ANY($1)"
        " ORDER BY id",
        [ws_change, cli_change],
    )
    assert dict(rows[0]) == dict(rows[1]) == {"status": "accepted", "resolved_by": "token:ide", "resolved": True}


async def test_reject_over_websocket_restores_the_worktree(
    gateway: Gateway, pool: asyncpg.Pool, repo: Path, review: ReviewService, tmp_path: Path
) -> None:
    session = await add_repo_session(pool, repo)
    project = await pool.fetchval("SELECT project_id FROM sessions WHERE id = $1", session)
    token = await create_token(pool, "ide", [project])
    change = await finished_turn(review, pool, session, {"keep.txt": "changed\n", "new.txt": "new\n"})
    worktree = await review.worktrees.ensure(session)
    foreign = await add_repo_session(pool, sample_repo(tmp_path / "other"))
    foreign_change = await finished_turn(review, pool, foreign, {"x.txt": "x\n"})
    async with open_client(gateway.url, token) as ws:
        await recv(ws)
        forbidden = await request(ws, {"type": "review", "id": 1, "change_id": foreign_change, "action": "accept"})
        assert forbidden["code"] == "forbidden"
        unknown = await request(
            ws, {"type": "review", "id": 2, "change_id": change, "action": "reject", "files": ["nope.txt"]}
        )
        assert unknown["code"] == "unknown_file"
        ack = await request(
            ws, {"type": "review", "id": 3, "change_id": change, "action": "reject", "files": ["new.txt"]}
        )
        assert ack["status"] == "rejected"
        assert ack["remainder"]["status"] == "pending"
    assert not (worktree.path / "new.txt").exists()
    assert (worktree.path / "keep.txt").read_text() == "changed\n"
    assert await pool.fetchval("SELECT status FROM pending_changes WHERE id = $1", foreign_change) == "pending"


async def test_the_review_loop_over_websocket(
    gateway: Gateway, pool: asyncpg.Pool, repo: Path, review: ReviewService, tmp_path: Path
) -> None:
    session = await add_repo_session(pool, repo)
    project = await pool.fetchval("SELECT project_id FROM sessions WHERE id = $1", session)
    token = await create_token(pool, "ide", [project])
    text = LINES.replace("line 2\n", "line 2 agent\n").replace("line 18\n", "line 18 agent\n")
    first = await finished_turn(review, pool, session, {"a.txt": text})
    foreign = await add_repo_session(pool, sample_repo(tmp_path / "other"))
    foreign_change = await finished_turn(review, pool, foreign, {"x.txt": "x\n"})

    async with open_client(gateway.url, token) as ws:
        await recv(ws)
        await request(ws, {"type": "subscribe", "id": "s", "session_ids": [session], "since_seq": 1})
        made = await request(
            ws, {"type": "comment", "id": 1, "change_id": first, "body": "Why?", "path": "a.txt", "line": 2}
        )
        assert made["action"] == "comment" and made["comment"]["author"] == "token:ide"
        [frame] = await session_frames(ws, 1)
        assert frame["type"] == "review_comment" and frame["comment_id"] == made["comment"]["comment_id"]
        bad = await request(
            ws, {"type": "comment", "id": 2, "change_id": first, "body": "x", "path": "a.txt", "line": 99}
        )
        assert bad["code"] == "invalid_comment"

        diff = await request(ws, {"type": "get_diff", "id": 3, "change_id": first})
        [entry] = diff["diff_files"]
        assert [h["id"] for h in entry["hunks"]] == [1, 2] and diff["comments"][0]["body"] == "Why?"

        asked = await request(ws, {"type": "request_changes", "id": 4, "change_id": first})
        assert asked["comment_ids"] == [made["comment"]["comment_id"]] and asked["session_id"] == session
        assert "Why?" in await pool.fetchval("SELECT input FROM tasks WHERE id = $1", asked["task_id"])
        [frame] = await session_frames(ws, 1)
        assert frame["type"] == "changes_requested" and frame["task_id"] == asked["task_id"]
        nothing = await request(ws, {"type": "request_changes", "id": 5, "change_id": first})
        assert nothing["code"] == "no_comments"
        await pool.execute("UPDATE tasks SET state = 'cancelled', ended_at = now() WHERE id = $1", asked["task_id"])

        second = await finished_turn(review, pool, session, {"a.txt": text.replace("line 10\n", "line 10 agent\n")})
        since = await request(ws, {"type": "get_diff", "id": 6, "change_id": second, "since_change_id": first})
        assert since["since_change_id"] == first and "+line 10 agent" in since["diff"]
        assert "+line 2 agent" not in since["diff"] and since["comments"][0]["outdated"] is False
        listed = await request(ws, {"type": "list_changes", "id": 7, "session_id": session})
        assert [(c["change_id"], c["status"], c["comment_count"]) for c in listed["changes"]] == [
            (second, "pending", 1),
            (first, "superseded", 1),
        ]
        (await review.worktrees.ensure(session)).path.joinpath("live.txt").write_text("live\n")
        live = await request(ws, {"type": "get_diff", "id": 8, "session_id": session, "live": True})
        assert live["live"] is True and "live.txt" in [f["path"] for f in live["diff_files"]]

        hunk = await request(
            ws,
            {"type": "review", "id": 9, "change_id": second, "action": "accept", "hunks": {"a.txt": [2]},
             "mode": "commit", "message": "Hunk two"},
        )  # fmt: skip
        assert hunk["status"] == "accepted" and hunk["commit"] and hunk["branch"] == "main"
        assert hunk["remainder"]["status"] == "pending"
        assert (repo / "a.txt").read_text() == LINES.replace("line 10\n", "line 10 agent\n")

        rest = hunk["remainder"]["change_id"]
        nothing = await request(ws, {"type": "rebase", "id": 10, "change_id": rest})
        assert nothing["code"] == "nothing_to_rebase"
        no_conflicts = await request(ws, {"type": "resolve_with_agent", "id": 11, "change_id": rest})
        assert no_conflicts["code"] == "no_conflicts"
        busy = await request(
            ws, {"type": "review", "id": 12, "change_id": rest, "action": "accept", "mode": "branch", "branch": "main"}
        )
        assert busy["code"] == "bad_branch"
        for frame in (
            {"type": "comment", "change_id": foreign_change, "body": "x"},
            {"type": "get_diff", "change_id": rest, "since_change_id": foreign_change},
            {"type": "list_changes", "session_id": foreign},
            {"type": "get_diff", "session_id": foreign, "live": True},
            {"type": "rebase", "change_id": foreign_change},
        ):
            refused = await request(ws, {**frame, "id": 13})
            assert refused["code"] == "forbidden", frame
