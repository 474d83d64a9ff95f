"""``switchyard up`` and ``switchyard dispatcher``: the processes and their lifecycles.

:func:`orchestrator.app.wiring.dispatcher_runtime` builds a dispatcher with everything it needs
(a pool for worktree diffs, the warm opencode pool); ``switchyard dispatcher`` runs just that.
:func:`run_service` adds the gateway, the worktree reaper and the default API token.

The first SIGTERM/SIGINT stops the dispatcher gracefully (no new claims, running turns get
``dispatcher.shutdown_grace``); the gateway keeps serving until the dispatcher is done, so
clients see the last frames. A second signal cancels everything at once.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TextIO

import anyio
import asyncpg

from backends import OpencodePool
from kernel import DATABASE_ERRORS, WorktreeError, get_logger, redact, report
from orchestrator.app.config import Config
from orchestrator.app.wiring import Runtime, dispatcher_runtime
from orchestrator.db import database_url, migrate_url
from orchestrator.dispatch import Dispatcher
from orchestrator.services import OrchestratorActions, sync_available_agents
from worktrees import WorktreeManager
from ws_gateway import Gateway, create_token, verify_token

log = get_logger("service")

# What the reaper survives: the database going away, a worktree it cannot remove.
REAPER_ERRORS: tuple[type[Exception], ...] = (*DATABASE_ERRORS, WorktreeError)

TOKEN_FILE = "api-token"  # noqa: S105 - a file name
DEFAULT_TOKEN_NAME = "default"  # noqa: S105 - the token's label
SUBMIT_EXAMPLE = "INSERT INTO tasks (project_id, input) VALUES (1, 'Explain this repository')"


async def run_dispatcher(runtime: Runtime, tg: anyio.abc.TaskGroup) -> None:
    """Run the dispatcher until it has shut down, then stop the rest of ``tg``."""
    await runtime.dispatcher.run()
    tg.cancel_scope.cancel()


async def run_reaper(worktrees: WorktreeManager, opencode_pool: OpencodePool | None, interval: float) -> None:
    """Every ``interval``: remove idle worktrees and free their instances in the warm opencode
    servers. A lost database or a failing worktree is logged and tried again next time."""
    while True:
        try:
            for reaped in await worktrees.reap():
                if reaped.removed and opencode_pool is not None:
                    await opencode_pool.dispose_directory(reaped.path)
        except REAPER_ERRORS as exc:
            report(log, "reaper.failed", exc)
        await anyio.sleep(interval)


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
            await migrate_url(url)
            async with dispatcher_runtime(config, url) as runtime, anyio.create_task_group() as tg:
                tg.start_soon(handle_signals, signals, runtime.dispatcher, tg)
                sandbox = await anyio.to_thread.run_sync(runtime.sandbox.startup_line)
                print(f"dispatcher {runtime.dispatcher.worker_id}: running; {sandbox}", file=out, flush=True)
                await run_dispatcher(runtime, tg)


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
        async with database_url(config.database, config.data_dir, own_cluster=True) as url:
            version = await migrate_url(url)
            async with dispatcher_runtime(config, url) as runtime:
                async with runtime.pool.acquire() as conn:
                    agents = await sync_available_agents(
                        conn, config.agent_specs(), opencode_binary=config.opencode.binary
                    )
                token = await default_token(runtime.pool, config.data_dir)
                sandbox = await anyio.to_thread.run_sync(runtime.sandbox.startup_line)
                actions = OrchestratorActions(runtime.pool, runtime.review)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(handle_signals, signals, runtime.dispatcher, tg)
                    gateway = Gateway(config.gateway, runtime.pool, actions, url)
                    ws_url = await tg.start(gateway.serve)
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
                        run_reaper, runtime.review.worktrees, runtime.opencode_pool, config.worktrees.reap_interval
                    )
                    await run_dispatcher(runtime, tg)
    log.info("service.stop")


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
