"""The review service: one path for the CLI and the WebSocket gateway, announcing every status change."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from kernel.eventlog import read_events
from orchestrator.services.review import InvalidReviewAction, ReviewService
from testkit import SWITCHYARD
from testkit.rows import add_repo_session, finished_turn, start_turn
from worktrees import TurnRunning, WorktreeSettings

pytestmark = pytest.mark.anyio


async def frames(pool: asyncpg.Pool, session: int) -> list[tuple[Any, ...]]:
    events = await read_events(pool, session, 0)
    assert all(e.type == "pending_change" for e in events)
    return [(e.payload["change_id"], e.payload["status"]) for e in events]


async def test_each_status_change_is_a_pending_change_frame(
    pool: asyncpg.Pool, repo: Path, worktree_settings: WorktreeSettings
) -> None:
    review = ReviewService(pool, worktree_settings)
    session = await add_repo_session(pool, repo)
    first = await finished_turn(review, pool, session, {"x.txt": "x\n"})
    second = await finished_turn(review, pool, session, {"y.txt": "y\n"})
    done = await review.accept(second, files=["x.txt"], by="alice")
    assert done.remainder is not None
    await review.reject(done.remainder.id, by="alice")

    assert await frames(pool, session) == [
        (first, "pending"),
        (first, "superseded"),
        (second, "pending"),
        (second, "accepted"),
        (done.remainder.id, "pending"),
        (done.remainder.id, "rejected"),
    ]
    [*_, last] = await read_events(pool, session, 0)
    assert last.payload == {
        "change_id": done.remainder.id,
        "task_id": done.remainder.task_id,
        "status": "rejected",
        "base_commit": done.remainder.base_commit,
        "files": [
            {"path": "y.txt", "status": "added", "additions": 1, "deletions": 0, "binary": False, "truncated": False}
        ],
        "truncated": False,
        "supersedes": second,
    }


async def test_list_diff_and_the_review_frame_share_the_service(
    pool: asyncpg.Pool, repo: Path, worktree_settings: WorktreeSettings
) -> None:
    review = ReviewService(pool, worktree_settings)
    session = await add_repo_session(pool, repo)
    change = await finished_turn(review, pool, session, {"x.txt": "x\n"})

    [listed] = await review.list_changes(session_id=session, status="pending")
    assert listed.id == change and listed.files[0]["path"] == "x.txt"
    assert "+x\n" in await review.get_diff(change)
    with pytest.raises(InvalidReviewAction, match="accept, reject"):
        await review.review(change, "merge")
    done = await review.review(change, "accept", by="ws:token-1")
    assert done.change.status == "accepted" and done.change.resolved_by == "ws:token-1"
    assert (repo / "x.txt").read_text() == "x\n"


async def test_a_refused_review_announces_nothing(
    pool: asyncpg.Pool, repo: Path, worktree_settings: WorktreeSettings
) -> None:
    review = ReviewService(pool, worktree_settings)
    session = await add_repo_session(pool, repo)
    change = await finished_turn(review, pool, session, {"x.txt": "x\n"})
    async with pool.acquire() as conn:
        await start_turn(conn, session)
    with pytest.raises(TurnRunning):
        await review.reject(change)
    assert await frames(pool, session) == [(change, "pending")]


def switchyard(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD")}
    return subprocess.run(
        [*SWITCHYARD, "--config", str(config), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_cli_review_commands(
    pool: asyncpg.Pool, db_url: str, repo: Path, worktree_settings: WorktreeSettings, tmp_path: Path
) -> None:
    config = tmp_path / "switchyard.toml"
    config.write_text(f'[database]\nurl = "{db_url}"\n[worktrees]\nroot = "{worktree_settings.root}"\n')
    review = ReviewService(pool, worktree_settings)
    session = await add_repo_session(pool, repo)
    change = await finished_turn(review, pool, session, {"x.txt": "x\n", "a.txt": "agent\n"})

    listed = await anyio.to_thread.run_sync(switchyard, config, "changes", "--json")
    assert [c["change_id"] for c in json.loads(listed.stdout)] == [change]
    shown = await anyio.to_thread.run_sync(switchyard, config, "diff", str(change))
    assert "+x\n" in shown.stdout and "+agent\n" in shown.stdout

    (repo / "a.txt").write_text("developer\n")
    conflict = await anyio.to_thread.run_sync(switchyard, config, "accept", str(change))
    assert conflict.returncode == 1 and "conflict, the project was not changed" in conflict.stderr
    partial = await anyio.to_thread.run_sync(switchyard, config, "accept", str(change), "--file", "x.txt")
    assert partial.returncode == 0, partial.stderr
    assert f"change {change} accepted: x.txt" in partial.stdout
    assert (repo / "x.txt").read_text() == "x\n" and (repo / "a.txt").read_text() == "developer\n"

    again = await anyio.to_thread.run_sync(switchyard, config, "accept", str(change))
    assert again.returncode == 1
    assert again.stderr.strip() == f"switchyard: error: change {change} is accepted, not pending"
