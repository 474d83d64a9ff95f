"""Pools that cannot starve each other, and a finalize whose snapshot runs under a deadline.

The dispatcher writes its turns (output, diff, end) through a pool of its own: a review service
(or a gateway) that holds every connection of its pool cannot push a finished turn's finalize
past its timeout into a second attempt.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import asyncpg
import pytest

from backends import TextDelta, Turn
from kernel import PoolExhausted, create_pool
from orchestrator.dispatch import Router
from orchestrator.services import ReviewService
from testkit.repos import sample_repo
from testkit.scripted_backend import ScriptedBackend
from tests.dispatching import running_dispatcher, wait_state
from worktrees import WorktreeSettings

pytestmark = pytest.mark.anyio


def edit(turn: Turn) -> None:
    assert turn.workdir is not None
    (turn.workdir / "new.txt").write_text("hello\n")


async def add_repo_project(pool: asyncpg.Pool, tmp_path: Path) -> int:
    repo = sample_repo(tmp_path / "project")
    project: int = await pool.fetchval(
        "INSERT INTO projects (name, repo_path) VALUES ('p', $1) RETURNING id", str(repo)
    )
    return project


async def test_a_starved_review_pool_does_not_reach_the_turns(db_url: str, pool: asyncpg.Pool, tmp_path: Path) -> None:
    project = await add_repo_project(pool, tmp_path)
    review_pool = await create_pool(db_url, 2, name="review", acquire_timeout=0.5)
    review = ReviewService(review_pool, WorktreeSettings(root=tmp_path / "worktrees"))
    editor = ScriptedBackend(events=[TextDelta("edited")], needs_worktree=True, work=edit)
    async with AsyncExitStack() as held:
        # Every connection of the review service's pool is busy (a flood of reviews, snapshots).
        for _ in range(review_pool.get_max_size()):
            await held.enter_async_context(review_pool.acquire())
        with pytest.raises(PoolExhausted, match="review pool"):
            await review.list_changes()
        async with running_dispatcher(
            db_url, Router(agents={"editor": lambda: editor}), worktrees=review.worktrees, finalize_timeout=5.0
        ):
            task_id = await add_task_row(pool, project)
            row = await wait_state(pool, task_id, "completed", "failed")
    await review_pool.close()
    assert (row["state"], row["attempt"]) == ("completed", 1), row["error"]
    change = await pool.fetchrow("SELECT task_id, status FROM pending_changes")
    assert (change["task_id"], change["status"]) == (task_id, "pending")


async def test_a_snapshot_past_its_deadline_fails_the_turn_once_as_diff_timeout(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    project = await add_repo_project(pool, tmp_path)
    review = ReviewService(pool, WorktreeSettings(root=tmp_path / "worktrees"))
    editor = ScriptedBackend(events=[TextDelta("edited")], needs_worktree=True, work=edit)
    async with running_dispatcher(
        db_url,
        Router(agents={"editor": lambda: editor}),
        worktrees=review.worktrees,
        finalize_timeout=10.0,
        # No git snapshot finishes this fast: it overruns every time.
        snapshot_timeout=0.001,
    ):
        task_id = await add_task_row(pool, project)
        row = await wait_state(pool, task_id, "completed", "failed")
    assert (row["state"], row["failure_reason"], row["attempt"]) == ("failed", "diff_timeout", 1)
    assert "dispatcher.snapshot_timeout" in row["error"]
    assert len(editor.turns) == 1  # recorded as what it was, not retried as a new attempt
    assert await pool.fetchval("SELECT count(*) FROM pending_changes") == 0


async def add_task_row(pool: asyncpg.Pool, project: int) -> int:
    task_id: int = await pool.fetchval(
        "INSERT INTO tasks (project_id, input, agent) VALUES ($1, 'add a file', 'editor') RETURNING id", project
    )
    return task_id
