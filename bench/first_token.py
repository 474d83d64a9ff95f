"""What a user feels: INSERT -> first ``delta`` row, for a new session and for a follow-up, on every track.

The service is assembled exactly as ``switchyard dispatcher`` does it
(:func:`orchestrator.app.wiring.dispatcher_runtime`, sandbox included) against a private PostgreSQL
cluster, a real git repository and the fake model (testkit/fake_model.py) behind every track:

- ``native``: the native track (``tasks.agent`` NULL);
- ``warm``: agent ``opencode`` on the warm ``opencode serve`` pool;
- ``acp``: agent ``opencode-acp`` (one ``opencode acp`` process per turn);
- ``pty``: agent ``opencode-run`` (one ``opencode run`` per turn).

Per track, after one untimed turn (it starts the pool's server and lets the project's spares be
made): ``quiet`` runs ``--turns`` sessions one after the other, each a new session's first turn
and then a follow-up in it, waiting between turns until the service's spares are ready again;
``burst`` starts ``--burst`` new sessions at once (one transaction), then their follow-ups at once,
until ``--turns`` of each were measured. Latency is ``session_events.created_at`` of the turn's
first ``delta`` minus ``tasks.created_at`` (the database's clock).

``--compare`` runs the warm track with ``[worktrees] spares = 1``, ``= 0`` and ``= 4`` (as many as
a burst starts), the ACP track with
``[agents.opencode-acp] spare = 1`` and ``= 0``. ``--rss`` adds the memory scenario: 20 sessions on
one warm server, 2 of them active, the server's RSS before and after the idle sessions' instances
are disposed, compared with its idle size, and the first delta of a disposed session's next turn.
``--set section.key=value`` changes the configuration of every run (e.g. to measure a baseline).

    .venv/bin/python bench/first_token.py [--turns 20] [--burst 4] [--tracks native,warm,acp,pty]
        [--compare] [--rss] [--set worktrees.spares=0]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from backends.opencode_pool import tree_rss
from kernel.db import create_pool
from orchestrator.app.config import Config, build, resolve_paths
from orchestrator.app.wiring import Runtime, dispatcher_runtime
from orchestrator.db import migrate_url
from testkit.cluster import temporary_cluster
from testkit.fake_model import FakeModel
from testkit.repos import git_repo
from testkit.rows import add_task, first_delta_ms

TURN_TIMEOUT_S = 180
POLL_S = 0.01
# Longest wait for the service's spares to be ready again between quiet turns.
SETTLE_TIMEOUT_S = 60
PROMPT = "Say hello"
# Track -> tasks.agent.
AGENTS: dict[str, str | None] = {"native": None, "warm": "opencode", "acp": "opencode-acp", "pty": "opencode-run"}
# --compare: the variants of a track, each a set of configuration changes.
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "warm": {
        "spare": {"worktrees": {"spares": 1}},
        "no_spare": {"worktrees": {"spares": 0}},
        "4_spares": {"worktrees": {"spares": 4}},
    },
    "acp": {
        "spare": {"agents": {"opencode-acp": {"spare": 1}}},
        "no_spare": {"agents": {"opencode-acp": {"spare": 0}}},
    },
}
RSS_SESSIONS = 20
RSS_ACTIVE = 2
# Before the idle and the loaded RSS are read.
RSS_SETTLE_S = 10
# After the disposal, RSS is read at these seconds until it is within RSS_TARGET_MB of idle.
RSS_SAMPLES_S = (10, 30, 60, 120, 180, 240, 300)
RSS_TARGET_MB = 150

TASK = "SELECT state, session_id, error, failure_reason FROM tasks WHERE id = $1"


def stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered), 1),
        "p99_ms": round(ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))], 1),
        "min_ms": round(ordered[0], 1),
        "max_ms": round(ordered[-1], 1),
    }


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = merge(merged.get(key, {}), value) if isinstance(value, dict) else value
    return merged


def parse_set(items: list[str]) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value
        table = raw
        *parents, last = key.split(".")
        for part in parents:
            table = table.setdefault(part, {})
        table[last] = parsed
    return raw


class Bench:
    """One configured service (a fresh database and data directory) and one project."""

    def __init__(self, runtime: Runtime, pool: asyncpg.Pool, project: int) -> None:
        self.runtime = runtime
        self.pool = pool
        self.project = project

    async def submit(self, agent: str | None, sessions: list[int | None]) -> list[int]:
        """Tasks for ``sessions`` (None: a new session), inserted in one transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            return [await add_task(conn, self.project, PROMPT, agent=agent, session_id=s) for s in sessions]

    async def finish(self, task_id: int) -> tuple[int, float]:
        """Wait for the task; (its session, INSERT -> first delta in ms)."""
        with anyio.fail_after(TURN_TIMEOUT_S):
            while True:
                row = await self.pool.fetchrow(TASK, task_id)
                if row["state"] not in ("pending", "running"):
                    break
                await anyio.sleep(POLL_S)
        if row["state"] != "completed":
            raise RuntimeError(f"task {task_id} ended {row['state']} ({row['failure_reason']}): {row['error']}")
        return row["session_id"], await first_delta_ms(self.pool, task_id)

    async def turns(self, agent: str | None, sessions: list[int | None]) -> list[tuple[int, float]]:
        task_ids = await self.submit(agent, sessions)
        results: list[tuple[int, float]] = [(0, 0.0)] * len(task_ids)

        async def one(n: int, task_id: int) -> None:
            results[n] = await self.finish(task_id)

        async with anyio.create_task_group() as tg:
            for n, task_id in enumerate(task_ids):
                tg.start_soon(one, n, task_id)
        return results

    async def settle(self) -> None:
        """Until the service's spares (worktrees, pre-started agents) are ready again, if it has any."""
        ready = [
            getattr(part, "all_ready", None)
            for part in (getattr(self.runtime, "spares", None), getattr(self.runtime, "agent_spares", None))
        ]
        with anyio.move_on_after(SETTLE_TIMEOUT_S):
            for check in ready:
                while check is not None:
                    if check():
                        break
                    await anyio.sleep(0.05)
        await anyio.sleep(0.2)  # the previous turn's finalize and the pool's bookkeeping

    async def phases(self, agent: str | None, turns: int, burst: int) -> dict[str, Any]:
        await self.turns(agent, [None])  # untimed: starts what the track needs
        await self.settle()
        quiet_new, quiet_follow = [], []
        for _ in range(turns):
            ((session, first),) = await self.turns(agent, [None])
            await self.settle()
            ((_, follow),) = await self.turns(agent, [session])
            await self.settle()
            quiet_new.append(first)
            quiet_follow.append(follow)
        burst_new: list[float] = []
        burst_follow: list[float] = []
        while len(burst_new) < turns:
            started = await self.turns(agent, [None] * burst)
            await self.settle()
            followed = await self.turns(agent, [s for s, _ in started])
            await self.settle()
            burst_new += [ms for _, ms in started]
            burst_follow += [ms for _, ms in followed]
        return {
            "quiet": {"new_session": stats(quiet_new), "follow_up": stats(quiet_follow)},
            f"burst_{burst}": {"new_session": stats(burst_new), "follow_up": stats(burst_follow)},
        }

    async def rss(self, turns: int) -> dict[str, Any]:
        """The memory scenario (warm track; the runtime's pool has one server)."""
        opencode_pool = self.runtime.opencode_pool
        assert opencode_pool is not None
        ((first_session, _),) = await self.turns("opencode", [None])
        await self.settle()
        (first_server,) = opencode_pool.servers
        dispose = getattr(opencode_pool, "dispose_idle", None)

        async def rss_mb() -> float:
            # The project's server now: the pool may have restarted it (on the same data slot).
            server = next(s for s in opencode_pool.servers if s.state == "ready")
            assert server.tree is not None
            return round(await anyio.to_thread.run_sync(tree_rss, server.tree) / 2**20, 1)

        if dispose is not None:
            await dispose(0.0)
        await anyio.sleep(RSS_SETTLE_S)
        idle = await rss_mb()
        sessions = [first_session]
        for _ in range(RSS_SESSIONS - 1):
            ((session, _),) = await self.turns("opencode", [None])
            sessions.append(session)
            await self.settle()
        active = sessions[-RSS_ACTIVE:]
        marker = time.monotonic()
        for session in active:
            await self.turns("opencode", [session])
        await anyio.sleep(RSS_SETTLE_S)
        loaded = await rss_mb()
        result: dict[str, Any] = {
            "sessions": RSS_SESSIONS,
            "active": RSS_ACTIVE,
            "idle_server_mb": idle,
            "loaded_mb": loaded,
            "instances_loaded": len(first_server.directories),
        }
        if dispose is None:
            return result
        disposed_at = time.monotonic()
        await dispose(time.monotonic() - marker)
        result["instances_after_dispose"] = len(first_server.directories)
        # The runtime gives the memory back lazily: sampled until it is within the target of idle.
        samples = []
        for after in RSS_SAMPLES_S:
            await anyio.sleep(max(0.0, disposed_at + after - time.monotonic()))
            samples.append({"after_s": after, "rss_mb": await rss_mb()})
            if samples[-1]["rss_mb"] - idle <= RSS_TARGET_MB:
                break
        loaded_next, disposed_next = [], []
        for session in sessions[: min(turns, RSS_SESSIONS - RSS_ACTIVE)]:
            ((_, ms),) = await self.turns("opencode", [session])
            disposed_next.append(ms)
            ((_, ms),) = await self.turns("opencode", [session])
            loaded_next.append(ms)
        return {
            **result,
            "server_restarted": opencode_pool.servers != [first_server],
            "after_dispose": samples,
            "after_dispose_over_idle_mb": round(samples[-1]["rss_mb"] - idle, 1),
            "disposed_session_next_turn": stats(disposed_next),
            "loaded_session_next_turn": stats(loaded_next),
        }


