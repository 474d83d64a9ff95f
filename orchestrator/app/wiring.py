"""Assembling a dispatcher: its router over every configured backend, its pools, its worktrees.

The composition root's one place that knows every backend: ``switchyard up`` and
``switchyard dispatcher`` both build their dispatcher here.

Pools, one per kind of work, each bounded by ``database.acquire_timeout``, so none can starve
another: the dispatcher's own (turn writes, leases; opened by the dispatcher), the review
service's (``review``: accept/reject from the gateway or the CLI, the reaper, start-up) and, in
a process with a gateway, the gateway's (``gateway``: snapshots, replays, discovery, submits).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import asyncpg
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from backends import (
    POOL_DIR,
    AcpBackend,
    AgentNotFoundError,
    AgentSpares,
    BackendError,
    NativeBackend,
    OpencodePool,
    OpencodeServerBackend,
    ProjectPlace,
    PtyBackend,
    Sandbox,
    executable,
)
from kernel import METRIC_PREFIX, create_pool, get_logger, on_scrape
from orchestrator.app.config import Config
from orchestrator.db import default_base
from orchestrator.dispatch import Dispatcher, Router, refresh_tasks
from orchestrator.dispatch.routing import NATIVE, NOOP, OPENCODE_SERVER_AGENT, BackendFactory
from orchestrator.services import ReviewService
from worktrees import SpareWorktrees

log = get_logger("wiring")

# Under data_dir: one-shot opencode agents' data (their sessions), per agent and Switchyard session.
AGENT_STATE_DIR = "agent-state"
# At shutdown, how long the snapshots still being pushed to remotes are waited for.
PUSH_FINISH_TIMEOUT = 30.0


@dataclass
class Runtime:
    dispatcher: Dispatcher
    review: ReviewService
    # The review service's pool (review actions, the reaper, start-up chores).
    pool: asyncpg.Pool
    opencode_pool: OpencodePool | None
    sandbox: Sandbox
    spares: SpareWorktrees
    agent_spares: AgentSpares


@dataclass(frozen=True)
class PoolWarmer:
    """Spare worktrees warmed on the warm opencode pool (a worktrees.SpareWarmer): a spare's
    instance is loaded on its project's server, which its session's first turn then leases."""

    pool: OpencodePool

    async def warm(self, project_id: int, directory: Path, git_dir: Path) -> bool:
        return await self.pool.warm(ProjectPlace(project_id, directory.parent, git_dir), str(directory))

    def claimed(self, directory: Path) -> None:
        self.pool.unpin(str(directory))

    async def release(self, directory: Path) -> None:
        await self.pool.dispose_directory(directory)


async def open_pool(config: Config, url: str, name: str) -> asyncpg.Pool:
    """One of the service's pools (see the module docstring)."""
    return await create_pool(
        url,
        config.database.pool_size,
        name=name,
        acquire_timeout=config.database.acquire_timeout,
        # Connections are made when needed: a database that is away at start-up is waited for
        # by whoever needs one, as later on, instead of failing the start.
        min_size=0,
        server_settings={"application_name": f"switchyard-{name}"},
    )


@asynccontextmanager
async def dispatcher_runtime(config: Config, url: str) -> AsyncIterator[Runtime]:
    """A dispatcher and its resources; leaving the block stops every opencode server."""
    pool = await open_pool(config, url, "review")
    unregister = on_scrape(partial(refresh_tasks, pool))
    try:
        review = ReviewService(pool, config.worktrees, node_id=config.node_id)
        sandbox = agent_sandbox(config)
        async with AsyncExitStack() as stack:
            # Left last: the snapshots of the last turns reach the remote before the process ends.
            stack.push_async_callback(review.worktrees.finish_pushes, PUSH_FINISH_TIMEOUT)
            opencode_pool = await _start_opencode_pool(stack, config, sandbox)
            # Entered after the pool, so it stops first: its spares' instances are freed on the servers.
            spares = await stack.enter_async_context(
                SpareWorktrees(
                    pool,
                    config.worktrees,
                    warmer=PoolWarmer(opencode_pool) if opencode_pool is not None else None,
                    status_dir=config.data_dir / POOL_DIR,
                )
            )
            review.worktrees.spares = spares
            # Entered before the router's backends run turns, left after the dispatcher stopped.
            agent_spares = await stack.enter_async_context(
                AgentSpares(config.data_dir / AGENT_STATE_DIR, directories=spares.ready_in)
            )
            router = build_router(config, opencode_pool=opencode_pool, sandbox=sandbox, agent_spares=agent_spares)
            dispatcher = Dispatcher(
                url,
                config.dispatcher,
                router,
                review.worktrees,
                identity_base=default_base(str(config.data_dir)),
                ask_timeout=config.permissions.ask_timeout,
                node=replace(config.node, id=config.node_id),
                agents=partial(node_agents, config, opencode_pool is not None),
            )
            yield Runtime(dispatcher, review, pool, opencode_pool, sandbox, spares, agent_spares)
    finally:
        unregister()
        await pool.close()


