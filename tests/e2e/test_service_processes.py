"""`switchyard up` as a real process on a data directory of its own (embedded PostgreSQL).

A second `up` on the same directory refuses in one line and the first keeps serving; a port in
use is one line; the embedded cluster is stopped only by the process that started it, and one
that stops under the service is started again.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import anyio
import pytest

from kernel.net import free_port
from orchestrator.db.embedded import EmbeddedPostgres
from testkit import SWITCHYARD
from testkit.cluster import reachable_tmp_dir
from testkit.repos import sample_repo
from tests.dispatching import wait_for

pytestmark = pytest.mark.anyio

START_TIMEOUT = 90.0


def service_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD")}
    env.update(
        {
            "SWITCHYARD_DATA_DIR": str(data_dir),
            "SWITCHYARD_LOG_LEVEL": "warning",
            "SWITCHYARD__DATABASE__EMBEDDED_PORT": str(free_port()),
            "SWITCHYARD__GATEWAY__PORT": str(free_port()),
            "SWITCHYARD__OPENCODE_POOL__MIN_SERVERS": "0",
            "SWITCHYARD__DISPATCHER__POLL_INTERVAL": "0.5",
        }
    )
    env.update(extra)
    return env


class Service:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.proc = subprocess.Popen([*SWITCHYARD, "up"], env=env, stdout=subprocess.PIPE, stderr=self._stderr)

    async def up(self) -> str:
        """Wait for the banner; returns it."""
        assert self.proc.stdout is not None
        lines: list[str] = []
        with anyio.fail_after(START_TIMEOUT):
            while not any(line.startswith("Stop:") for line in lines):
                line = (await anyio.to_thread.run_sync(self.proc.stdout.readline)).decode()
                if not line:
                    raise AssertionError(f"`up` exited: {self.stderr()}")
                lines.append(line)
        return "".join(lines)

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    async def wait(self) -> int:
        return await anyio.to_thread.run_sync(self.proc.wait, START_TIMEOUT)

    async def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return await self.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


async def cli(env: dict[str, str], *args: str) -> str:
    result = await anyio.run_process([*SWITCHYARD, *args], env=env, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    with reachable_tmp_dir() as root:
        yield root / "data"


def cluster_of(data_dir: Path, env: dict[str, str]) -> EmbeddedPostgres:
    return EmbeddedPostgres.create(data_dir / "postgres", int(env["SWITCHYARD__DATABASE__EMBEDDED_PORT"]))


async def task_state(env: dict[str, str], task_id: int) -> dict[str, Any]:
    rows = json.loads(await cli(env, "tasks", "--json", "--limit", "100"))
    row: dict[str, Any] = next(r for r in rows if r["id"] == task_id)
    return row


async def served(env: dict[str, str], project: str, text: str) -> dict[str, Any]:
    """Submit a noop task through the CLI and wait until it completed."""
    task_id = int((await cli(env, "submit", text, "--project", project, "--agent", "noop")).split()[0])

    async def done() -> bool:
        return (await task_state(env, task_id))["state"] == "completed"

    await wait_for(done, f"task {task_id} completed", timeout=60)
    return await task_state(env, task_id)


@pytest.mark.slow
async def test_a_second_up_on_the_same_data_directory_refuses_and_the_first_keeps_serving(
    data_dir: Path, tmp_path: Path
) -> None:
    env = service_env(data_dir)
    first = Service(env)
    try:
        banner = await first.up()
        assert "Switchyard is up." in banner
        project = (await cli(env, "project", "add", str(sample_repo(tmp_path / "repo")))).strip()
        # The second one, as a new user would start it: a second terminal, the same directory.
        second = Service(env)
        try:
            assert await second.wait() == 1
            lines = second.stderr().strip().splitlines()
            assert lines == [
                f"switchyard: error: already running, pid {first.proc.pid} (data directory {data_dir}); "
                "stop it first, or give this one another data_dir"
            ]
        finally:
            second.close()
        # The first still serves, on its cluster, which nobody stopped.
        row = await served(env, project, "after the second up")
        assert row["attempt"] == 1 and row["input"] == "after the second up"
        # --json gives whole rows.
        assert {"error", "model", "created_at", "started_at", "ended_at", "claimed_by"} <= row.keys()

        # The embedded cluster stops under the service: it is brought back, and serving goes on.
        cluster = cluster_of(data_dir, env)
        await anyio.to_thread.run_sync(cluster.stop)
        await wait_for(_running(cluster), "the embedded cluster started again", timeout=60)
        row = await served(env, project, "after the cluster came back")
        assert row["state"] == "completed"
        assert await first.terminate() == 0, first.stderr()
        # Its owner stopped it on the way out.
        assert not await anyio.to_thread.run_sync(cluster.is_running)
    finally:
        first.close()


def _running(cluster: EmbeddedPostgres) -> Any:
    async def check() -> bool:
        return bool(await anyio.to_thread.run_sync(cluster.is_running))

    return check


@pytest.mark.slow
async def test_an_occupied_gateway_port_is_one_line_and_stops_only_its_own_cluster(data_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = service_env(data_dir, SWITCHYARD__GATEWAY__PORT=str(port))
        service = Service(env)
        try:
            assert await service.wait() == 1
            lines = service.stderr().strip().splitlines()
        finally:
            service.close()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"switchyard: error: cannot listen on 127.0.0.1:{port}: ")
    assert "gateway.port" in lines[0]
    # It had started the cluster, so it stopped it.
    assert not await anyio.to_thread.run_sync(cluster_of(data_dir, env).is_running)


@pytest.mark.slow
async def test_a_cluster_started_by_another_command_is_left_to_the_service_that_uses_it(
    data_dir: Path, tmp_path: Path
) -> None:
    env = service_env(data_dir)
    cluster = cluster_of(data_dir, env)
    # `switchyard dispatcher` on the directory starts the embedded cluster; then `up` starts.
    dispatcher = subprocess.Popen([*SWITCHYARD, "dispatcher"], env=env, stdout=subprocess.PIPE)
    service = Service(env)
    try:
        assert dispatcher.stdout is not None
        line = await anyio.to_thread.run_sync(dispatcher.stdout.readline)
        assert b"running" in line
        await service.up()
        project = (await cli(env, "project", "add", str(sample_repo(tmp_path / "repo")))).strip()
        # The dispatcher that started the cluster leaves; the service keeps it and serves on.
        dispatcher.send_signal(signal.SIGTERM)
        assert await anyio.to_thread.run_sync(dispatcher.wait, START_TIMEOUT) == 0
        assert await anyio.to_thread.run_sync(cluster.is_running)
        assert (await served(env, project, "still served"))["state"] == "completed"
        # ...and, owning it now, stops it when it stops.
        assert await service.terminate() == 0, service.stderr()
        assert not await anyio.to_thread.run_sync(cluster.is_running)
    finally:
        if dispatcher.poll() is None:
            dispatcher.kill()
            dispatcher.wait()
        service.close()
