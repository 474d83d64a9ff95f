"""Hot spare worktrees in the service as ``switchyard dispatcher`` assembles it: the real dispatcher,
the warm opencode pool (the pinned binary, sandboxed) against FakeModel, a real repository."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from orchestrator.app.config import Config, build, resolve_paths
from orchestrator.app.wiring import Runtime, _PoolMetrics, dispatcher_runtime
from testkit import fake_acp_agent_command
from testkit.fake_model import FakeModel
from testkit.repos import git, sample_repo
from testkit.rows import add_project
from tests.dispatching import wait_state
from worktrees import read_spare_status

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leftover_processes")]

WAIT_S = 60
WORKTREE_PATH = "SELECT path FROM session_worktrees WHERE session_id = $1"
INSERT_TASK = "INSERT INTO tasks (project_id, session_id, input, agent) VALUES ($1, $2, $3, 'opencode') RETURNING id"


@pytest.fixture
async def fake_model() -> AsyncIterator[FakeModel]:
    async with FakeModel() as model:
        yield model


def service_config(tmp_path: Path, fake_model: FakeModel, **sections: dict[str, Any]) -> Config:
    raw: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "opencode": {"base_url": fake_model.base_url, "models": ["fake-model"]},
        "opencode_pool": {"servers": 1, "min_servers": 1},
        "dispatcher": {"poll_interval": 0.5},
        **sections,
    }
    return resolve_paths(build(Config, raw, ""))


@asynccontextmanager
async def service(config: Config, url: str) -> AsyncIterator[Runtime]:
    async with dispatcher_runtime(config, url) as runtime, anyio.create_task_group() as tg:
        tg.start_soon(runtime.dispatcher.run)
        try:
            yield runtime
        finally:
            runtime.dispatcher.request_shutdown()


async def wait_until(predicate: Callable[[], object], what: str) -> None:
    try:
        with anyio.fail_after(WAIT_S):
            while not predicate():
                await anyio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def new_session_turn(pool: asyncpg.Pool, project: int, text: str) -> asyncpg.Record:
    task_id = await pool.fetchval(INSERT_TASK, project, None, text)
    task = await wait_state(pool, task_id, "completed", "failed", timeout=WAIT_S)
    assert (task["state"], task["error"]) == ("completed", None)
    return task


def worktrees_of(repo: Path) -> list[str]:
    listing = git(repo, "worktree", "list", "--porcelain").splitlines()
    return [line.removeprefix("worktree ") for line in listing if line.startswith("worktree ")]


async def test_a_new_warm_session_takes_the_warmed_spare_and_the_next_one_is_warmed(
    pool: asyncpg.Pool, db_url: str, tmp_path: Path, fake_model: FakeModel
) -> None:
    repo = sample_repo(tmp_path / "project")
    project = await add_project(pool, repo=repo)
    config = service_config(tmp_path, fake_model)
    async with service(config, db_url) as runtime:
        assert runtime.opencode_pool is not None
        # The project's first session: nothing was wanted yet, its worktree is made the usual way
        # (and its turn starts the project's server).
        first = await new_session_turn(pool, project, "first session")
        first_path = await pool.fetchval(WORKTREE_PATH, first["session_id"])
        assert Path(first_path).name == str(first["session_id"])
        # Now the project has a spare, warmed on its server.
        await wait_until(lambda: runtime.spares.all_ready() and runtime.spares.ready(project), "a warmed spare")
        (spare,) = runtime.spares.ready(project)
        assert spare.warmed is True
        (server,) = runtime.opencode_pool.servers
        assert str(spare.path) in server.spares
        # The pool's gauge counts both loaded instances: the first session's and the spare's.
        (instances,) = [m for m in _PoolMetrics(runtime.opencode_pool).collect() if m.name.endswith("_instances")]
        by_kind = {s.labels["kind"]: s.value for s in instances.samples if s.labels["server"] == server.key}
        assert by_kind == {"session": 1, "spare": 1}
        await runtime.opencode_pool.check()  # writes the status file `switchyard pool` reads
        await wait_until(lambda: read_spare_status(config.data_dir / "opencode-pool"), "the spares' status file")

        second = await new_session_turn(pool, project, "second session")

        row = await pool.fetchrow("SELECT path, branch, base_commit FROM session_worktrees WHERE session_id = $1",
                                  second["session_id"])  # fmt: skip
        assert (row["path"], row["branch"]) == (str(spare.path), f"switchyard/{second['session_id']}")
        assert row["base_commit"] == git(repo, "rev-parse", "HEAD")
        assert git(spare.path, "rev-parse", "--abbrev-ref", "HEAD") == row["branch"]
        # The warmed instance served the session's turn: no longer a spare, still loaded.
        assert str(spare.path) not in server.spares and str(spare.path) in server.directories
        reply = await pool.fetchval(
            "SELECT content FROM messages WHERE task_id = $1 AND role = 'assistant'", second["id"]
        )
        assert reply == "Fake reply to: second session"
        # A new spare is made and warmed in the background.
        await wait_until(
            lambda: [s for s in runtime.spares.ready(project) if s.path != spare.path and s.warmed], "the next spare"
        )
        (replacement,) = runtime.spares.ready(project)
        # opencode's undo snapshots are off: it made no snapshot repository of any worktree.
        assert not (server.home / "data" / "opencode" / "snapshot").exists()
    # Leaving the service removed the spare; the sessions' worktrees stay.
    assert not replacement.path.exists()
    assert sorted(worktrees_of(repo)) == sorted([str(repo.resolve()), first_path, str(spare.path)])
    assert read_spare_status(config.data_dir / "opencode-pool") == []


async def test_without_spares_every_new_session_makes_its_worktree(
    pool: asyncpg.Pool, db_url: str, tmp_path: Path, fake_model: FakeModel
) -> None:
    repo = sample_repo(tmp_path / "project")
    project = await add_project(pool, repo=repo)
    config = service_config(tmp_path, fake_model, worktrees={"spares": 0})
    async with service(config, db_url) as runtime:
        for text in ("one", "two"):
            task = await new_session_turn(pool, project, text)
            path = await pool.fetchval(WORKTREE_PATH, task["session_id"])
            assert Path(path).name == str(task["session_id"])
        assert runtime.spares.ready(project) == []
        assert len(worktrees_of(repo)) == 3


async def test_a_new_acp_session_takes_a_pre_started_agent_and_none_outlives_the_service(
    pool: asyncpg.Pool, db_url: str, tmp_path: Path, fake_model: FakeModel
) -> None:
    repo = sample_repo(tmp_path / "project")
    project = await add_project(pool, repo=repo)
    fake = {"transport": "acp", "command": fake_acp_agent_command()}
    config = service_config(tmp_path, fake_model, agents={"fake": fake}, worktrees={"spares": 0})
    insert = "INSERT INTO tasks (project_id, session_id, input, agent) VALUES ($1, NULL, 'CWD', 'fake') RETURNING id"

    async def cwd_reply() -> tuple[str, str]:
        task = await wait_state(pool, await pool.fetchval(insert, project), "completed", "failed", timeout=WAIT_S)
        assert (task["state"], task["error"]) == ("completed", None)
        path = await pool.fetchval(WORKTREE_PATH, task["session_id"])
        reply = await pool.fetchval(
            "SELECT content FROM messages WHERE task_id = $1 AND role = 'assistant'", task["id"]
        )
        return path, reply

    async with service(config, db_url) as runtime:
        # The first turn of the agent in the project starts its own process, in the worktree.
        path, reply = await cwd_reply()
        assert f"cwd={path} session_cwd={path}" in reply
        root = Path(path).parent
        await wait_until(lambda: runtime.agent_spares.snapshot() and runtime.agent_spares.all_ready(), "a spare")
        (kept,) = runtime.agent_spares.snapshot()
        assert (kept["agent"], kept["project_root"], kept["ready"]) == ("fake", str(root), 1)
        # The next new session's turn is served by the pre-started one (it runs in the project's
        # directory; its session in the worktree).
        path, reply = await cwd_reply()
        assert f"cwd={root} session_cwd={path}" in reply
        await wait_until(runtime.agent_spares.all_ready, "the next spare")
    # no_leftover_processes: no pre-started agent outlived the service.
