"""Nodes: the machines that share one database and a git remote, and nothing else.

Every dispatcher process belongs to a node (``[node] id``; by default ``<host>:<data_dir>``, the
worker id's base, so the dispatchers of one data directory are one node). Its heartbeat rides
on the worker lock's connection (orchestrator.db.workers, every ``HEALTH_INTERVAL``): it writes
the node's row in ``nodes`` — the agents it can run now, its capacity, its ``dead_after`` — and
learns whether the node is being drained. A node whose heartbeat is older than its ``dead_after``
is dead: the sessions pinned to it (``session_worktrees.node_id``) may be claimed elsewhere, and
the claiming node recreates their worktrees from the snapshots pushed to the remote.

A drained node claims nothing; its running turns finish, and its idle sessions are no longer
pinned (``switchyard_node_holds`` in the schema), so other nodes take their next turns.
Several dispatchers on one node should run the same agents: each heartbeat writes its own list.

The heartbeat also says which projects the node cannot reach now, and its claims leave their
tasks to nodes that can: a project with only a checkout whose directory is not on this node's
disk, or one whose remote did not answer ``git ls-remote`` (checked in the background at most
every ``REMOTE_CHECK_INTERVAL`` seconds, so a slow remote never delays the heartbeat).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import anyio
import asyncpg

from kernel import get_logger
from orchestrator.db import queries as q
from orchestrator.db.settings import NodeSettings
from orchestrator.errors import NotFound
from worktrees import remote_reachable

log = get_logger("nodes")

# How often a project's remote is asked whether it answers, and how long it may take.
REMOTE_CHECK_INTERVAL = 60.0
REMOTE_CHECK_TIMEOUT = 20.0


class Reach:
    """Which projects this node can reach: checkouts on its disk, remotes that answered lately."""

    def __init__(self) -> None:
        # URL -> (when last asked, whether it answered); refreshed by one thread at a time.
        self._remotes: dict[str, tuple[float, bool]] = {}
        self._checking: threading.Thread | None = None

    def unreachable(self, places: Sequence[tuple[int, str | None, str | None]]) -> list[int]:
        """Blocking (a stat per checkout): the ids of the projects this node cannot reach now."""
        now = time.monotonic()
        stale = [
            url
            for _, _, url in places
            if url and (url not in self._remotes or now - self._remotes[url][0] > REMOTE_CHECK_INTERVAL)
        ]
        if stale and (self._checking is None or not self._checking.is_alive()):
            self._checking = threading.Thread(target=self._check, args=(stale,), name="switchyard-reach", daemon=True)
            self._checking.start()
        # A remote not asked yet counts as reachable: a new project's first task is not held back.
        return [
            project_id
            for project_id, checkout, url in places
            if (url and not self._remotes.get(url, (now, True))[1])
            or (not url and not (checkout is not None and os.path.isdir(checkout)))
        ]

    def _check(self, urls: Sequence[str]) -> None:
        for url in urls:
            answered = remote_reachable(url, REMOTE_CHECK_TIMEOUT)
            if not answered:
                log.warning("node.remote_unreachable", url=url)
            self._remotes[url] = (time.monotonic(), answered)


class NodeBeat:
    """One dispatcher's heartbeat of its node; ``draining`` is what the last one learned."""

    def __init__(
        self, node_id: str, settings: NodeSettings, agents: Callable[[], Sequence[str]], capacity: int
    ) -> None:
        self.node_id = node_id
        self.settings = settings
        self._agents = agents
        self._capacity = capacity
        self._host = socket.gethostname()
        self.draining = False
        # What the last heartbeat said it runs and cannot reach (the claim uses both).
        self.current_agents: list[str] = self.agents()
        self.unreachable_projects: list[int] = []
        self._reach = Reach()
        # Told when ``draining`` changes (the dispatcher wakes its claim loop).
        self.on_change: Callable[[], None] = lambda: None

    def agents(self) -> list[str]:
        return sorted(set(self._agents()))

    async def __call__(self, conn: asyncpg.Connection, worker_id: str) -> None:
        agents = self.agents()
        places = [(r["id"], r["repo_path"], r["remote_url"]) for r in await conn.fetch(q.PROJECT_PLACES)]
        unreachable = await anyio.to_thread.run_sync(self._reach.unreachable, places)
        draining = bool(
            await conn.fetchval(
                q.NODE_HEARTBEAT,
                self.node_id,
                self._host,
                agents,
                self._capacity,
                self.settings.dead_after,
                worker_id,
                unreachable,
            )
        )
        if unreachable != self.unreachable_projects:
            log.info("node.unreachable_projects", node_id=self.node_id, projects=unreachable)
        self.current_agents, self.unreachable_projects = agents, unreachable
        if draining != self.draining:
            self.draining = draining
            log.info("node.draining" if draining else "node.claiming", node_id=self.node_id)
            self.on_change()


@dataclass(frozen=True)
class NodeRow:
    """A node as ``switchyard nodes`` shows it."""

    id: str
    host: str
    agents: list[str]
    capacity: int
    dead_after: float
    started_at: datetime
    seen_at: datetime
    drain_requested_at: datetime | None
    unreachable_projects: list[int]
    alive: bool
    silent_for: float
    # Sessions whose worktree it holds, turns its dispatchers run now.
    sessions: int
    running: int

    @property
    def state(self) -> str:
        if not self.alive:
            return "dead"
        if self.drain_requested_at is not None:
            return "draining" if self.running else "drained"
        return "live"


async def list_nodes(db: asyncpg.Connection | asyncpg.Pool) -> list[NodeRow]:
    return [NodeRow(**dict(row)) for row in await db.fetch(q.NODES)]


async def get_node(db: asyncpg.Connection | asyncpg.Pool, node_id: str) -> NodeRow:
    row = await db.fetchrow(q.NODE, node_id)
    if row is None:
        raise NotFound(f"no node {node_id!r} (see `switchyard nodes`)")
    return NodeRow(**dict(row))


async def set_drain(db: asyncpg.Connection | asyncpg.Pool, node_id: str, drain: bool) -> NodeRow:
    """Drain a node (it stops claiming; its idle sessions move), or let it claim again."""
    if await db.fetchval(q.SET_NODE_DRAIN, node_id, drain) is None:
        raise NotFound(f"no node {node_id!r} (see `switchyard nodes`)")
    return await get_node(db, node_id)