async def run_service(
    cluster_url: Callable[[str], str],
    work: Path,
    name: str,
    raw: dict[str, Any],
    body: Callable[[Bench], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    admin = await asyncpg.connect(cluster_url("postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = cluster_url(name)
    await migrate_url(url)
    base = work / name
    repo = await anyio.to_thread.run_sync(git_repo, base / "project")
    config = resolve_paths(build(Config, merge({"data_dir": str(base / "data")}, raw), ""))
    pool = await create_pool(url, size=8)
    try:
        project = await pool.fetchval(
            "INSERT INTO projects (name, repo_path) VALUES ('bench', $1) RETURNING id", str(repo)
        )
        async with dispatcher_runtime(config, url) as runtime, anyio.create_task_group() as tg:
            tg.start_soon(runtime.dispatcher.run)
            try:
                result = await body(Bench(runtime, pool, project))
            finally:
                runtime.dispatcher.request_shutdown()
        return result
    finally:
        await pool.close()


async def run(cluster_url: Callable[[str], str], work: Path, args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"benchmark": "first_token", "load_before": os.getloadavg(), "tracks": {}}
    async with FakeModel() as fm:
        base = merge(
            {
                "native": {"base_url": fm.base_url, "model": "fake-model"},
                "opencode": {"base_url": fm.base_url, "models": ["fake-model"]},
                "opencode_pool": {"servers": 1, "min_servers": 1},
                "dispatcher": {"poll_interval": 0.5},
            },
            parse_set(args.set),
        )
        for track in filter(None, args.tracks.split(",")):
            agent = AGENTS[track]
            variants = VARIANTS.get(track, {}) if args.compare else {}
            measured = {}
            for variant, changes in (variants or {"default": {}}).items():

                async def body(bench: Bench, agent: str | None = agent) -> dict[str, Any]:
                    return await bench.phases(agent, args.turns, args.burst)

                measured[variant] = await run_service(
                    cluster_url, work, f"{track}_{variant}", merge(base, changes), body
                )
            result["tracks"][track] = measured
        if args.rss:

            async def rss(bench: Bench) -> dict[str, Any]:
                return await bench.rss(args.turns)

            result["rss"] = await run_service(cluster_url, work, "rss", base, rss)
    result["load_after"] = os.getloadavg()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--burst", type=int, default=4)
    parser.add_argument("--tracks", default="native,warm,acp,pty")
    parser.add_argument("--compare", action="store_true", help="the warm and ACP tracks with and without spares")
    parser.add_argument("--rss", action="store_true", help="the pool's memory before and after instance disposal")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()
    with temporary_cluster() as cluster:
        print(json.dumps(anyio.run(run, cluster.url, cluster.directory.parent, args), indent=2))


if __name__ == "__main__":
    main()
