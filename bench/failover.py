"""Several machines: what pushing snapshots costs a turn, and how long a dead node's sessions wait.

1. **Push cost.** In-process, a project with a bare repository as its remote: every turn changes
   FILES files of the session's worktree, then ``record_turn`` snapshots it, diffs it and pushes
   the snapshot to the remote in the background (worktrees.remote.Publisher). The push is timed on
   its own, ``record_turn`` with and without a remote, and how long after the turn the snapshot is
   on the remote. Target: <= 30 ms per turn for a 100-file change.
2. **Failover.** NODES ``switchyard dispatcher`` processes (separate data directories, one private
   PostgreSQL cluster, the fake ACP agent) run a first turn in each of SESSIONS sessions; the
   sessions of one node then start a long turn, that node is killed with SIGKILL, and each of
   its sessions gets its next turn at once. Measured with the database's clock: from the kill to
   the first attempt of each next turn on another node; the bound is dead_after + lease + 5 s.

    .venv/bin/python bench/failover.py [--turns 30] [--files 100] [--sessions 9] [--dead-after 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from kernel.db import create_pool
from orchestrator.db import migrate_url
from testkit import fake_acp_agent_command
from testkit.cluster import temporary_cluster
from testkit.repos import bare_remote, git_repo
from testkit.services import PROCESS_DEFAULTS, DispatcherProcess
from worktrees import WorktreeManager, WorktreeSettings, remote

NODES = 3
POLL = 0.05
WAIT_TIMEOUT = 300.0
NEXT_TURN = "INSERT INTO tasks (project_id, session_id, input, agent) VALUES ($1, $2, 'READ x', 'fake') RETURNING id"


def quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 1),
        "p99": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
        "max": round(ordered[-1], 1),
    }


async def _session(pool: asyncpg.Pool, repo: Path, url: str | None, name: str) -> int:
    project = await pool.fetchval(
        "INSERT INTO projects (name, repo_path, remote_url) VALUES ($1, $2, $3) RETURNING id", name, str(repo), url
    )
    session: int = await pool.fetchval("INSERT INTO sessions (project_id) VALUES ($1) RETURNING id", project)
    return session


async def push_cost(pool: asyncpg.Pool, tmp: Path, turns: int, files: int) -> dict[str, Any]:
    checkout = git_repo(tmp / "checkout")
    url = bare_remote(checkout, tmp / "remote.git")
    local = git_repo(tmp / "local")
    manager = WorktreeManager(pool, WorktreeSettings(root=tmp / "worktrees", clones=tmp / "clones"), node_id="bench")
    pushes: list[float] = []
    original = remote.push_session

    def timed_push(*args: Any, **kwargs: Any) -> None:
        started = time.perf_counter()
        original(*args, **kwargs)
        pushes.append((time.perf_counter() - started) * 1000)

    remote.push_session = timed_push
    try:
        # Interleaved, so both see the same load of the machine.
        sessions = {
            "with_remote": await _session(pool, checkout, str(url), "remote"),
            "local_only": await _session(pool, local, None, "local"),
        }
        recorded: dict[str, list[float]] = {label: [] for label in sessions}
        landed: list[float] = []
        for turn in range(turns):
            for label, session in sessions.items():
                worktree = await manager.ensure(session)
                for n in range(files):
                    (worktree.path / f"file-{n:03}.txt").write_text(f"turn {turn} file {n}\n" * 20)
                started = time.perf_counter()
                await manager.record_turn(session)
                ended = time.perf_counter()
                recorded[label].append((ended - started) * 1000)
                # Until the snapshot is on the remote (before the other session's turn, whose
                # figures the push would otherwise slow down).
                await anyio.to_thread.run_sync(manager.pushes.wait, session)
                if label == "with_remote":
                    landed.append((time.perf_counter() - ended) * 1000)
    finally:
        remote.push_session = original

    return {
        "turns": turns,
        "files_changed_per_turn": files,
        # The push itself, in the background after the turn.
        "push_ms": quantiles(pushes),
        # From the turn's end until its snapshot is on the remote (what a node dying then loses).
        "on_remote_after_turn_ms": quantiles(landed),
        "record_turn_ms": {label: quantiles(values) for label, values in recorded.items()},
        # What the remote adds to a turn.
        "added_per_turn_ms": round(
            statistics.median(recorded["with_remote"]) - statistics.median(recorded["local_only"]), 1
        ),
        # One spawn of git, for scale: the push runs about half a dozen git processes.
        "git_spawn_ms": round(spawn_ms(), 1),
        "target_push_ms": 30,
    }


def spawn_ms(runs: int = 20) -> float:
    """Median time to run ``git --version``: how loaded the machine is, in git processes."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(["git", "--version"], capture_output=True, check=True)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def _wait(pool: asyncpg.Pool, query: str, *args: Any) -> None:
    with anyio.fail_after(WAIT_TIMEOUT):
        while True:
            if await pool.fetchval(query, *args):
                return
            await anyio.sleep(POLL)


