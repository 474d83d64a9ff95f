"""Gateways as real processes (`switchyard gateway`): restarts and several gateways on one database."""

from __future__ import annotations

import os
import subprocess

import anyio
import asyncpg
import httpx
import pytest

from kernel.eventlog import append_events
from kernel.net import free_port
from testkit import SWITCHYARD
from testkit.clients import open_client, recv, request, session_frames
from testkit.services import gateway_process

pytestmark = pytest.mark.anyio

START_TIMEOUT_S = 60


def deltas(start: int, count: int) -> list[tuple[str, dict[str, object]]]:
    return [("delta", {"message_id": 1, "text": str(i)}) for i in range(start, start + count)]


async def test_restarted_gateway_delivers_every_frame_once(
    db_url: str, pool: asyncpg.Pool, token: str, session_id: int
) -> None:
    port = free_port()
    seqs: list[int] = []
    await append_events(pool, session_id, deltas(0, 10))
    async with gateway_process(db_url, port, kill=True) as url, open_client(url, token) as ws:
        await recv(ws)
        await request(ws, {"type": "subscribe", "id": 1, "session_ids": [session_id], "since_seq": 0})
        await append_events(pool, session_id, deltas(10, 10))
        seqs += [f["seq"] for f in await session_frames(ws, 15)]
    # The gateway crashed mid-turn; the turn goes on.
    await append_events(pool, session_id, deltas(20, 10))
    async with gateway_process(db_url, port) as url, open_client(url, token) as ws:
        await recv(ws)
        await request(ws, {"type": "subscribe", "id": 2, "session_ids": [session_id], "since_seq": seqs[-1]})
        await append_events(pool, session_id, deltas(30, 10))
        seqs += [f["seq"] for f in await session_frames(ws, 40 - len(seqs))]
    assert seqs == list(range(1, 41))


async def test_two_gateway_processes_deliver_the_same_frames(
    db_url: str, pool: asyncpg.Pool, token: str, session_id: int
) -> None:
    async with (
        gateway_process(db_url, free_port()) as first_url,
        gateway_process(db_url, free_port()) as second_url,
        open_client(first_url, token) as first,
        open_client(second_url, token) as second,
    ):
        for ws in (first, second):
            await recv(ws)
            await request(ws, {"type": "subscribe", "id": 1, "session_ids": [session_id]})
        for start in range(0, 50, 5):
            await append_events(pool, session_id, deltas(start, 5))
        got_first = await session_frames(first, 50)
        got_second = await session_frames(second, 50)
    assert [f["seq"] for f in got_first] == list(range(1, 51))
    assert got_first == got_second


async def test_token_create_command(db_url: str, pool: asyncpg.Pool, projects: tuple[int, int]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD")}
    env["SWITCHYARD_DATABASE_URL"] = db_url

    def switchyard(*args: str) -> subprocess.CompletedProcess[str]:
        command = [*SWITCHYARD, *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)

    created = await anyio.to_thread.run_sync(switchyard, "token", "create", "--project", "alpha", "--name", "ide")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert await pool.fetchval("SELECT project_ids FROM api_tokens WHERE name = 'ide'") == [projects[0]]
    assert token not in created.stderr
    unknown = await anyio.to_thread.run_sync(switchyard, "token", "create", "--project", "nope")
    assert unknown.returncode == 1
    assert "no project 'nope'" in unknown.stderr

    async with gateway_process(db_url, free_port()) as url:
        async with httpx.AsyncClient() as http:
            health = await http.get(url.replace("ws://", "http://").replace("/ws", "/health"))
        assert health.status_code == 200
        async with open_client(url, token) as ws:
            hello = await recv(ws)
        assert hello["token"] == {"name": "ide", "project_ids": [projects[0]]}
