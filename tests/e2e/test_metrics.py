"""`GET /metrics` of a running dispatcher (its health port) and gateway, parsed, and `switchyard status`.

A dispatcher process and a gateway process share one database; while one turn is held open and
one client is subscribed, both are scraped and the values checked against what the test did.
"""

from __future__ import annotations

import json
import os
from typing import Any

import anyio
import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kernel import append_events
from kernel.net import free_port
from testkit import SWITCHYARD
from testkit.clients import open_client, request
from testkit.rows import add_project, add_session, add_task
from testkit.services import DispatcherProcess, gateway_process
from tests.dispatching import wait_for, wait_state
from ws_gateway import create_token

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

DONE = 20


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page: (name, sorted labels) -> value."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(url)
    assert response.status_code == 200
    return samples(response.text)


async def test_metrics_of_a_dispatcher_and_a_gateway_during_a_run(db_url: str, pool: asyncpg.Pool) -> None:
    project = await add_project(pool)
    session = await add_session(pool, project)
    token = await create_token(pool, "metrics", None)
    proc = DispatcherProcess(db_url, "metered", health_port=free_port())
    try:
        await proc.started()
        for i in range(DONE):
            await wait_state(pool, await add_task(pool, project, f"t{i}"), "completed")
        bad = await add_task(pool, project, "sleep:soon")  # not a number of seconds: bad_input
        await wait_state(pool, bad, "failed")
        held = await add_task(pool, project, "sleep:60", session_id=session)
        await wait_state(pool, held, "running")
        metrics_url = await pool.fetchval("SELECT url FROM workers WHERE id = 'metered'")
        assert metrics_url.startswith("http://127.0.0.1:") and metrics_url.endswith("/metrics")

        dispatcher = await scrape(metrics_url)
        noop = (("track", "noop"),)
        assert dispatcher[("switchyard_running_turns", ())] == 1
        assert dispatcher[("switchyard_claim_latency_seconds_count", noop)] >= DONE + 2
        assert dispatcher[("switchyard_turn_duration_seconds_count", noop)] >= DONE + 1
        assert dispatcher[("switchyard_task_failures_total", (("reason", "bad_input"),))] == 1
        assert dispatcher[("switchyard_tasks", (("state", "completed"),))] == DONE
        assert dispatcher[("switchyard_tasks", (("state", "running"),))] == 1
        assert dispatcher[("switchyard_lease_renewals_failed_total", ())] == 0
        assert dispatcher[("switchyard_db_pool_connections", (("pool", "dispatcher"), ("state", "max")))] > 0
        # Plausible: a no-op claim's latency is far below a minute.
        assert dispatcher[("switchyard_claim_latency_seconds_bucket", (("le", "60.0"), *noop))] >= DONE

        async with gateway_process(db_url, free_port()) as ws_url, open_client(ws_url, token) as ws:
            subscribed = await request(ws, {"type": "subscribe", "id": 1, "session_ids": [session], "since_seq": 0})
            assert subscribed["type"] == "ack"
            base = ws_url.removeprefix("ws://").removesuffix("/ws")
            gateway = await scrape(f"http://{base}/metrics")
            assert gateway[("switchyard_ws_clients", ())] == 1
            assert gateway[("switchyard_ws_frames_sent_total", ())] >= 2  # hello, ack, the log
            assert gateway[("switchyard_ws_send_queue_drops_total", ())] == 0
            assert gateway[("switchyard_tasks", (("state", "failed"),))] == 1
            assert gateway[("switchyard_db_pool_connections", (("pool", "gateway"), ("state", "max")))] == 10

            status = json.loads(await _cli(db_url, "status", "--json"))
            assert status["queue"]["running"] == 1 and status["queue"]["completed"] == DONE
            (worker,) = [d for d in status["dispatchers"] if d["id"] == "metered"]
            assert (worker["live"], worker["running"], worker["url"]) == (True, 1, metrics_url)
            (gw,) = status["gateways"]
            assert (gw["url"], gw["clients"]) == (ws_url, 1)
            table = await _cli(db_url, "status")
            assert table.startswith("queue        pending 0 (0 runnable)  running 1  completed 20  failed 1")
            assert "metered" in table and ws_url in table
        assert await proc.terminate() == 0, proc.stderr()
    finally:
        proc.close()


async def _cli(db_url: str, *args: str) -> str:
    env: dict[str, Any] = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD")}
    env["SWITCHYARD_DATABASE_URL"] = db_url
    result = await anyio.run_process([*SWITCHYARD, *args], env=env, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


async def test_the_gateway_reads_every_frame_again_after_a_postgres_restart(
    db_url: str, pool: asyncpg.Pool, pg: Any
) -> None:
    """The gateway's LISTEN connection is its own (kernel.listen): after a restart it subscribes
    again and frames written afterwards still arrive, each once."""
    project = await add_project(pool)
    session = await add_session(pool, project)
    token = await create_token(pool, "restart", None)

    async with gateway_process(db_url, free_port()) as ws_url, open_client(ws_url, token) as ws:
        await request(ws, {"type": "subscribe", "id": 1, "session_ids": [session], "since_seq": 0})
        await anyio.to_thread.run_sync(pg.restart)
        await pool.expire_connections()

        async def written() -> bool:
            try:
                await append_events(pool, session, [("delta", {"message_id": 1, "text": "after"})])
            except Exception:
                return False
            return True

        await wait_for(written, "a frame written after the restart")
        seqs = []
        with anyio.fail_after(30):
            while not seqs:
                frame = json.loads(await ws.recv())
                if frame.get("type") == "delta":
                    seqs.append(frame["seq"])
        assert seqs == [1]