async def failover(pool: asyncpg.Pool, url: str, tmp: Path, sessions: int, dead_after: float) -> dict[str, Any]:
    checkout = git_repo(tmp / "failover")
    remote_url = bare_remote(checkout, tmp / "failover.git")
    project = await pool.fetchval(
        "INSERT INTO projects (name, repo_path, remote_url) VALUES ('failover', $1, $2) RETURNING id",
        str(checkout),
        str(remote_url),
    )
    env = {
        "SWITCHYARD__AGENTS__FAKE__TRANSPORT": "acp",
        "SWITCHYARD__AGENTS__FAKE__COMMAND": json.dumps(fake_acp_agent_command()),
        "SWITCHYARD__NODE__DEAD_AFTER": str(dead_after),
    }
    nodes = [DispatcherProcess(url, None, env) for _ in range(NODES)]
    try:
        for node in nodes:
            await node.started()
        ids = []
        for n in range(sessions):
            session = await pool.fetchval("INSERT INTO sessions (project_id) VALUES ($1) RETURNING id", project)
            ids.append(
                await pool.fetchval(
                    "INSERT INTO tasks (project_id, session_id, input, agent) VALUES ($1, $2, $3, 'fake') RETURNING id",
                    project,
                    session,
                    f"WRITE f{n}.txt v{n}",
                )
            )
        await _wait(pool, "SELECT bool_and(state = 'completed') FROM tasks WHERE id = ANY($1)", ids)
        rows = await pool.fetch("SELECT session_id, node_id FROM session_worktrees WHERE project_id = $1", project)
        victim = next(node for node in nodes if node.worker_id == rows[0]["node_id"])
        moved = [r["session_id"] for r in rows if r["node_id"] == victim.worker_id]
        long_turns = [
            await pool.fetchval(
                "INSERT INTO tasks (project_id, session_id, input, agent, max_attempts)"
                " VALUES ($1, $2, 'SLEEP 120', 'fake', 1) RETURNING id",
                project,
                s,
            )
            for s in moved
        ]
        await _wait(pool, "SELECT bool_and(state = 'running') FROM tasks WHERE id = ANY($1)", long_turns)
        victim.kill()
        killed_at = await pool.fetchval("SELECT clock_timestamp()")
        nexts = [await pool.fetchval(NEXT_TURN, project, s) for s in moved]
        await _wait(pool, "SELECT bool_and(state = 'completed') FROM tasks WHERE id = ANY($1)", nexts)
        waits = await pool.fetch(
            """SELECT extract(epoch FROM a.started_at - $2)::float8 AS claimed_after, a.worker_id
                 FROM task_attempts a WHERE a.task_id = ANY($1) AND a.attempt = 1""",
            nexts,
            killed_at,
        )
        for node in nodes:
            if node is not victim:
                await node.terminate()
    finally:
        for node in nodes:
            node.close()
    lease = float(PROCESS_DEFAULTS["lease_seconds"])
    claimed = [r["claimed_after"] for r in waits]
    return {
        "nodes": NODES,
        "sessions_moved": len(moved),
        "dead_after_s": dead_after,
        "lease_s": lease,
        "bound_s": dead_after + lease + 5,
        "first_turn_elsewhere_s": {"first": round(min(claimed), 2), "last": round(max(claimed), 2)},
        "moved_to_victim": sum(1 for r in waits if r["worker_id"] == victim.worker_id),
    }


async def main(turns: int, files: int, sessions: int, dead_after: float, push_only: bool) -> dict[str, Any]:
    with temporary_cluster() as cluster, tempfile.TemporaryDirectory() as tmp:
        url = cluster.url("postgres")
        await migrate_url(url)
        pool = await create_pool(url, 8)
        try:
            result = {"push": await push_cost(pool, Path(tmp), turns, files)}
            if not push_only:
                result["failover"] = await failover(pool, url, Path(tmp), sessions, dead_after)
            return result
        finally:
            await pool.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--sessions", type=int, default=9)
    parser.add_argument("--dead-after", type=float, default=5.0)
    parser.add_argument("--push-only", action="store_true", help="measure only the push cost")
    args = parser.parse_args()
    print(json.dumps(anyio.run(main, args.turns, args.files, args.sessions, args.dead_after, args.push_only), indent=2))
