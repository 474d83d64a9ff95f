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
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from kernel import get_logger
from orchestrator.db import queries as q
from orchestrator.db.settings import NodeSettings
from orchestrator.errors import NotFound

log = get_logger("nodes")


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
        # What the last heartbeat said it runs (the claim uses it).
        self.current_agents: list[str] = self.agents()
        # Told when ``draining`` changes (the dispatcher wakes its claim loop).
        self.on_change: Callable[[], None] = lambda: None

    def agents(self) -> list[str]:
        return sorted(set(self._agents()))

    async def __call__(self, conn: asyncpg.Connection, worker_id: str) -> None:
        agents = self.agents()
        draining = bool(
            await conn.fetchval(
                q.NODE_HEARTBEAT,
                self.node_id,
                self._host,
                agents,
                self._capacity,
                self.settings.dead_after,
                worker_id,
            )
        )
        self.current_agents = agents
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
