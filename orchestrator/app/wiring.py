"""Assembling a dispatcher: its router over every configured backend, its pools, its worktrees.

The composition root's one place that knows every backend: ``switchyard up`` and
``switchyard dispatcher`` both build their dispatcher here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial

import asyncpg

from backends import (
    POOL_DIR,
    AcpBackend,
    BackendError,
    NativeBackend,
    OpencodePool,
    OpencodeServerBackend,
    PtyBackend,
    Sandbox,
)
from kernel import create_pool, get_logger
from orchestrator.app.config import Config
from orchestrator.dispatch import Dispatcher, Router
from orchestrator.dispatch.routing import OPENCODE_SERVER_AGENT, BackendFactory
from orchestrator.services import ReviewService

log = get_logger("wiring")


@dataclass
class Runtime:
    dispatcher: Dispatcher
    review: ReviewService
    pool: asyncpg.Pool
    opencode_pool: OpencodePool | None
    sandbox: Sandbox


@asynccontextmanager
async def dispatcher_runtime(config: Config, url: str) -> AsyncIterator[Runtime]:
    """A dispatcher and its resources; leaving the block stops every opencode server."""
    # The worktree manager's own pool: it holds a connection while it diffs a worktree.
    pool = await create_pool(url, config.database.pool_size)
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


def agent_sandbox(config: Config) -> Sandbox:
    """The sandbox of every agent process; the data directory and the worktree root are hidden in it."""
    return Sandbox(config.sandbox, protected=(config.data_dir, config.worktrees.root))


def build_router(
    config: Config, *, opencode_pool: OpencodePool | None = None, sandbox: Sandbox | None = None
) -> Router:
    """The router of a configured service.

    Every ``acp`` and ``pty`` agent of the registry (presets plus ``[agents.*]``) is routed to a
    one-shot AcpBackend/PtyBackend under the ``[permissions]`` policy, in ``sandbox`` (default:
    :func:`agent_sandbox`). The ``opencode`` agent runs on the service's warm ``opencode_pool``
    (entered once by whoever runs the dispatcher).
    """
    sandbox = sandbox or agent_sandbox(config)
    agents: dict[str, BackendFactory] = {}
    for spec in config.agent_specs().values():
        # A missing executable fails the turn itself (agent_unavailable), so installing an
        # agent later needs no restart.
        if spec.transport in ("acp", "pty"):
            track = AcpBackend if spec.transport == "acp" else PtyBackend
            agents[spec.name] = partial(track, spec, config.permissions, opencode=config.opencode, sandbox=sandbox)
    if opencode_pool is not None:
        agents[OPENCODE_SERVER_AGENT] = partial(OpencodeServerBackend, opencode_pool, config.permissions)
    return Router(native=lambda: NativeBackend(config.native), agents=agents)
