"""Helpers for tests that run turns: waiting on the database, dispatchers in and out of process,
gateways as processes."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import anyio
import asyncpg

from orchestrator.dispatch import Dispatcher, DispatcherSettings, Router
from testkit import SWITCHYARD
from testkit.rows import Db
from worktrees import WorktreeManager

WAIT_TIMEOUT_S = 30.0
POLL_S = 0.02
# Quick enough for tests; the lease is short so recovery tests do not wait long.
FAST = DispatcherSettings(poll_interval=0.5, lease_seconds=3.0, retry_backoff=0.05, retry_backoff_max=0.2)


async def task(pool: Db, task_id: int) -> asyncpg.Record:
    row: asyncpg.Record = await pool.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id)
    return row


async def wait_for(check: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT_TIMEOUT_S) -> None:
    try:
        with anyio.fail_after(timeout):
            while not await check():
                await anyio.sleep(POLL_S)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def wait_state(pool: Db, task_id: int, *states: str, timeout: float = WAIT_TIMEOUT_S) -> asyncpg.Record:
    async def reached() -> bool:
        return bool(await pool.fetchval("SELECT state = ANY($2) FROM tasks WHERE id = $1", task_id, list(states)))

    await wait_for(reached, f"task {task_id} to be {' or '.join(states)}", timeout)
    return await task(pool, task_id)


async def events(pool: Db, session_id: int) -> list[tuple[str, dict[str, Any]]]:
    rows = await pool.fetch("SELECT type, payload FROM session_events WHERE session_id = $1 ORDER BY seq", session_id)
    return [(r["type"], r["payload"]) for r in rows]


@asynccontextmanager
async def running_dispatcher(
    db_url: str,
    router: Router | None = None,
    settings: DispatcherSettings = FAST,
    worktrees: WorktreeManager | None = None,
    **overrides: Any,
) -> AsyncIterator[Dispatcher]:
    """An in-process Dispatcher, shut down gracefully (and awaited) on exit."""
    dispatcher = Dispatcher(db_url, replace(settings, **overrides), router or Router(), worktrees)
    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatcher.run)
        await wait_for(holds(lambda: dispatcher.listener.connected), "the dispatcher to listen")
        try:
            yield dispatcher
        finally:
            dispatcher.request_shutdown()


def holds(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """An in-memory condition as a check for wait_for."""

    async def check() -> bool:
        return predicate()

    return check


# ---------------------------------------------------------------------------- real processes


class DispatcherProcess:
    """``switchyard dispatcher`` as a child process, with its settings in the environment."""

    def __init__(self, db_url: str, worker_id: str | None, *, data_dir: Path | None = None, **settings: Any) -> None:
        """``worker_id`` None: the id derived from the host and ``data_dir`` (default: a new one)."""
        self._data_dir = None if data_dir else tempfile.TemporaryDirectory(prefix="switchyard-dispatcher-")
        self.data_dir = data_dir or Path(self._data_dir.name)  # type: ignore[union-attr]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD")}
        env["SWITCHYARD_DATABASE_URL"] = db_url
        env["SWITCHYARD_LOG_LEVEL"] = "warning"
        env["SWITCHYARD_DATA_DIR"] = str(self.data_dir)
        # No warm opencode servers: these turns are noop turns.
        env["SWITCHYARD__OPENCODE_POOL__MIN_SERVERS"] = "0"
        if worker_id is not None:
            env["SWITCHYARD__DISPATCHER__WORKER_ID"] = worker_id
        for key, value in {**_process_defaults(), **settings}.items():
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
        with anyio.fail_after(WAIT_TIMEOUT_S):
            line = await anyio.to_thread.run_sync(self.proc.stdout.readline)
        if "running" not in line:
            raise AssertionError(f"dispatcher did not start: {line!r} {self.stderr()}")
        self.worker_id = line.removeprefix("dispatcher ").partition(": running")[0]

    async def exited(self) -> int:
        return await anyio.to_thread.run_sync(self.proc.wait, WAIT_TIMEOUT_S)

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    async def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return await anyio.to_thread.run_sync(self.proc.wait, WAIT_TIMEOUT_S)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()
        if self._data_dir is not None:
            self._data_dir.cleanup()


def _process_defaults() -> dict[str, Any]:
    return {
        "poll_interval": FAST.poll_interval,
        "lease_seconds": FAST.lease_seconds,
        "retry_backoff": FAST.retry_backoff,
        "retry_backoff_max": FAST.retry_backoff_max,
    }


@contextmanager
def dispatcher_processes(db_url: str, *worker_ids: str, **settings: Any) -> Iterator[list[DispatcherProcess]]:
    procs = [DispatcherProcess(db_url, worker_id, **settings) for worker_id in worker_ids]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.close()


@asynccontextmanager
async def gateway_process(db_url: str, port: int, *, kill: bool = False) -> AsyncIterator[str]:
    """Run `switchyard gateway --port PORT`; yields its WebSocket URL. Stops it with SIGTERM (or SIGKILL)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD")}
    env["SWITCHYARD_DATABASE_URL"] = db_url
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            [*SWITCHYARD, "gateway", "--port", str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        try:
            assert proc.stdout is not None
            with anyio.fail_after(WAIT_TIMEOUT_S):
                line = await anyio.to_thread.run_sync(proc.stdout.readline)
            if not line.startswith("gateway: "):
                stderr.seek(0)
                raise AssertionError(f"gateway did not start: {line!r} {stderr.read().decode()}")
            yield line.removeprefix("gateway: ").strip()
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            code = await anyio.to_thread.run_sync(proc.wait, WAIT_TIMEOUT_S)
            assert code == (-signal.SIGKILL if kill else 0)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
