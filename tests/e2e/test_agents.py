"""One-shot external agents end to end: a task row with agent 'opencode-acp' or 'opencode-run' ->
dispatcher -> the configured router -> the real opencode (ACP / PTY) -> the fake model; the file
lands in the session worktree, the frames arrive in order, the task completes."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from backends.commands import ANY, CommandRule
from backends.opencode_env import OpencodeSettings
from backends.permissions import PermissionPolicy
from backends.processes import descendants, process_table
from orchestrator.app.config import Config
from orchestrator.app.wiring import build_router
from orchestrator.dispatch.dispatcher import Dispatcher
from orchestrator.dispatch.settings import DispatcherSettings
from orchestrator.services.tasks import cancel_task
from testkit.fake_model import FakeModel
from testkit.repos import sample_repo
from testkit.rows import add_project
from worktrees import WorktreeSettings
from worktrees.manager import WorktreeManager

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leftover_processes")]

WAIT_SECONDS = 90
INSERT_TASK = "INSERT INTO tasks (project_id, input, agent) VALUES ($1, $2, $3) RETURNING id"
EVENTS = "SELECT seq, type, payload FROM session_events WHERE session_id = $1 ORDER BY seq"


@pytest.fixture
async def project(pool: asyncpg.Pool, tmp_path: Path) -> int:
    return await add_project(pool, "agents", sample_repo(tmp_path / "project"))


@pytest.fixture
async def dispatcher(db_url: str, pool: asyncpg.Pool, fake_model: FakeModel, tmp_path: Path) -> AsyncIterator[None]:
    # `sleep` is allowed so a turn can be caught running a tool.
    config = Config(
        opencode=OpencodeSettings(base_url=fake_model.base_url, models=("fake-model",)),
        permissions=PermissionPolicy(commands={"sleep": CommandRule(args=ANY)}),
    )
    worktrees = WorktreeManager(pool, WorktreeSettings(root=tmp_path / "worktrees"))
    settings = DispatcherSettings(poll_interval=0.5, retry_backoff=0.05, finalize_timeout=10)
    running = Dispatcher(db_url, settings, build_router(config), worktrees)
    async with anyio.create_task_group() as tg:
        tg.start_soon(running.run)
        yield
        running.request_shutdown()


async def wait_done(pool: asyncpg.Pool, task_id: int) -> asyncpg.Record:
    with anyio.fail_after(WAIT_SECONDS):
        while True:
            row = await pool.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id)
            if row["state"] in ("completed", "failed", "cancelled"):
                return row
            await anyio.sleep(0.05)


def first(types: list[str], type_: str) -> int:
    return types.index(type_)


def last(types: list[str], type_: str) -> int:
    return len(types) - 1 - types[::-1].index(type_)


@pytest.mark.usefixtures("dispatcher")
@pytest.mark.parametrize(("agent", "path"), [("opencode-acp", "acp"), ("opencode-run", "pty")])
async def test_an_sql_task_runs_the_agent_in_the_session_worktree(
    pool: asyncpg.Pool, project: int, agent: str, path: str
) -> None:
    token = f"TOKEN-{path.upper()}-E2E"
    task_id = await pool.fetchval(INSERT_TASK, project, f"WRITE_FILE notes/{path}.txt {token}", agent)
    task = await wait_done(pool, task_id)
    assert (task["state"], task["error"], task["execution_path"]) == ("completed", None, path)

    session = task["session_id"]
    worktree = Path(await pool.fetchval("SELECT path FROM session_worktrees WHERE session_id = $1", session))
    assert (worktree / "notes" / f"{path}.txt").read_text() == f"{token}\n"
    change = await pool.fetchrow("SELECT * FROM pending_changes WHERE session_id = $1", session)
    assert change is not None and f"+{token}" in change["diff"]

    rows = await pool.fetch(EVENTS, session)
    assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)
    types = [r["type"] for r in rows]
    payloads: list[dict[str, Any]] = [r["payload"] for r in rows]
    text = "".join(p["text"] for p, t in zip(payloads, types, strict=True) if t == "delta")
    assert text.index("I will write the file.") < text.index("Done. Tool said:")
    # The message opens before any content and closes after all of it.
    assert first(types, "message_started") < first(types, "delta")
    assert last(types, "delta") < first(types, "message_complete")
    if path == "acp":
        tools = [p for p, t in zip(payloads, types, strict=True) if t == "tool_call"]
        assert tools[-1]["status"] == "completed"
        [permission] = [p for p, t in zip(payloads, types, strict=True) if t == "permission"]
        assert permission["decision"] == "allowed"
        assert first(types, "tool_call") < first(types, "permission") < last(types, "tool_call")
        assert last(types, "tool_call") < first(types, "message_complete")


def sleeping() -> bool:
    """Is a `sleep 30` that opencode's bash tool started running below this process?"""
    for pid in descendants([os.getpid()], process_table()):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x0030\x00":
                return True
    return False


@pytest.mark.usefixtures("dispatcher")
async def test_cancelling_a_running_acp_task_stops_the_agent_and_its_tools(pool: asyncpg.Pool, project: int) -> None:
    task_id = await pool.fetchval(INSERT_TASK, project, "SLEEP_TOOL", "opencode-acp")
    with anyio.fail_after(WAIT_SECONDS):
        while not sleeping():
            await anyio.sleep(0.05)
    async with pool.acquire() as conn:
        assert await cancel_task(conn, task_id) == "running"
    task = await wait_done(pool, task_id)
    assert task["state"] == "cancelled"
    assert not sleeping()
