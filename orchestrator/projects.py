"""Projects: git repositories that sessions work on."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import anyio
import asyncpg

from orchestrator.errors import NotFound, SwitchyardError

ADD_PROJECT = """
INSERT INTO projects (name, repo_path, default_branch) VALUES ($1, $2, $3)
RETURNING id
"""
LIST_PROJECTS = "SELECT id, name, repo_path, default_branch, created_at FROM projects ORDER BY id"
PROJECT_BY_REF = "SELECT id FROM projects WHERE id::text = $1 OR name = $1 ORDER BY id LIMIT 1"


class InvalidProject(SwitchyardError):
    pass


@dataclass(frozen=True)
class RepoInfo:
    path: Path
    default_branch: str


def inspect_repo(path: Path) -> RepoInfo:
    """The repository's top level and current branch; blocking (call in a thread)."""
    path = path.expanduser().resolve()
    if not path.is_dir():
        raise InvalidProject(f"{path} is not a directory")

    def git(*args: str) -> str:
        result = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise InvalidProject(f"{path}: {result.stderr.strip() or 'git failed'}")
        return result.stdout.strip()

    top = Path(git("rev-parse", "--show-toplevel"))
    git("rev-parse", "--verify", "HEAD^{commit}")  # sessions branch from a commit
    return RepoInfo(top, git("rev-parse", "--abbrev-ref", "HEAD"))


async def add_project(conn: asyncpg.Connection, path: Path, name: str | None = None) -> int:
    info = await anyio.to_thread.run_sync(inspect_repo, path)
    try:
        project_id: int = await conn.fetchval(ADD_PROJECT, name or info.path.name, str(info.path), info.default_branch)
    except asyncpg.UniqueViolationError as exc:
        raise InvalidProject(f"a project with this name or path exists already ({exc.detail})") from None
    return project_id


async def resolve_project(conn: asyncpg.Connection | asyncpg.Pool, ref: str) -> int:
    """A project by id or name."""
    project_id: int | None = await conn.fetchval(PROJECT_BY_REF, ref)
    if project_id is None:
        raise NotFound(f"no project {ref!r}")
    return project_id
