"""Dispatcher benchmark: latency to ``running``/``completed`` and no-op turns per second.

Runs its own PostgreSQL cluster (orchestrator.db.embedded) and real dispatcher processes
(``switchyard dispatcher``) with the noop backend, and prints one JSON object:

- ``latency``: tasks inserted one by one at light load (one every ``--gap`` seconds, over 10
  sessions); milliseconds from the INSERT (``tasks.created_at``) to the claim
  (``task_attempts.started_at``) and to the end (``tasks.ended_at``), p50 and p99. Both are
  server timestamps, so the numbers include the INSERT's own commit.
- ``throughput``: ``--turns`` tasks over 100 sessions, inserted at once while 1 (then 2)
  dispatcher processes wait; turns per second from the first claim to the last completion.

Usage: ``python bench/dispatch.py [--samples 300] [--turns 6000]``. Never part of the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kernel.db import connect  # noqa: E402
from orchestrator.db.migrate import migrate  # noqa: E402
from testkit import SWITCHYARD  # noqa: E402
from testkit.cluster import temporary_cluster  # noqa: E402

START_TIMEOUT_S = 60

LATENCIES = """
SELECT extract(epoch FROM a.started_at - t.created_at)::float8 * 1000 AS to_running,
       extract(epoch FROM t.ended_at - t.created_at)::float8 * 1000 AS to_completed
  FROM tasks t JOIN task_attempts a ON a.task_id = t.id
 WHERE t.id = ANY($1)
"""
SPAN = """
SELECT count(*) AS turns, extract(epoch FROM max(t.ended_at) - min(a.started_at))::float8 AS seconds,
       count(DISTINCT a.worker_id) AS workers
  FROM tasks t JOIN task_attempts a ON a.task_id = t.id
 WHERE t.state = 'completed' AND t.id = ANY($1)
"""
INSERT_ONE = "INSERT INTO tasks (project_id, session_id, input, agent) VALUES ($1, $2, 'ping', 'noop') RETURNING id"
UNFINISHED = "SELECT count(*) FROM tasks WHERE id = ANY($1) AND state IN ('pending', 'running')"
INSERT_MANY = """
INSERT INTO tasks (project_id, session_id, input, agent)
SELECT $1, s, 'turn', 'noop' FROM unnest($2::bigint[]) AS s
RETURNING id
"""


@contextmanager
def dispatchers(url: str, count: int) -> Iterator[None]:
    data_dir = tempfile.mkdtemp(prefix="switchyard-bench-data-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD")}
    env.update(SWITCHYARD_DATABASE_URL=url, SWITCHYARD_LOG_LEVEL="warning", SWITCHYARD_DATA_DIR=data_dir)
    env["SWITCHYARD__OPENCODE_POOL__MIN_SERVERS"] = "0"  # noop turns only
    procs = []
    try:
        for i in range(count):
            worker_env = {**env, "SWITCHYARD__DISPATCHER__WORKER_ID": f"bench-{i}"}
            proc = subprocess.Popen(
                [*SWITCHYARD, "dispatcher"],
                cwd=ROOT,
                env=worker_env,
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(proc)
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if "running" not in line:
                raise RuntimeError(f"dispatcher did not start: {line!r}")
        time.sleep(0.5)  # let LISTEN settle
        yield
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(START_TIMEOUT_S)
        shutil.rmtree(data_dir, ignore_errors=True)


async def setup(url: str, sessions: int) -> tuple[int, list[int]]:
    conn = await connect(url)
    try:
        await migrate(conn)
        project = await conn.fetchval(
            "INSERT INTO projects (name, repo_path) VALUES ($1, $2) RETURNING id",
            f"bench{time.time_ns()}",
            f"/b/{time.time_ns()}",
        )
        ids = [
            await conn.fetchval("INSERT INTO sessions (project_id) VALUES ($1) RETURNING id", project)
            for _ in range(sessions)
        ]
    finally:
        await conn.close()
    return project, ids


async def wait_done(conn: asyncpg.Connection, ids: list[int]) -> None:
    while await conn.fetchval(UNFINISHED, ids):  # noqa: ASYNC110 - polling the database
        await anyio.sleep(0.05)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 2)


async def latency(url: str, samples: int, gap: float) -> dict[str, Any]:
    project, sessions = await setup(url, 10)
    conn = await connect(url)
    ids = []
    try:
        with dispatchers(url, 1):
            for i in range(samples):
                ids.append(await conn.fetchval(INSERT_ONE, project, sessions[i % len(sessions)]))
                await anyio.sleep(gap)
            await wait_done(conn, ids)
        rows = await conn.fetch(LATENCIES, ids)
    finally:
        await conn.close()
    running = [r["to_running"] for r in rows]
    completed = [r["to_completed"] for r in rows]
    return {
        "samples": len(rows),
        "to_running_ms": {"p50": pct(running, 50), "p99": pct(running, 99), "mean": round(statistics.mean(running), 2)},
        "to_completed_ms": {
            "p50": pct(completed, 50),
            "p99": pct(completed, 99),
            "mean": round(statistics.mean(completed), 2),
        },
    }


async def throughput(url: str, processes: int, turns: int) -> dict[str, Any]:
    project, sessions = await setup(url, 100)
    conn = await connect(url)
    try:
        with dispatchers(url, processes):
            ids = [r["id"] for r in await conn.fetch(INSERT_MANY, project, [sessions[i % 100] for i in range(turns)])]
            await wait_done(conn, ids)
        row = await conn.fetchrow(SPAN, ids)
    finally:
        await conn.close()
    return {
        "processes": processes,
        "turns": row["turns"],
        "seconds": round(row["seconds"], 3),
        "turns_per_second": round(row["turns"] / row["seconds"], 1),
        "workers_used": row["workers"],
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with temporary_cluster() as pg:
        url = pg.url()
        result: dict[str, Any] = {"cpus": os.cpu_count()}
        result["latency"] = await latency(url, args.samples, args.gap)
        result["throughput"] = [await throughput(url, n, args.turns) for n in (1, 2)]
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=300, help="tasks for the latency run")
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between latency inserts")
    parser.add_argument("--turns", type=int, default=6000, help="tasks per throughput run")
    print(json.dumps(anyio.run(main, parser.parse_args()), indent=2))
