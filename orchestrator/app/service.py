"""``switchyard up`` and ``switchyard dispatcher``: the processes and their lifecycles.

:func:`orchestrator.app.wiring.dispatcher_runtime` builds a dispatcher with everything it needs
(a pool for worktree diffs, the warm opencode pool); ``switchyard dispatcher`` runs just that.
:func:`run_service` adds the gateway, the worktree reaper and the default API token.

The first SIGTERM/SIGINT stops the dispatcher gracefully (no new claims, running turns get
``dispatcher.shutdown_grace``); the gateway keeps serving until the dispatcher is done, so
clients see the last frames. A second signal cancels everything at once.
"""

from __future__ import annotations

import shutil
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

import anyio
import asyncpg
from anyio.abc import TaskStatus

from backends import OpencodePool
from kernel import DATABASE_ERRORS, WorktreeError, get_logger, redact, report
from orchestrator.app.config import Config
from orchestrator.app.health import serve_health
from orchestrator.app.wiring import AGENT_STATE_DIR, Runtime, dispatcher_runtime, open_pool
from orchestrator.db import ServiceLock, WorkerLock, database_url, keep_cluster, migrate_url
from orchestrator.dispatch import Dispatcher
from orchestrator.errors import WorkerIdTaken
from orchestrator.services import OrchestratorActions, sync_available_agents
from worktrees import WorktreeManager
from ws_gateway import Gateway, create_token, verify_token

log = get_logger("service")

# What the reaper survives: the database going away, a worktree it cannot remove.
REAPER_ERRORS: tuple[type[Exception], ...] = (*DATABASE_ERRORS, WorktreeError)
# What a gateway's registration survives (it only serves `switchyard status`).
PRESENCE_ERRORS: tuple[type[Exception], ...] = (*DATABASE_ERRORS, WorkerIdTaken)

TOKEN_FILE = "api-token"  # noqa: S105 - a file name
DEFAULT_TOKEN_NAME = "default"  # noqa: S105 - the token's label
HEALTH_TIMEOUT_S = 2.0
SUBMIT_EXAMPLE = "INSERT INTO tasks (project_id, input) VALUES (1, 'Explain this repository')"


async def run_dispatcher(
    runtime: Runtime, tg: anyio.abc.TaskGroup, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Run the dispatcher until it has shut down, then stop the rest of ``tg``; started once it
    holds its worker id."""
    await runtime.dispatcher.run(task_status=task_status)
    tg.cancel_scope.cancel()


async def database_ok(pool: asyncpg.Pool) -> bool:
    try:
        with anyio.fail_after(HEALTH_TIMEOUT_S):
            await pool.fetchval("SELECT 1")
    except DATABASE_ERRORS:
        return False
    return True


async def announce_gateway(
    database_url: str, ws_url: str, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Register a gateway in ``workers`` (for ``switchyard status``) and hold its lock; best effort."""
    port = urlsplit(ws_url).port
    lock = WorkerLock(database_url, "gateway", [f"gateway:{socket.gethostname()}:{port}"], explicit=True, url=ws_url)
    try:
        await lock.acquire()
    except PRESENCE_ERRORS as exc:
        report(log, "gateway.not_registered", exc)
        task_status.started()
        return
    task_status.started()
    try:
        await lock.hold(lambda reason: log.warning("gateway.registration_lost", why=reason))
    finally:
        with anyio.CancelScope(shield=True):
            await lock.release()


async def run_reaper(
    worktrees: WorktreeManager, opencode_pool: OpencodePool | None, interval: float, agent_state: Path | None = None
) -> None:
    """Every ``interval``: remove idle worktrees, free their instances in the warm opencode
    servers and drop one-shot agents' sessions of them (``agent_state``). A lost database or a
    failing worktree is logged and tried again next time."""
    while True:
        try:
            for reaped in await worktrees.reap():
                if reaped.removed and opencode_pool is not None:
                    await opencode_pool.dispose_directory(reaped.path)
                if reaped.removed and agent_state is not None:
                    await anyio.to_thread.run_sync(forget_agent_state, agent_state, reaped.session_id)
        except REAPER_ERRORS as exc:
            report(log, "reaper.failed", exc)
        await anyio.sleep(interval)


def forget_agent_state(root: Path, session_id: int) -> None:
    """Remove every agent's saved sessions of one Switchyard session (``<root>/<agent>/<session>``)."""
    for agent in root.glob("*"):
        shutil.rmtree(agent / str(session_id), ignore_errors=True)


def stop_signals() -> AbstractContextManager[AsyncIterator[int]]:
    """Opened first thing, so a signal during start-up is handled, not fatal to the cluster."""
    return anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT)


async def handle_signals(signals: AsyncIterator[int], dispatcher: Dispatcher, tg: anyio.abc.TaskGroup) -> None:
    """First signal: graceful stop of the dispatcher; second: cancel everything."""
    async for signum in signals:
        name = signal.Signals(signum).name
        if dispatcher.shutdown_requested:
            log.warning("service.cancelled", signal=name)
            tg.cancel_scope.cancel()
            return
        log.info("service.stopping", signal=name)
        dispatcher.request_shutdown()


