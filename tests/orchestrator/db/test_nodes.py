"""Nodes against a real database: the heartbeat on the worker lock, drain, the listing."""

from __future__ import annotations

from pathlib import Path

import anyio
import asyncpg
import pytest

from orchestrator.db import NodeBeat, NodeSettings, WorkerLock, get_node, list_nodes, set_drain
from orchestrator.errors import NotFound
from testkit.repos import bare_remote, sample_repo
from testkit.rows import add_project

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


async def test_the_heartbeat_says_which_projects_the_node_cannot_reach(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    checkout = sample_repo(tmp_path / "here")
    url = bare_remote(checkout, tmp_path / "remote.git")
    here = await add_project(pool, "here", checkout)
    gone = await add_project(pool, "gone", tmp_path / "not-on-this-disk")
    answers = await add_project(pool, "answers", remote=str(url))
    silent = await add_project(pool, "silent", remote=str(tmp_path / "no-such-remote.git"))
    beat = NodeBeat("node-1", NodeSettings(dead_after=30), lambda: ["native"], 1)
    lock = WorkerLock(db_url, "dispatcher", ["node-1"], explicit=True, heartbeat=beat)
    await lock.acquire()
    try:
        # The checkout is known at once; a remote once the background check has asked it.
        assert beat.unreachable_projects == [gone]
        async with anyio.create_task_group() as tg:
            tg.start_soon(lock.hold, lambda _reason: None)
            with anyio.fail_after(30):
                while beat.unreachable_projects != [gone, silent]:
                    await anyio.sleep(0.1)
            tg.cancel_scope.cancel()
        assert (await get_node(pool, "node-1")).unreachable_projects == [gone, silent]
        assert here not in beat.unreachable_projects and answers not in beat.unreachable_projects
    finally:
        await lock.release()
