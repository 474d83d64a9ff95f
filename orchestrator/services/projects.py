"""Projects: git repositories that sessions work on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anyio
import asyncpg
import git

from orchestrator.errors import InvalidProject, NotFound
from orchestrator.services import queries as q


@dataclass(frozen=True)
class RepoInfo:
    path: Path
    default_branch: str


def inspect_repo(path: Path) -> RepoInfo:
    """The repository's top level and current branch; blocking (call in a thread)."""
    path = path.expanduser().resolve()
    if not path.is_dir():
        raise InvalidProject(f"{path} is not a directory")
    try:
        repo = git.Repo(path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise InvalidProject(f"{path} is not inside a git repository") from None
    with repo:
        if repo.bare or repo.working_tree_dir is None:
            raise InvalidProject(f"{path} is a bare repository; a project needs a checkout")
        if not repo.head.is_valid():
            raise InvalidProject(f"{path} has no commit yet; sessions branch from a commit")
        branch = "HEAD" if repo.head.is_detached else repo.active_branch.name
        return RepoInfo(Path(repo.working_tree_dir), branch)


async def add_project(conn: asyncpg.Connection, path: Path, name: str | None = None) -> int:
    info = await anyio.to_thread.run_sync(inspect_repo, path)
    try:
        project_id: int = await conn.fetchval(
            q.ADD_PROJECT, name or info.path.name, str(info.path), info.default_branch
        )
    except asyncpg.UniqueViolationError as exc:
        raise InvalidProject(f"a project with this name or path exists already ({exc.detail})") from None
    return project_id


async def list_projects(conn: asyncpg.Connection | asyncpg.Pool) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(q.LIST_PROJECTS)
    return rows


async def resolve_project(conn: asyncpg.Connection | asyncpg.Pool, ref: str) -> int:
    """A project by id or name."""
    project_id: int | None = await conn.fetchval(q.PROJECT_BY_REF, ref)
    if project_id is None:
        raise NotFound(f"no project {ref!r}")
    return project_id
