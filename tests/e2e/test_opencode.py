"""The opencode_server track end to end: task rows -> dispatcher -> the warm pool's real
``opencode serve`` -> the fake model; frames, agent_sessions, worktree files and pending changes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from backends.commands import ANY, CommandRule
from backends.opencode_env import OpencodeSettings
from backends.opencode_pool import OpencodePool, OpencodePoolSettings, marked_processes
from backends.opencode_server import OpencodeServerBackend
from backends.permissions import PermissionPolicy
from orchestrator.dispatch.dispatcher import Dispatcher
from orchestrator.dispatch.routing import Router
from orchestrator.dispatch.settings import DispatcherSettings
from orchestrator.services.tasks import cancel_task
from testkit.fake_model import FakeModel
from testkit.repos import sample_repo
from testkit.rows import add_project
from worktrees import WorktreeSettings
from worktrees.manager import WorktreeManager

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

WAIT_SECONDS = 60
INSERT_TASK = "INSERT INTO tasks (project_id, session_id, input, agent) VALUES ($1, $2, $3, 'opencode') RETURNING id"
AGENT_SESSION = "SELECT * FROM agent_sessions WHERE session_id = $1 AND agent = 'opencode'"
EVENTS = "SELECT type, payload FROM session_events WHERE session_id = $1 ORDER BY seq"
CHANGES = "SELECT * FROM pending_changes WHERE session_id = $1 ORDER BY id"


@pytest.fixture(scope="module")
def fake_model() -> Iterator[FakeModel]:
    with FakeModel() as model:
        yield model


@pytest.fixture(scope="module")
async def oc_pool(fake_model: FakeModel, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[OpencodePool]:
    opencode = OpencodeSettings(base_url=fake_model.base_url, models=("fake-model",))
    root = tmp_path_factory.mktemp("opencode-pool")
    async with OpencodePool(OpencodePoolSettings(servers=1), opencode, root) as pool:
        yield pool
    assert pool.leftover_pids() == []


@pytest.fixture
async def project(pool: asyncpg.Pool, tmp_path: Path) -> int:
    return await add_project(pool, "oc", sample_repo(tmp_path / "project"))


@pytest.fixture
async def dispatcher(db_url: str, pool: asyncpg.Pool, oc_pool: OpencodePool, tmp_path: Path) -> AsyncIterator[None]:
    # `sleep` is allowed so a turn can be caught running a tool.
    backend = partial(OpencodeServerBackend, oc_pool, PermissionPolicy(commands={"sleep": CommandRule(args=ANY)}))
    worktrees = WorktreeManager(pool, WorktreeSettings(root=tmp_path / "worktrees"))
    settings = DispatcherSettings(poll_interval=0.5, retry_backoff=0.05, finalize_timeout=10)
    running = Dispatcher(db_url, settings, Router(agents={"opencode": backend}), worktrees)
    async with anyio.create_task_group() as tg:
        tg.start_soon(running.run)
        yield
        running.request_shutdown()


async def wait_task(pool: asyncpg.Pool, task_id: int, states: tuple[str, ...]) -> asyncpg.Record:
    with anyio.fail_after(WAIT_SECONDS):
        while True:
            row = await pool.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id)
            if row["state"] in states:
                return row
            await anyio.sleep(0.02)


def frames(events: list[asyncpg.Record], type_: str) -> list[dict[str, Any]]:
    return [e["payload"] for e in events if e["type"] == type_]


@pytest.mark.usefixtures("dispatcher")
async def test_a_session_keeps_its_opencode_session_and_its_changes_become_pending(
    pool: asyncpg.Pool, project: int, oc_pool: OpencodePool
) -> None:
    first_id = await pool.fetchval(INSERT_TASK, project, None, "WRITE_FILE notes/todo.txt REMEMBER-ME")
    first = await wait_task(pool, first_id, ("completed", "failed", "cancelled"))
    assert (first["state"], first["error"], first["execution_path"]) == ("completed", None, "opencode_server")
    session = first["session_id"]
    upstream = await pool.fetchrow(AGENT_SESSION, session)
    assert upstream is not None and upstream["server_key"] in {s.slot for s in oc_pool.servers}

    worktree = Path(await pool.fetchval("SELECT path FROM session_worktrees WHERE session_id = $1", session))
    assert (worktree / "notes" / "todo.txt").read_text() == "REMEMBER-ME\n"
    [change] = await pool.fetch(CHANGES, session)
    assert (change["status"], change["task_id"]) == ("pending", first_id)
    assert "notes/todo.txt" in change["diff"] and "+REMEMBER-ME" in change["diff"]

    second_id = await pool.fetchval(INSERT_TASK, project, session, "and now hello")
    second = await wait_task(pool, second_id, ("completed", "failed", "cancelled"))
    assert (second["state"], second["error"]) == ("completed", None)
    again = await pool.fetchrow(AGENT_SESSION, session)
    assert (again["upstream_session_id"], again["server_key"]) == (
        upstream["upstream_session_id"],
        upstream["server_key"],
    )

    events = await pool.fetch(EVENTS, session)
    text = "".join(d["text"] for d in frames(events, "delta"))
    assert "I will write the file." in text and "Fake reply to: and now hello" in text
    tools = frames(events, "tool_call")
    assert tools[-1]["name"] == "write" and tools[-1]["status"] == "completed"
    assert [p["decision"] for p in frames(events, "permission")] == ["allowed"]


@pytest.mark.usefixtures("dispatcher")
async def test_cancelling_a_running_task_aborts_opencode(
    pool: asyncpg.Pool, project: int, oc_pool: OpencodePool
) -> None:
    task_id = await pool.fetchval(INSERT_TASK, project, None, "SLEEP_TOOL")
    # Any server of the pool: the project's own one starts for this turn.
    prefix = f"{oc_pool.nonce}/"

    def sleeping() -> bool:
        for pid in marked_processes(lambda m: m.startswith(prefix)):
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep\x00"):
                    return True
            except OSError:
                continue
        return False

    with anyio.fail_after(WAIT_SECONDS):
        while not sleeping():
            await anyio.sleep(0.05)
    async with pool.acquire() as conn:
        assert await cancel_task(conn, task_id) == "running"
    task = await wait_task(pool, task_id, ("completed", "failed", "cancelled"))
    assert task["state"] == "cancelled"
    with anyio.fail_after(10):
        while sleeping():
            await anyio.sleep(0.05)
