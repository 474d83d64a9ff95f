"""Native track latency: from the fake model's first content byte to the first ``delta``.

The fake model (testkit/fake_model.py, a real HTTP server in a thread of this process)
timestamps each turn's first content chunk right after writing it to the socket. Measured from
there, per turn:

- ``backend``: until ``NativeBackend.run_turn`` hands the first TextDelta to ``emit`` (HTTP,
  SSE parsing, chunk folding);
- ``row``: until the first ``delta`` row is inserted into session_events (its ``created_at``),
  through the real dispatcher with a private PostgreSQL cluster;
- ``notify``: until the ``session_events`` NOTIFY of that row reaches a LISTEN connection, i.e.
  it is committed and visible to the gateway.

The dispatcher runs twice: with its default ``coalesce_ms`` (deltas are batched that long
before a row is written) and with ``coalesce_ms = 0``, which shows Switchyard's own cost.
Prints JSON with p50/p99/max in milliseconds. Target (issue 4): ``row`` p50/p99 under 5 ms.

    .venv/bin/python bench/native.py [--turns 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import anyio
import asyncpg

from backends.base import BackendEvent, TextDelta, Turn
from backends.native import NativeBackend, NativeSettings
from kernel.db import connect, create_pool
from orchestrator.db import migrate_url
from orchestrator.dispatch.dispatcher import Dispatcher
from orchestrator.dispatch.routing import Router
from orchestrator.dispatch.settings import DispatcherSettings
from testkit.cluster import temporary_cluster
from testkit.fake_model import FakeModel, Reply, Stall

# Paced like a real model: the first content chunk follows the role chunk after a pause (prompt
# processing), then a chunk every 10 ms. The pauses also keep the fake's thread from holding the
# GIL while the event loop under test wants it.
REPLY = Reply(
    text=["Hello", " there,", " how", " can", " I", " help?"],
    chunk_delay=0.01,
    stall=Stall(after_events=1, seconds=0.02),
)
TURN_TIMEOUT_S = 30
# Polling only paces the loop; latencies come from timestamps, not from when the poll saw the end.
POLL_S = 0.02


class FirstContent:
    """The fake model's hook: wall time of the first content chunk of the current turn."""

    def __init__(self) -> None:
        self.at: float | None = None

    def reset(self) -> None:
        self.at = None

    def __call__(self, payload: Mapping[str, Any]) -> None:
        choices = payload.get("choices") or [{}]
        if self.at is None and choices[0].get("delta", {}).get("content"):
            self.at = time.time()


def stats(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))], 3),
        "max_ms": round(ordered[-1], 3),
    }


async def bench_backend(fm: FakeModel, first: FirstContent, turns: int) -> dict[str, Any]:
    samples = []
    async with NativeBackend(NativeSettings(base_url=fm.base_url, model="fake-model"), environ={}) as backend:
        for n in range(turns):
            emitted: list[float] = []

            async def emit(event: BackendEvent, emitted: list[float] = emitted) -> None:
                if isinstance(event, TextDelta) and not emitted:
                    emitted.append(time.time())

            first.reset()
            fm.enqueue(REPLY)
            outcome = await backend.run_turn(Turn(task_id=n, session_id=1, project_id=1, input="hi"), emit)
            assert outcome.error is None, outcome
            assert first.at is not None
            samples.append((emitted[0] - first.at) * 1000)
    return {"turns": turns, **stats(samples)}


async def bench_dispatcher(
    url: str, fm: FakeModel, first: FirstContent, turns: int, settings: DispatcherSettings
) -> dict[str, Any]:
    native = NativeSettings(base_url=fm.base_url, model="fake-model")
    dispatcher = Dispatcher(url, settings, Router(native=lambda: NativeBackend(native)))
    notified: dict[tuple[int, int], float] = {}

    def on_notify(conn: Any, pid: int, channel: str, payload: str) -> None:
        session, seq = payload.split(":")
        notified[(int(session), int(seq))] = time.time()

    pool = await create_pool(url, size=2)
    listener = await connect(url)
    await listener.add_listener("session_events", on_notify)
    rows, notifies = [], []
    try:
        project = await pool.fetchval(
            "INSERT INTO projects (name, repo_path) VALUES ($1, $2) RETURNING id",
            f"bench{id(settings)}",
            f"/b{id(settings)}",
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(dispatcher.run)
            for _ in range(turns):
                first.reset()
                fm.enqueue(REPLY)
                task_id = await pool.fetchval(
                    "INSERT INTO tasks (project_id, input) VALUES ($1, 'hi') RETURNING id", project
                )
                task = await wait_done(pool, task_id)
                delta = await pool.fetchrow(
                    "SELECT seq, extract(epoch FROM created_at)::float8 AS at FROM session_events"
                    " WHERE session_id = $1 AND type = 'delta' ORDER BY seq LIMIT 1",
                    task["session_id"],
                )
                assert first.at is not None
                rows.append((delta["at"] - first.at) * 1000)
                notifies.append((notified[(task["session_id"], delta["seq"])] - first.at) * 1000)
            dispatcher.request_shutdown()
    finally:
        await listener.close()
        await pool.close()
    return {"turns": turns, "coalesce_ms": settings.coalesce_ms, "row": stats(rows), "notify": stats(notifies)}


async def wait_done(pool: asyncpg.Pool, task_id: int) -> asyncpg.Record:
    with anyio.fail_after(TURN_TIMEOUT_S):
        while True:
            task = await pool.fetchrow("SELECT state, session_id, error FROM tasks WHERE id = $1", task_id)
            if task["state"] not in ("pending", "running"):
                assert task["state"] == "completed", dict(task)
                return task
            await anyio.sleep(POLL_S)


async def run(url: str, turns: int) -> dict[str, Any]:
    await migrate_url(url)
    first = FirstContent()
    async with FakeModel(on_event=first) as fm:
        backend = await bench_backend(fm, first, turns)
        default = DispatcherSettings()
        dispatcher = [
            await bench_dispatcher(url, fm, first, turns, default),
            await bench_dispatcher(url, fm, first, turns, replace(default, coalesce_ms=0.0)),
        ]
    return {"benchmark": "native_first_delta", "backend": backend, "dispatcher": dispatcher}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--turns", type=int, default=200)
    args = parser.parse_args()
    with temporary_cluster() as cluster:
        print(json.dumps(anyio.run(run, cluster.url(), args.turns), indent=2))


if __name__ == "__main__":
    main()
