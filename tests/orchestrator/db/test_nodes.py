"""Nodes against a real database: the heartbeat on the worker lock, drain, the listing."""

from __future__ import annotations

import anyio
import asyncpg
import pytest

from orchestrator.db import NodeBeat, NodeSettings, WorkerLock, get_node, list_nodes, set_drain
from orchestrator.errors import NotFound

pytestmark = pytest.mark.anyio


async def test_the_heartbeat_writes_the_node_and_learns_of_a_drain(db_url: str, pool: asyncpg.Pool) -> None:
    agents = ["native", "noop"]
    beat = NodeBeat("node-1", NodeSettings(dead_after=30), lambda: agents, 4)
    changed = []
    beat.on_change = lambda: changed.append(beat.draining)
    lock = WorkerLock(db_url, "dispatcher", ["node-1"], explicit=True, heartbeat=beat)
    await lock.acquire()
    try:
        [row] = await list_nodes(pool)
        assert (row.id, row.agents, row.capacity, row.state, row.sessions, row.running) == (
            "node-1",
            ["native", "noop"],
            4,
            "live",
            0,
            0,
        )
        assert await pool.fetchval("SELECT node_id FROM workers WHERE id = 'node-1'") == "node-1"
        assert (await set_drain(pool, "node-1", True)).state == "drained"  # nothing running
        agents.append("fake")
        async with anyio.create_task_group() as tg:
            tg.start_soon(lock.hold, lambda _reason: None)
            with anyio.fail_after(10):
                while not beat.draining:
                    await anyio.sleep(0.1)
            tg.cancel_scope.cancel()
        assert changed == [True] and beat.current_agents == ["fake", "native", "noop"]
        assert (await get_node(pool, "node-1")).agents == ["fake", "native", "noop"]
        assert (await set_drain(pool, "node-1", False)).drain_requested_at is None
        await pool.execute("UPDATE nodes SET seen_at = now() - interval '31 s'")
        assert (await get_node(pool, "node-1")).state == "dead"
    finally:
        await lock.release()
    with pytest.raises(NotFound, match="no node 'nobody'"):
        await set_drain(pool, "nobody", True)
