"""The project feed: a task inserted by SQL without a session -> its claim -> ``session_created``.

A private PostgreSQL cluster, a dispatcher and a gateway in this process, and one WebSocket
client subscribed to the project. Each round inserts a noop task with no session; the delay is
from the claim (``tasks.started_at``, the database's clock, the same machine's clock as ours)
to the client's receipt of ``session_created`` for the session the claim created. Prints JSON
with p50/p99/max over ROUNDS rounds. Target: within 50 ms of the claim.

    .venv/bin/python bench/discovery.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import anyio
from websockets.asyncio.client import connect

from kernel.db import create_pool
from orchestrator.db import migrate_url
from orchestrator.dispatch.dispatcher import Dispatcher
from orchestrator.dispatch.routing import Router
from orchestrator.dispatch.settings import DispatcherSettings
from orchestrator.services.gateway_actions import OrchestratorActions
from orchestrator.services.review import ReviewService
from testkit.cluster import temporary_cluster
from ws_gateway import Gateway, GatewaySettings, create_token

INSERT_TASK = "INSERT INTO tasks (project_id, input, agent) VALUES ($1, 'bench', 'noop') RETURNING id"


async def main(rounds: int) -> dict[str, Any]:
    with temporary_cluster() as cluster:
        url = cluster.url("postgres")
        await migrate_url(url)
        pool = await create_pool(url, 10)
        try:
            project = await pool.fetchval("INSERT INTO projects (name, repo_path) VALUES ('b', '/srv/b') RETURNING id")
            token = await create_token(pool, "bench")
            gateway = Gateway(GatewaySettings(port=0), pool, OrchestratorActions(pool, ReviewService(pool)), url)
            dispatcher = Dispatcher(url, DispatcherSettings(), Router())
            delays: list[float] = []
            async with anyio.create_task_group() as tg:
                await tg.start(gateway.serve)
                tg.start_soon(dispatcher.run)
                async with connect(gateway.url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
                    await ws.recv()
                    await ws.send(json.dumps({"type": "subscribe_project", "id": 1, "project_ids": [project]}))
                    await ws.recv()
                    for _ in range(rounds):
                        task = await pool.fetchval(INSERT_TASK, project)
                        while True:
                            frame = json.loads(await ws.recv())
                            if frame["type"] == "session_created":
                                received = time.time()
                                break
                        row = await pool.fetchrow("SELECT session_id, started_at FROM tasks WHERE id = $1", task)
                        assert row["session_id"] == frame["session"]["id"]
                        delays.append((received - row["started_at"].timestamp()) * 1000)
                dispatcher.request_shutdown()
                tg.cancel_scope.cancel()
        finally:
            await pool.close()
    ordered = sorted(delays)
    return {
        "rounds": rounds,
        "claim_to_session_created_ms": {
            "p50": round(statistics.median(ordered), 2),
            "p99": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2),
            "max": round(ordered[-1], 2),
        },
        "target_ms": 50,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    print(json.dumps(anyio.run(main, parser.parse_args().rounds), indent=2))
