"""Warm ``opencode serve`` vs a one-shot ``opencode acp``: INSERT -> first ``delta`` row.

Both tracks run the pinned opencode against the fake model, through the real dispatcher (private
PostgreSQL cluster, session worktrees of a real git repository):

- ``warm``: agent ``opencode`` (the opencode_server track). Each session runs two turns; the
  first opens the opencode session (and the worktree's instance) on the pool's already running
  server, the second reuses both. The second turn is the one the issue measures.
- ``cold``: agent ``opencode-acp``, which starts ``opencode acp`` for every turn.

Latency is ``session_events.created_at`` of the turn's first ``delta`` minus ``tasks.created_at``
(one clock: the database's). Prints JSON with p50/max in milliseconds and the cold/warm ratio
of the medians (target: at least 5).

    .venv/bin/python bench/warm_vs_cold.py [--sessions 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from backends.acp import AcpBackend
from backends.opencode_env import OpencodeSettings
from backends.opencode_pool import OpencodePool, OpencodePoolSettings
from backends.opencode_server import OpencodeServerBackend
from backends.registry import PRESETS
from kernel.db import create_pool
from orchestrator.db import migrate_url
from orchestrator.dispatch.dispatcher import Dispatcher
from orchestrator.dispatch.routing import Router
from orchestrator.dispatch.settings import DispatcherSettings
from testkit.cluster import temporary_cluster
from testkit.fake_model import FakeModel
from testkit.repos import git_repo
from testkit.rows import add_task, first_delta_ms
from worktrees import WorktreeSettings
from worktrees.manager import WorktreeManager

TURN_TIMEOUT_S = 120
POLL_S = 0.02
PROMPT = "Say hello"


async def turn(pool: asyncpg.Pool, project: int, session: int | None, agent: str) -> tuple[int, float]:
    """Submit one task, wait for it, return (its session, INSERT -> first delta in ms)."""
    task_id = await add_task(pool, project, PROMPT, agent=agent, session_id=session)
    with anyio.fail_after(TURN_TIMEOUT_S):
        while True:
            row = await pool.fetchrow("SELECT state, session_id, error FROM tasks WHERE id = $1", task_id)
            if row["state"] not in ("pending", "running"):
                break
            await anyio.sleep(POLL_S)
    if row["state"] != "completed":
        raise RuntimeError(f"{agent} task {task_id} ended {row['state']}: {row['error']}")
    return row["session_id"], await first_delta_ms(pool, task_id)


def stats(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(samples), 1), "max_ms": round(max(samples), 1), "n": len(samples)}


async def run(url: str, work: Path, sessions: int) -> dict[str, Any]:
    await migrate_url(url)
    repo = await anyio.to_thread.run_sync(git_repo, work / "project")
    async with FakeModel() as fm:
        opencode = OpencodeSettings(base_url=fm.base_url, models=("fake-model",))
        settings = OpencodePoolSettings(servers=1, min_servers=1)
        async with OpencodePool(settings, opencode, work / "opencode-pool") as oc_pool:
            router = Router(
                agents={
                    "opencode": partial(OpencodeServerBackend, oc_pool),
                    "opencode-acp": partial(AcpBackend, PRESETS["opencode-acp"], opencode=opencode),
                }
            )
            pool = await create_pool(url, size=4)
            try:
                worktrees = WorktreeManager(pool, WorktreeSettings(root=work / "worktrees"))
                dispatcher = Dispatcher(url, DispatcherSettings(poll_interval=0.5), router, worktrees)
                project = await pool.fetchval(
                    "INSERT INTO projects (name, repo_path) VALUES ('bench', $1) RETURNING id", str(repo)
                )
                first_turns, second_turns, cold = [], [], []
                async with anyio.create_task_group() as tg:
                    tg.start_soon(dispatcher.run)
                    for _ in range(sessions):
                        session, first = await turn(pool, project, None, "opencode")
                        _, second = await turn(pool, project, session, "opencode")
                        first_turns.append(first)
                        second_turns.append(second)
                    for _ in range(sessions):
                        cold.append((await turn(pool, project, None, "opencode-acp"))[1])
                    dispatcher.request_shutdown()
            finally:
                await pool.close()
    warm = stats(second_turns)
    return {
        "benchmark": "opencode_warm_vs_cold_insert_to_first_delta",
        "warm_second_turn": warm,
        "warm_first_turn": stats(first_turns),
        "cold_acp_turn": stats(cold),
        "cold_over_warm_p50": round(statistics.median(cold) / warm["p50_ms"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sessions", type=int, default=5)
    args = parser.parse_args()
    with temporary_cluster() as cluster:
        print(json.dumps(anyio.run(run, cluster.url(), cluster.directory.parent, args.sessions), indent=2))


if __name__ == "__main__":
    main()
