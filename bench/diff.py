"""Benchmark: the per-turn diff, the live diff while a turn runs, and the interdiff.

Prints JSON: for each (repository files, changed files) the median, min and max milliseconds of
``record_turn``'s git work (worktrees.git.snapshot + worktrees.diff.compute). Half of the
changed files are edits of tracked files, half are new untracked files.
Target (issue 5): <= 300 ms for 100 changed files in 20,000, growing with the changed files.

``live``: with 100 files changed so far in the 20,000-file repository, the cost of one update of
the live diff after a file event (worktrees.live.LiveIndex.update of the file the event names:
check-ignore if it is new, update-index, diff-index --cached against the base). ``interdiff``: the diff
between two snapshots that differ in 100 files (worktrees.diff.compute of snapshot N and N+1).
Targets (issue 14): <= 50 ms per live update, <= 150 ms per interdiff.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from worktrees import git
from worktrees.diff import Caps, compute
from worktrees.live import LiveIndex
from worktrees.settings import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_TOTAL_BYTES

REPO_SIZES = (1_000, 20_000)
CHANGED = (1, 100, 1_000)
RUNS = 7
CAPS = Caps(DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_TOTAL_BYTES)
ENV = {"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}


def file_path(root: Path, i: int) -> Path:
    return root / f"pkg{i % 50}" / f"mod{i % 7}" / f"file{i}.py"


def sample_repo(root: Path, files: int) -> Path:
    repo = root / f"repo{files}"
    for i in range(files):
        path = file_path(repo, i)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"def f{i}_{n}():\n    return {n}\n" for n in range(20)))
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "init"], cwd=repo, check=True, env={**ENV, "PATH": "/usr/bin:/bin"})
    return repo


def measure(repo: Path, worktree: Path, base: str, changed: int) -> dict[str, float]:
    for i in range(changed):
        if i % 2 == 0:
            with file_path(worktree, i).open("a") as fh:
                fh.write("# edited by the agent\n")
        else:
            (worktree / f"new{i}.py").write_text(f"NEW = {i}\n")
    samples = []
    for _ in range(RUNS):
        start = time.perf_counter()
        snapshot = git.snapshot(git.trusted_checkout(repo, worktree), base, "bench")
        d = compute(repo, base, snapshot, CAPS)
        samples.append((time.perf_counter() - start) * 1000)
        assert len(d.files) == changed, (len(d.files), changed)
    git.run(worktree, ["checkout", "--", "."])
    git.run(worktree, ["clean", "-q", "-f"])
    return summary(samples)


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(samples), 1),
        "min_ms": round(min(samples), 1),
        "max_ms": round(max(samples), 1),
    }


def edit(worktree: Path, changed: int, marker: str) -> list[str]:
    """Change ``changed`` tracked files of the worktree; their paths."""
    paths = []
    for i in range(changed):
        path = file_path(worktree, i)
        with path.open("a") as fh:
            fh.write(f"# {marker}\n")
        paths.append(str(path.relative_to(worktree)))
    return paths


def measure_live(repo: Path, worktree: Path, base: str, changed: int) -> dict[str, float]:
    """One live update after a file event, with ``changed`` files changed so far."""
    edit(worktree, changed, "changed so far")
    checkout = git.trusted_checkout(repo, worktree)
    samples = []
    with LiveIndex(repo, checkout.work_tree, checkout.git_dir, base) as index:
        index.scan()
        for run in range(RUNS):
            event = file_path(worktree, changed + run)
            with event.open("a") as fh:
                fh.write("# the event\n")
            start = time.perf_counter()
            live = index.update({str(event.relative_to(worktree))})
            samples.append((time.perf_counter() - start) * 1000)
            assert len(live.files) == changed + run + 1, len(live.files)
    git.run(worktree, ["checkout", "--", "."])
    return summary(samples)


def measure_interdiff(repo: Path, worktree: Path, base: str, changed: int) -> dict[str, float]:
    """The diff between two snapshots of the session that differ in ``changed`` files."""
    edit(worktree, changed, "turn one")
    checkout = git.trusted_checkout(repo, worktree)
    first = git.snapshot(checkout, base, "bench: change N")
    edit(worktree, changed, "turn two")
    second = git.snapshot(checkout, base, "bench: change N+1")
    samples = []
    for _ in range(RUNS):
        start = time.perf_counter()
        d = compute(repo, first, second, CAPS)
        samples.append((time.perf_counter() - start) * 1000)
        assert len(d.files) == changed, len(d.files)
    git.run(worktree, ["checkout", "--", "."])
    return summary(samples)


def main() -> None:
    results = []
    review: dict[str, dict[str, float | int]] = {}
    with tempfile.TemporaryDirectory(prefix="switchyard-bench-") as tmp:
        for size in REPO_SIZES:
            repo = sample_repo(Path(tmp), size)
            base = git.head_commit(repo)
            worktree = Path(tmp) / f"wt{size}"
            git.add_worktree(repo, worktree, "switchyard/bench", base)
            for changed in CHANGED:
                results.append({"repo_files": size, "changed_files": changed, **measure(repo, worktree, base, changed)})
            if size == max(REPO_SIZES):
                shape = {"repo_files": size, "changed_files": 100}
                review["live_update"] = {**shape, **measure_live(repo, worktree, base, 100), "target_ms": 50}
                review["interdiff"] = {**shape, **measure_interdiff(repo, worktree, base, 100), "target_ms": 150}
    report = {"benchmark": "worktree_diff", "runs": RUNS, "results": results, "review": review}
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
