"""What the bubblewrap sandbox adds to starting an agent process (target: at most 20 ms).

Starts ``true`` directly and wrapped exactly as a one-shot agent is (``Sandbox.command`` with a
protected data directory, a worktree, a private HOME, the project's git directory and the
executable re-exposed), alternating, and reports the wall time from spawn to exit of each, and
the time to build the wrapped argv.

    .venv/bin/python bench/sandbox.py [--runs 200]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from backends.sandbox import Sandbox, probe
from testkit.repos import git_repo


def started(argv: list[str], cwd: Path) -> float:
    """Milliseconds from spawning ``argv`` to its exit."""
    begin = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True)
    return (time.perf_counter() - begin) * 1000


def stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p90_ms": round(ordered[int(len(ordered) * 0.9)], 2),
        "mean_ms": round(statistics.fmean(ordered), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    checked = probe("bwrap")
    if not checked.usable:
        raise SystemExit(checked.line)
    true = shutil.which("true") or "/bin/true"
    with tempfile.TemporaryDirectory(prefix="switchyard-bench-") as tmp:
        root = Path(tmp)
        data = root / "data"
        (data / "postgres").mkdir(parents=True)
        (data / "api-token").write_text("sy_secret\n")
        repo = git_repo(root / "project")
        worktree = data / "worktrees" / "1" / "1"
        worktree.mkdir(parents=True)
        home = root / "home"
        home.mkdir()
        sandbox = Sandbox(protected=(data,))
        direct_ms, wrapped_ms, build_ms = [], [], []
        for _ in range(args.runs):
            begin = time.perf_counter()
            wrapped = sandbox.command(
                [true],
                cwd=worktree,
                writable=[worktree, home],
                read_only=[Path(true), repo / ".git"],
                frozen=[worktree / ".git"],
            )
            build_ms.append((time.perf_counter() - begin) * 1000)
            direct_ms.append(started([true], worktree))
            wrapped_ms.append(started(wrapped, worktree))
    direct, sandboxed = stats(direct_ms), stats(wrapped_ms)
    print(
        json.dumps(
            {
                "benchmark": "sandbox_start_overhead",
                "bwrap": checked.line,
                "runs": args.runs,
                "direct": direct,
                "sandboxed": sandboxed,
                "overhead_p50_ms": round(sandboxed["p50_ms"] - direct["p50_ms"], 2),
                "overhead_mean_ms": round(sandboxed["mean_ms"] - direct["mean_ms"], 2),
                # Building the bwrap argv (path checks), done in a worker thread per start.
                "argv_build_p50_ms": round(statistics.median(build_ms), 3),
                "target_ms": 20,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
