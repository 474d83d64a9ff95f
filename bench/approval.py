"""Approvals by a person, across processes: the agent asks -> ``permission_request`` at the client
-> the client's reply -> the agent has the answer.

A private PostgreSQL cluster; ``switchyard dispatcher`` and ``switchyard gateway`` as two child
processes. The dispatcher runs the fake ACP agent under ``execute = "ask"``; one turn asks
ROUNDS (+ warm-up) permissions in a row, each answered "allow once" by one WebSocket client the
moment its ``permission_request`` arrives. The agent stamps each request when it sends it and
when the answer comes back (CLOCK_MONOTONIC, shared by every process of the machine); the client
stamps the frame's arrival and its reply. Prints JSON with p50/p99/max of: agent asks -> client
has the request, client replies -> agent has the answer, and the whole round trip (whose only
other part is the client turning the frame around). Target: round trip p99 <= 20 ms.

    .venv/bin/python bench/approval.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from websockets.asyncio.client import connect

from kernel.db import create_pool
from kernel.net import free_port
from orchestrator.db import migrate_url
from testkit import fake_acp_agent_command
from testkit.cluster import temporary_cluster
from testkit.repos import git_repo
from testkit.services import DispatcherProcess, gateway_process
from ws_gateway import create_token

WARM_UP = 10


def quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 2),
        "p99": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2),
        "max": round(ordered[-1], 2),
    }


async def main(rounds: int) -> dict[str, Any]:
    total = rounds + WARM_UP
    env = {
        "SWITCHYARD__AGENTS__FAKE__TRANSPORT": "acp",
        "SWITCHYARD__AGENTS__FAKE__COMMAND": json.dumps(fake_acp_agent_command()),
        "SWITCHYARD__PERMISSIONS__EXECUTE": "ask",
    }
    with temporary_cluster() as cluster, tempfile.TemporaryDirectory() as tmp:
        url = cluster.url("postgres")
        await migrate_url(url)
        pool = await create_pool(url, 4)
        try:
            repo = git_repo(Path(tmp) / "repo")
            project = await pool.fetchval(
                "INSERT INTO projects (name, repo_path) VALUES ('bench', $1) RETURNING id", str(repo)
            )
            token = await create_token(pool, "bench")
            dispatcher = DispatcherProcess(url, "bench", env)
            try:
                await dispatcher.started()
                # One reply per request, faster than an interactive client's default budget.
                budget = {
                    "SWITCHYARD__GATEWAY__REQUESTS_PER_SECOND": "10000",
                    "SWITCHYARD__GATEWAY__REQUEST_BURST": "10000",
                }
                async with (
                    gateway_process(url, free_port(), env=budget) as ws_url,
                    connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"}) as ws,
                ):
                    await ws.recv()
                    submit = {"type": "submit", "id": "s", "project_id": project, "agent": "fake"}
                    await ws.send(json.dumps({**submit, "input": f"PERMISSIONS {total}"}))
                    ack = json.loads(await ws.recv())
                    await ws.send(json.dumps({"type": "subscribe", "id": "sub", "session_ids": [ack["session_id"]]}))
                    received: list[int] = []
                    replied: list[int] = []
                    refused: list[dict[str, Any]] = []
                    while len(replied) < total:
                        frame = json.loads(await ws.recv())
                        refused += [frame] if frame["type"] == "error" else []
                        if frame["type"] != "permission_request":
                            continue
                        received.append(time.monotonic_ns())
                        answer = {
                            "type": "permission_reply",
                            "request_id": frame["request_id"],
                            "decision": "allow_once",
                        }
                        replied.append(time.monotonic_ns())
                        await ws.send(json.dumps(answer))
                    with anyio.fail_after(60):
                        state = "running"
                        while state == "running":
                            frame = json.loads(await ws.recv())
                            refused += [frame] if frame["type"] == "error" else []
                            state = frame["state"] if frame["type"] == "task_state" else state
                    content = await pool.fetchval(
                        "SELECT content FROM messages WHERE task_id = $1 AND role = 'assistant'", ack["task_id"]
                    )

                await dispatcher.terminate()
            finally:
                dispatcher.close()
        finally:
            await pool.close()
    assert not refused, refused
    timings = json.loads(content.split("timings=", 1)[1])
    assert state == "completed" and len(timings) == total and all(t[2] == "selected:opt-allow" for t in timings)
    asked = [t[0] for t in timings][WARM_UP:]
    answered = [t[1] for t in timings][WARM_UP:]
    received, replied = received[WARM_UP:], replied[WARM_UP:]
    ms = 1e-6
    return {
        "rounds": rounds,
        "processes": "gateway and dispatcher apart (plus the agent, a child of the dispatcher)",
        "agent_asks_to_client_ms": quantiles([(r - a) * ms for a, r in zip(asked, received, strict=True)]),
        "client_replies_to_agent_ms": quantiles([(d - r) * ms for r, d in zip(replied, answered, strict=True)]),
        "round_trip_ms": quantiles([(d - a) * ms for a, d in zip(asked, answered, strict=True)]),
        "target_round_trip_p99_ms": 20,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    print(json.dumps(anyio.run(main, parser.parse_args().rounds), indent=2))
