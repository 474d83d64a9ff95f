"""The pool of ``opencode serve`` processes: start, status, recycling, shrinking, restarts, cleanup.

Real servers (the pinned binary) against FakeModel; each test runs its own small pool and checks
that nothing it started is left afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from backends import opencode_pool
from backends.errors import OpencodeServerError
from backends.opencode_env import OpencodeSettings
from backends.opencode_pool import (
    MARKER_ENV,
    OpencodePool,
    OpencodePoolSettings,
    ProjectPlace,
    ServerState,
    kill_orphans,
    marked_processes,
    read_pool_status,
)

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leftover_processes")]


@pytest.fixture(scope="module")
def opencode() -> Iterator[OpencodeSettings]:
    # No turn runs here: the servers never reach the model.
    yield OpencodeSettings(base_url="http://127.0.0.1:9/v1", models=("fake-model",))


def quiet(**changes: Any) -> OpencodePoolSettings:
    """Pool settings whose maintenance never runs by itself: the tests call check()."""
    return OpencodePoolSettings(**{"health_interval": 3600.0, **changes})


@asynccontextmanager
async def running_pool(
    opencode: OpencodeSettings, root: Path, settings: OpencodePoolSettings
) -> AsyncIterator[OpencodePool]:
    pool = OpencodePool(settings, opencode, root)
    async with pool:
        yield pool
    assert pool.leftover_pids() == []


async def wait_until(predicate: Callable[[], object], timeout: float = 30.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.05)


def project(tmp_path: Path) -> Path:
    """Project 1's worktrees directory (a server's sandbox can write it)."""
    path = tmp_path / "project"
    path.mkdir(exist_ok=True)
    return path


def alive(pid: int | None) -> bool:
    assert pid is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (it only waits to be reaped).
    return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"


async def test_a_pool_serves_reports_and_leaves_nothing_behind(opencode: OpencodeSettings, tmp_path: Path) -> None:
    async with running_pool(opencode, tmp_path, quiet()) as pool:
        async with pool.lease(ProjectPlace(1, project(tmp_path)), 1, str(tmp_path / "project")) as server:
            assert server.state is ServerState.READY
            assert server.url.startswith("http://127.0.0.1:")
            assert server.version == "1.18.33"
            assert (await server.request("GET", "/global/health"))["healthy"] is True
            # Every route wants the password.
            async with httpx.AsyncClient() as anonymous:
                assert (await anonymous.get(f"{server.url}/global/health")).status_code == 401
        await pool.check()
        [status] = read_pool_status(tmp_path)
        [entry] = status["servers"]
        assert (entry["key"], entry["pid"], entry["state"]) == (server.key, server.pid, "ready")
        assert entry["sessions"] == [1] and entry["rss_mb"] > 10
        pid = server.pid
    assert not alive(pid)
    assert read_pool_status(tmp_path) == []
    assert not any((tmp_path / "servers").iterdir())


async def test_an_oversized_server_is_recycled_and_replaced(opencode: OpencodeSettings, tmp_path: Path) -> None:
    async with running_pool(opencode, tmp_path, quiet(max_rss_mb=1)) as pool:
        async with pool.lease(ProjectPlace(1, project(tmp_path)), 1, str(tmp_path / "project")) as old:
            pass
        await pool.check()
        await wait_until(lambda: not alive(old.pid) and any(s.state is ServerState.READY for s in pool.servers))
        [new] = pool.servers
        assert new.key != old.key
        assert old.state is ServerState.EXITED


async def test_a_server_that_stops_answering_is_replaced(
    opencode: OpencodeSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(opencode_pool, "HEALTH_TIMEOUT", 0.2)
    async with running_pool(opencode, tmp_path, quiet(stop_grace=1.0)) as pool:
        async with pool.lease(ProjectPlace(1, project(tmp_path)), 1, str(tmp_path / "project")):
            pass
        [frozen] = pool.servers
        assert frozen.pid is not None and frozen.tree is not None
        # The whole tree: the sandbox's bwrap and the opencode inside it.
        for pid in frozen.tree.scan():
            os.kill(pid, signal.SIGSTOP)
        for _ in range(opencode_pool.UNHEALTHY_AFTER):
            await pool.check()
        await wait_until(lambda: frozen.state is ServerState.EXITED and any(s.usable for s in pool.servers))
        assert not alive(frozen.pid)


async def test_a_busy_server_is_recycled_only_after_its_turn(opencode: OpencodeSettings, tmp_path: Path) -> None:
    async with running_pool(opencode, tmp_path, quiet(max_age=0.0, min_servers=0)) as pool:
        async with pool.lease(ProjectPlace(1, project(tmp_path)), 1, str(tmp_path / "project")) as server:
            await pool.check()
            assert server.state is ServerState.DRAINING
            assert alive(server.pid)
            # A draining server takes no new sessions.
            async with pool.lease(ProjectPlace(1, project(tmp_path)), 2, str(tmp_path / "project")) as other:
                assert other is not server
        await wait_until(lambda: server.state is ServerState.EXITED)


async def test_an_idle_pool_shrinks(opencode: OpencodeSettings, tmp_path: Path) -> None:
    async with running_pool(opencode, tmp_path, quiet(min_servers=0, idle_shrink=0.0)) as pool:
        assert pool.servers == []
        async with pool.lease(ProjectPlace(1, project(tmp_path)), 1, str(tmp_path / "project")) as server:
            pass
        await pool.check()
        await wait_until(lambda: not pool.servers)
        assert not alive(server.pid)


async def test_a_crashed_server_is_restarted(opencode: OpencodeSettings, tmp_path: Path) -> None:
    async with running_pool(opencode, tmp_path, quiet()) as pool:
        async with pool.lease(ProjectPlace(1, project(tmp_path)), 1, str(tmp_path / "project")) as crashed:
            pass
        assert crashed.pid is not None
        os.kill(crashed.pid, signal.SIGKILL)
        await wait_until(lambda: crashed.state is ServerState.EXITED)
        assert "SIGKILL" in crashed.describe_exit()
        # The session that used it gets a fresh server.
        async with pool.lease(ProjectPlace(1, project(tmp_path)), 1, str(tmp_path / "project"), crashed.slot) as fresh:
            assert fresh is not crashed and fresh.state is ServerState.READY


async def test_a_server_that_cannot_start_fails_the_lease_clearly(tmp_path: Path) -> None:
    opencode = OpencodeSettings(binary="/bin/false")
    async with running_pool(opencode, tmp_path, quiet(min_servers=0, startup_timeout=10.0)) as pool:
        with pytest.raises(OpencodeServerError, match="could not start"):
            async with pool.lease(ProjectPlace(1, project(tmp_path)), 1, str(tmp_path / "project")):
                pass
        assert pool.servers == []


async def test_a_server_that_never_turns_healthy_fails_the_lease_clearly(tmp_path: Path) -> None:
    # Announces an address where nothing answers, then hangs.
    impostor = tmp_path / "opencode"
    impostor.write_text("#!/bin/sh\necho 'opencode server listening on http://127.0.0.1:9'\nexec sleep 60\n")
    impostor.chmod(0o755)
    opencode = OpencodeSettings(binary=str(impostor))
    async with running_pool(opencode, tmp_path, quiet(min_servers=0, startup_timeout=1.0)) as pool:
        with pytest.raises(OpencodeServerError, match="could not start"):
            async with pool.lease(ProjectPlace(1, project(tmp_path)), 1, str(tmp_path / "project")):
                pass
        assert pool.servers == []


def test_processes_left_by_a_dead_pool_are_killed() -> None:
    # A pool owner pid that cannot exist (above pid_max).
    env = {**os.environ, MARKER_ENV: "99999999.deadbeef/1"}
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    try:
        anyio.run(wait_until, lambda: orphan.pid in marked_processes(lambda m: True))
        assert orphan.pid in kill_orphans()
        assert orphan.wait(10) == -signal.SIGKILL
    finally:
        orphan.kill()
        orphan.wait()
