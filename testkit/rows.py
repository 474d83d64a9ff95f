"""The rows tests and benchmarks start from, inserted the way an operator or SQL submitter does."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeAlias

import anyio
import asyncpg

from orchestrator.services import ReviewService
from worktrees import PendingChange, Worktree, WorktreeManager

Db: TypeAlias = asyncpg.Pool | asyncpg.Connection


async def add_project(db: Db, name: str | None = None, repo: Path | None = None, *, remote: str | None = None) -> int:
    """A project row; ``repo`` is a real checkout for turns that use worktrees (one project per
    checkout: a second call with the same ``repo`` returns the first project); ``remote`` its git
    remote (then ``repo`` may be left out: a project with only a remote)."""
    name = name or f"p-{uuid.uuid4().hex[:8]}"
    if remote is not None and repo is None:
        remote_only: int = await db.fetchval(
            "INSERT INTO projects (name, remote_url) VALUES ($1, $2) RETURNING id", name, remote
        )
        return remote_only
    project_id: int = await db.fetchval(
        """INSERT INTO projects (name, repo_path, remote_url) VALUES ($1, $2, $3)
           ON CONFLICT (repo_path) DO UPDATE SET name = projects.name
           RETURNING id""",
        name,
        str(repo or f"/srv/{name}"),
        remote,
    )
    return project_id


async def add_session(db: Db, project_id: int) -> int:
    session_id: int = await db.fetchval("INSERT INTO sessions (project_id) VALUES ($1) RETURNING id", project_id)
    return session_id


async def add_repo_session(db: Db, repo: Path) -> int:
    """A session of the project whose checkout is ``repo``."""
    return await add_session(db, await add_project(db, repo=repo))


async def add_task(db: Db, project_id: int | None, input_: str = "hi", **columns: Any) -> int:
    """INSERT a task the way an SQL submitter does; ``agent`` defaults to noop."""
    values: dict[str, Any] = {"project_id": project_id, "input": input_, "agent": "noop", **columns}
    names = ", ".join(values)
    params = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    task_id: int = await db.fetchval(f"INSERT INTO tasks ({names}) VALUES ({params}) RETURNING id", *values.values())  # noqa: S608 - column names from the caller's keywords
    return task_id


async def start_turn(conn: Db, session: int) -> int:
    """A running task of the session, as the dispatcher's claim leaves it."""
    task: int = await conn.fetchval(
        """INSERT INTO tasks (project_id, session_id, input, state, claim_token, lease_expires_at, started_at)
           SELECT project_id, id, 'turn', 'running', $2, now() + interval '30 s', now() FROM sessions WHERE id = $1
           RETURNING id""",
        session,
        uuid.uuid4(),
    )
    return task


async def end_turn(conn: Db, task: int) -> None:
    await conn.execute("UPDATE tasks SET state = 'completed', ended_at = now() WHERE id = $1", task)


async def worktree_turn(
    manager: WorktreeManager, pool: asyncpg.Pool, session: int, edit: Mapping[str, str | None]
) -> tuple[Worktree, PendingChange | None]:
    """One turn as the dispatcher runs it: claim, ensure, the agent edits (None deletes a file),
    record, finish; the worktree and the change it left pending. Returns once the snapshot is
    on the project's remote, if it has one (a node taking the session over finds it there)."""
    async with pool.acquire() as conn:
        task = await start_turn(conn, session)
    worktree = await manager.ensure(session)
    for name, text in edit.items():
        path = worktree.path / name
        if text is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    change = await manager.record_turn(session, task_id=task, agent="fake")
    async with pool.acquire() as conn:
        await end_turn(conn, task)
    await anyio.to_thread.run_sync(manager.pushes.wait, session)
    return worktree, change


async def finished_turn(review: ReviewService, pool: asyncpg.Pool, session: int, files: dict[str, str]) -> int:
    """A finished turn that wrote ``files`` in the session's worktree; the id of its pending change."""
    _, change = await worktree_turn(review.worktrees, pool, session, files)
    assert change is not None
    return change.id


async def make_idle(pool: Db, session: int) -> None:
    await pool.execute(
        """UPDATE session_worktrees SET last_used_at = now() - interval '2 days' WHERE session_id = $1;""", session
    )
    await pool.execute("UPDATE sessions SET last_active_at = now() - interval '2 days' WHERE id = $1", session)


FIRST_DELTA_MS = """
SELECT extract(epoch FROM e.created_at - t.created_at) * 1000 AS ms
  FROM tasks t JOIN session_events e ON e.session_id = t.session_id
 WHERE t.id = $1 AND e.type = 'delta' AND (e.payload->>'message_id')::bigint IN
       (SELECT id FROM messages WHERE task_id = t.id AND role = 'assistant')
 ORDER BY e.seq LIMIT 1
"""


async def first_delta_ms(db: Db, task_id: int) -> float:
    """Milliseconds from the task's INSERT to the first delta of its answer (the first-token figure)."""
    return float(await db.fetchval(FIRST_DELTA_MS, task_id))