async def _start_opencode_pool(stack: AsyncExitStack, config: Config, sandbox: Sandbox) -> OpencodePool | None:
    """The warm opencode servers; without an opencode binary the service runs without them."""
    try:
        # The question tool is on only where a person can answer it.
        opencode = replace(config.opencode, questions=config.permissions.asks_questions)
        pool = await stack.enter_async_context(
            OpencodePool(config.opencode_pool, opencode, config.data_dir / POOL_DIR, sandbox=sandbox)
        )
    except BackendError as exc:
        log.warning("opencode_pool.unavailable", reason=str(exc))
        return None
    collector = _PoolMetrics(pool)
    REGISTRY.register(collector)
    stack.callback(REGISTRY.unregister, collector)
    return pool


class _PoolMetrics(Collector):
    """The warm opencode servers at scrape time: how many in each state, each one's memory."""

    def __init__(self, pool: OpencodePool) -> None:
        self._pool = pool

    def collect(self) -> Iterator[Metric]:
        servers = GaugeMetricFamily(
            METRIC_PREFIX + "opencode_servers", "Warm opencode servers by state", labels=["state"]
        )
        rss = GaugeMetricFamily(
            METRIC_PREFIX + "opencode_server_rss_bytes", "Resident memory of a server's process tree", labels=["server"]
        )
        turns = GaugeMetricFamily(
            METRIC_PREFIX + "opencode_server_active_turns", "Turns running on a server", labels=["server"]
        )
        instances = GaugeMetricFamily(
            METRIC_PREFIX + "opencode_server_instances",
            "Directories whose instance a server holds loaded (spare worktrees among them)",
            labels=["server", "kind"],
        )
        counts: dict[str, int] = {}
        for status in self._pool.snapshot():
            counts[status.state] = counts.get(status.state, 0) + 1
            rss.add_metric([status.key], status.rss_mb * 2**20)
            turns.add_metric([status.key], status.active_turns)
            instances.add_metric([status.key, "session"], status.instances - status.spares)
            instances.add_metric([status.key, "spare"], status.spares)
        for state, count in sorted(counts.items()):
            servers.add_metric([state], count)
        yield from (servers, rss, turns, instances)


def node_agents(config: Config, warm_opencode: bool) -> list[str]:
    """The agents this node can run now, for its heartbeat (orchestrator.db.nodes): native and
    noop, every configured agent whose executable is found, the warm opencode agent when its
    pool runs. Checked at every heartbeat, so an agent installed later is offered without a restart."""
    names = [NATIVE, NOOP]
    for spec in config.agent_specs().values():
        if spec.transport == "opencode_server":
            if warm_opencode:
                names.append(spec.name)
            continue
        try:
            executable(spec, config.opencode.binary)
        except AgentNotFoundError:
            continue
        names.append(spec.name)
    return names


def agent_sandbox(config: Config) -> Sandbox:
    """The sandbox of every agent process; the data directory and the worktree root are hidden in it."""
    return Sandbox(config.sandbox, protected=(config.data_dir, config.worktrees.root))


def build_router(
    config: Config,
    *,
    opencode_pool: OpencodePool | None = None,
    sandbox: Sandbox | None = None,
    agent_spares: AgentSpares | None = None,
) -> Router:
    """The router of a configured service.

    Every ``acp`` and ``pty`` agent of the registry (presets plus ``[agents.*]``) is routed to a
    one-shot AcpBackend/PtyBackend under the ``[permissions]`` policy (each turn applies the
    agent's and the project's overrides), in ``sandbox`` (default: :func:`agent_sandbox`). The
    ``opencode`` agent runs on the service's warm ``opencode_pool`` (entered once by whoever runs
    the dispatcher). One-shot opencode agents keep their sessions under ``<data_dir>/agent-state``
    so a later turn resumes them. ACP turns take pre-started agents from ``agent_spares`` (entered
    by whoever runs the dispatcher) when given.
    """
    sandbox = sandbox or agent_sandbox(config)
    agents: dict[str, BackendFactory] = {}
    state_dir = config.data_dir / AGENT_STATE_DIR
    for spec in config.agent_specs().values():
        # A missing executable fails the turn itself (agent_unavailable), so installing an
        # agent later needs no restart.
        if spec.transport == "acp":
            agents[spec.name] = partial(
                AcpBackend,
                spec,
                config.permissions,
                opencode=config.opencode,
                sandbox=sandbox,
                state_dir=state_dir,
                spares=agent_spares,
            )
        elif spec.transport == "pty":
            agents[spec.name] = partial(PtyBackend, spec, config.permissions, opencode=config.opencode, sandbox=sandbox)
    unavailable = {}
    if opencode_pool is not None:
        agents[OPENCODE_SERVER_AGENT] = partial(OpencodeServerBackend, opencode_pool, config.permissions)
    else:
        # Known, so a task for it waits for a node that has it (orchestrator.db.nodes).
        unavailable[OPENCODE_SERVER_AGENT] = "no opencode binary on this node (no warm opencode servers)"
    return Router(native=lambda: NativeBackend(config.native), agents=agents, unavailable=unavailable)
