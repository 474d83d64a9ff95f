"""Switchyard's own processes for tests and benchmarks: ``switchyard dispatcher`` and
``switchyard gateway`` as children, with their settings in the environment."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path
from typing import IO, Any

import anyio

from testkit import SWITCHYARD

START_TIMEOUT_S = 60.0
# Quick enough for tests; the lease is short so recovery tests do not wait long.
PROCESS_DEFAULTS: dict[str, Any] = {
    "poll_interval": 0.5,
    "lease_seconds": 3.0,
    "retry_backoff": 0.05,
    "retry_backoff_max": 0.2,
}


def service_env(db_url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any Switchyard setting, plus the database and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD")}
    env["SWITCHYARD_DATABASE_URL"] = db_url
    env.update(extra or {})
    return env


class DispatcherProcess:
    """``switchyard dispatcher`` as a child process, with its settings in the environment."""

    def __init__(
        self,
        db_url: str,
        worker_id: str | None,
        env: Mapping[str, str] | None = None,
        *,
        data_dir: Path | None = None,
        **settings: Any,
    ) -> None:
        """``worker_id`` None: the id derived from the host and ``data_dir`` (default: a new one);
        ``env``: more settings (``SWITCHYARD__<SECTION>__<KEY>``); ``settings``: ``[dispatcher]`` keys."""
        self._data_dir = None if data_dir else tempfile.TemporaryDirectory(prefix="switchyard-dispatcher-")
        self.data_dir = data_dir or Path(self._data_dir.name)  # type: ignore[union-attr]
        env = service_env(db_url, env)
        env.setdefault("SWITCHYARD_LOG_LEVEL", "warning")
        env["SWITCHYARD_DATA_DIR"] = str(self.data_dir)
        # No warm opencode servers unless asked for.
        env.setdefault("SWITCHYARD__OPENCODE_POOL__MIN_SERVERS", "0")
        if worker_id is not None:
            env["SWITCHYARD__DISPATCHER__WORKER_ID"] = worker_id
        for key, value in {**PROCESS_DEFAULTS, **settings}.items():
            env[f"SWITCHYARD__DISPATCHER__{key.upper()}"] = str(value)
        self.worker_id = worker_id or ""
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.proc = subprocess.Popen(
            [*SWITCHYARD, "dispatcher"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )

    async def started(self) -> None:
        """Wait for ``dispatcher <id>: running``; learns the id."""
        assert self.proc.stdout is not None
        with anyio.fail_after(START_TIMEOUT_S):
            line = await anyio.to_thread.run_sync(self.proc.stdout.readline)
        if "running" not in line:
            raise AssertionError(f"dispatcher did not start: {line!r} {self.stderr()}")
        self.worker_id = line.removeprefix("dispatcher ").partition(": running")[0]

    async def exited(self) -> int:
        return await anyio.to_thread.run_sync(self.proc.wait, START_TIMEOUT_S)

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    async def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return await anyio.to_thread.run_sync(self.proc.wait, START_TIMEOUT_S)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()
        if self._data_dir is not None:
            self._data_dir.cleanup()


@contextmanager
def dispatcher_processes(
    db_url: str, *worker_ids: str, env: Mapping[str, str] | None = None, **settings: Any
) -> Iterator[list[DispatcherProcess]]:
    procs = [DispatcherProcess(db_url, worker_id, env, **settings) for worker_id in worker_ids]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.close()


@asynccontextmanager
async def gateway_process(
    db_url: str, port: int, *, kill: bool = False, env: Mapping[str, str] | None = None
) -> AsyncIterator[str]:
    """Run `switchyard gateway --port PORT`; yields its WebSocket URL. Stops it with SIGTERM (or SIGKILL)."""
    env = service_env(db_url, env)
    with tempfile.TemporaryFile() as stderr:
        command = [*SWITCHYARD, "gateway", "--port", str(port)]
        proc = await anyio.to_thread.run_sync(
            partial(subprocess.Popen, command, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
        )
        try:
            assert proc.stdout is not None
            with anyio.fail_after(START_TIMEOUT_S):
                line = await anyio.to_thread.run_sync(proc.stdout.readline)
            if not line.startswith("gateway: "):
                stderr.seek(0)
                raise AssertionError(f"gateway did not start: {line!r} {stderr.read().decode()}")
            yield line.removeprefix("gateway: ").strip()
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            code = await anyio.to_thread.run_sync(proc.wait, START_TIMEOUT_S)
            assert code == (-signal.SIGKILL if kill else 0)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
