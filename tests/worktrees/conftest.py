"""Real git repositories for the worktree tests, and rows that point at them."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import asyncpg
import pytest

from orchestrator.review import ReviewService
from worktrees import WorktreeSettings

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
    "PATH": "/usr/local/bin:/usr/bin:/bin",
}

LINES = "".join(f"line {i}\n" for i in range(1, 21))
BINARY = bytes(range(256)) * 4


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True, check=True)
    return result.stdout.strip()


def make_repo(path: Path) -> Path:
    """A repository with one commit: text files, a binary file, and a .gitignore."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / "a.txt").write_text(LINES)
    (path / "keep.txt").write_text("keep\n")
    (path / "gone.txt").write_text("to be deleted\n")
    (path / "old_name.txt").write_text("".join(f"rename me {i}\n" for i in range(30)))
    (path / "image.bin").write_bytes(BINARY)
    (path / ".gitignore").write_text("*.log\nbuild/\n")
    (path / "src").mkdir()
    (path / "src" / "main.py").write_text("print('hi')\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "project")


@pytest.fixture
def settings(tmp_path: Path) -> WorktreeSettings:
    return WorktreeSettings(root=tmp_path / "worktrees")


async def add_session(conn: asyncpg.Connection, repo: Path) -> int:
    project = await conn.fetchval(
        """INSERT INTO projects (name, repo_path) VALUES ($1, $2)
           ON CONFLICT (repo_path) DO UPDATE SET name = projects.name
           RETURNING id""",
        f"p-{uuid.uuid4().hex[:8]}",
        str(repo),
    )
    session: int = await conn.fetchval("INSERT INTO sessions (project_id) VALUES ($1) RETURNING id", project)
    return session


async def start_turn(conn: asyncpg.Connection, session: int) -> int:
    """A running task of the session, as the dispatcher's claim leaves it."""
    task: int = await conn.fetchval(
        """INSERT INTO tasks (project_id, session_id, input, state, claim_token, lease_expires_at, started_at)
           SELECT project_id, id, 'turn', 'running', $2, now() + interval '30 s', now() FROM sessions WHERE id = $1
           RETURNING id""",
        session,
        uuid.uuid4(),
    )
    return task


async def end_turn(conn: asyncpg.Connection, task: int) -> None:
    await conn.execute("UPDATE tasks SET state = 'completed', ended_at = now() WHERE id = $1", task)


async def finished_turn(review: ReviewService, pool: asyncpg.Pool, session: int, files: dict[str, str]) -> int:
    """A finished turn that wrote ``files`` in the session's worktree; the id of its pending change."""
    async with pool.acquire() as conn:
        task = await start_turn(conn, session)
    worktree = await review.worktrees.ensure(session)
    for name, text in files.items():
        (worktree.path / name).write_text(text)
    change = await review.worktrees.record_turn(session, task_id=task, agent="fake")
    async with pool.acquire() as conn:
        await end_turn(conn, task)
    assert change is not None
    return change.id
