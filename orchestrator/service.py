"""``switchyard up``: the database, the dispatcher, the WebSocket gateway and the reaper.

:func:`dispatcher_runtime` builds a dispatcher with everything it needs (a pool for worktree
diffs, the warm opencode pool); ``switchyard dispatcher`` runs just that. :func:`run_service`
adds the gateway, the worktree reaper and the default API token.

The first SIGTERM/SIGINT stops the dispatcher gracefully (no new claims, running turns get
``dispatcher.shutdown_grace``); the gateway keeps serving until the dispatcher is done, so
clients see the last frames. A second signal cancels everything at once.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import anyio
import asyncpg

from backends.errors import BackendError
from backends.opencode_pool import POOL_DIR, OpencodePool
from backends.sandbox import Sandbox
from orchestrator import db
from orchestrator.agents import sync_available_agents
from orchestrator.config import Config
from orchestrator.database import database_url
from orchestrator.dispatcher import Dispatcher
from orchestrator.gateway_actions import OrchestratorActions
from orchestrator.logs import get_logger, redact
from orchestrator.review import ReviewService
from orchestrator.routing import agent_sandbox, build_router
from ws_gateway.auth import create_token, verify_token
from ws_gateway.server import Gateway

log = get_logger("service")

TOKEN_FILE = "api-token"  # noqa: S105 - a file name
DEFAULT_TOKEN_NAME = "default"  # noqa: S105 - the token's label
SUBMIT_EXAMPLE = "INSERT INTO tasks (project_id, input) VALUES (1, 'Explain this repository')"


@dataclass
class Runtime:
    dispatcher: Dispatcher
    review: ReviewService
    pool: asyncpg.Pool
    opencode_pool: OpencodePool | None
    sandbox: Sandbox


async def migrate(url: str) -> int:
    conn = await db.connect(url)
    try:
        return await db.migrate(conn)
    finally:
        await conn.close()


@asynccontextmanager
async def dispatcher_runtime(config: Config, url: str) -> AsyncIterator[Runtime]:
    """A dispatcher and its resources; leaving the block stops every opencode server."""
    # The worktree manager's own pool: it holds a connection while it diffs a worktree.
    pool = await db.create_pool(url, config.database.pool_size)
    try:
        review = ReviewService(pool, config.worktrees)
        sandbox = agent_sandbox(config)
        async with AsyncExitStack() as stack:
            opencode_pool = await _start_opencode_pool(stack, config, sandbox)
            router = build_router(config, opencode_pool=opencode_pool, sandbox=sandbox)
            dispatcher = Dispatcher(url, config.dispatcher, router, review.worktrees)
            yield Runtime(dispatcher, review, pool, opencode_pool, sandbox)
    finally:
        await pool.close()


async def _start_opencode_pool(stack: AsyncExitStack, config: Config, sandbox: Sandbox) -> OpencodePool | None:
    """The warm opencode servers; without an opencode binary the service runs without them."""
    try:
        return await stack.enter_async_context(
            OpencodePool(config.opencode_pool, config.opencode, config.data_dir / POOL_DIR, sandbox=sandbox)
        )
    except BackendError as exc:
        log.warning("opencode_pool.unavailable", reason=str(exc))
        return None


async def run_dispatcher(runtime: Runtime, tg: anyio.abc.TaskGroup) -> None:
    """Run the dispatcher until it has shut down, then stop the rest of ``tg``."""
    await runtime.dispatcher.run()
    tg.cancel_scope.cancel()


async def run_reaper(runtime: Runtime, interval: float) -> None:
    """Remove idle worktrees, and free their instances in the warm opencode servers."""
    while True:
        try:
            for reaped in await runtime.review.worktrees.reap():
                if reaped.removed and runtime.opencode_pool is not None:
                    await runtime.opencode_pool.dispose_directory(reaped.path)
        except (OSError, asyncpg.PostgresError) as exc:  # the database is away; next time
            log.warning("reaper.failed", reason=str(exc))
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
        async with database_url(config) as url:
            await migrate(url)
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
        async with database_url(config, own_cluster=True) as url:
            version = await migrate(url)
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
                    ws_url = await tg.start(Gateway(config.gateway, runtime.pool, actions).serve)
                    log.info(
                        "service.start",
                        database=redact(url),
                        schema_version=version,
                        gateway=ws_url,
                        worker_id=runtime.dispatcher.worker_id,
                        agents=",".join(a.name for a in agents if a.available),
                        sandbox=sandbox,
                    )
                    print_banner(out, url, ws_url, token, sandbox)
                    tg.start_soon(run_reaper, runtime, config.worktrees.reap_interval)
                    await run_dispatcher(runtime, tg)
    log.info("service.stop")


def print_banner(out: TextIO, url: str, ws_url: str, token: str, sandbox: str) -> None:
    out.write(
        "Switchyard is up.\n"
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