async def run_dispatcher_only(config: Config, out: TextIO) -> None:
    """``switchyard dispatcher``: a dispatcher and its opencode pool, no gateway."""
    with stop_signals() as signals:
        async with database_url(config.database, config.data_dir) as url:
            await migrate_url(url, wait=True)
            async with dispatcher_runtime(config, url) as runtime, anyio.create_task_group() as tg:
                tg.start_soon(handle_signals, signals, runtime.dispatcher, tg)
                await tg.start(run_dispatcher, runtime, tg)
                where = ""
                port = config.dispatcher.health_port
                if port is not None:
                    metrics_url = await tg.start(serve_health, port, partial(database_ok, runtime.pool))
                    await runtime.dispatcher.worker_lock.set_url(metrics_url)
                    where = f"; metrics at {metrics_url}"
                sandbox = await anyio.to_thread.run_sync(runtime.sandbox.startup_line)
                print(f"dispatcher {runtime.dispatcher.worker_id}: running; {sandbox}{where}", file=out, flush=True)


async def default_token(pool: asyncpg.Pool, data_dir: Path) -> str:
    """The operator's token (every project), kept in ``<data_dir>/api-token`` across restarts."""
    file = anyio.Path(data_dir / TOKEN_FILE)
    if await file.is_file():
        token = (await file.read_text()).strip()
        if await verify_token(pool, token) is not None:
            return token
    token = await create_token(pool, DEFAULT_TOKEN_NAME, None)
    await file.parent.mkdir(parents=True, exist_ok=True)
    await file.touch(mode=0o600)
    await file.write_text(token + "\n")
    return token


async def run_service(config: Config, out: TextIO) -> None:
    with stop_signals() as signals:
        # Before anything else: a second `up` on this data directory stops here, in one line.
        lock = ServiceLock(config.data_dir)
        await anyio.to_thread.run_sync(lock.acquire)
        try:
            async with database_url(config.database, config.data_dir, service=True) as url:
                version = await migrate_url(url, wait=True)
                async with dispatcher_runtime(config, url) as runtime:
                    await _serve(config, url, version, runtime, signals, out)
        finally:
            lock.release()
    log.info("service.stop")


async def _serve(
    config: Config, url: str, version: int, runtime: Runtime, signals: AsyncIterator[int], out: TextIO
) -> None:
    async with runtime.pool.acquire() as conn:
        agents = await sync_available_agents(
            conn,
            config.agent_specs(),
            opencode_binary=config.opencode.binary,
            opencode_models=[config.opencode.model_ref(m) for m in config.opencode.models],
        )
    token = await default_token(runtime.pool, config.data_dir)
    sandbox = await anyio.to_thread.run_sync(runtime.sandbox.startup_line)
    # The gateway's own pool: a flood of snapshots cannot take the review service's connections.
    gateway_pool = await open_pool(config, url, "gateway")
    try:
        actions = OrchestratorActions(gateway_pool, runtime.review, config.native)
        async with anyio.create_task_group() as tg:
            tg.start_soon(handle_signals, signals, runtime.dispatcher, tg)
            tg.start_soon(keep_cluster, config.database, config.data_dir)
            gateway = Gateway(config.gateway, gateway_pool, actions, url)
            ws_url = await tg.start(gateway.serve)
            await tg.start(run_dispatcher, runtime, tg)
            await runtime.dispatcher.worker_lock.set_url(gateway.metrics_url)
            await tg.start(announce_gateway, url, ws_url)
            log.info(
                "service.start",
                database=redact(url),
                schema_version=version,
                gateway=ws_url,
                worker_id=runtime.dispatcher.worker_id,
                agents=",".join(a.name for a in agents if a.available),
                sandbox=sandbox,
            )
            print_banner(out, url, ws_url, token, gateway.page_url, sandbox)
            tg.start_soon(
                run_reaper,
                runtime.review.worktrees,
                runtime.opencode_pool,
                config.worktrees.reap_interval,
                config.data_dir / AGENT_STATE_DIR,
            )
    finally:
        await gateway_pool.close()


def print_banner(out: TextIO, url: str, ws_url: str, token: str, page_url: str, sandbox: str) -> None:
    out.write(
        "Switchyard is up.\n"
        f"  open:      {page_url}   (the review page; sign in with the token)\n"
        f"  database:  {url}\n"
        f"  websocket: {ws_url}\n"
        f"  token:     {token}\n"
        f"  {sandbox}\n"
        "Register a repository:  switchyard project add PATH\n"
        f"Submit a task:          psql '{url}' \\\n"
        f'    -c "{SUBMIT_EXAMPLE}"\n'
        "Follow it:              switchyard tasks   (or subscribe over the WebSocket with the token)\n"
        "Stop:                   Ctrl-C or SIGTERM\n"
    )
    out.flush()
