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


def inspect_remote(url: str) -> str:
    """The remote's default branch (what its HEAD points at); blocking (call in a thread)."""
    if not url or url.startswith("-"):
        raise InvalidProject(f"{url!r} is not a git remote")
    try:
        listing = str(git.Git().ls_remote("--symref", "--", url, "HEAD"))
    except git.GitCommandError as exc:
        raise InvalidProject(f"cannot reach the git remote {url}: {exc.stderr.strip()}") from None
    for line in listing.splitlines():
        if line.startswith("ref: refs/heads/"):
            return line.removeprefix("ref: refs/heads/").split("\t")[0]
    raise InvalidProject(f"the git remote {url} has no default branch (is it empty?)")


async def add_project(
    conn: asyncpg.Connection, path: Path | None, name: str | None = None, *, remote: str | None = None
) -> int:
    """A project from a local checkout, a git remote (each node clones it; worktrees.remote), or both."""
    if path is None and remote is None:
        raise InvalidProject("a project needs a checkout (PATH) or a git remote (--remote URL)")
    info = await anyio.to_thread.run_sync(inspect_repo, path) if path is not None else None
    branch = await anyio.to_thread.run_sync(inspect_remote, remote) if remote is not None else None
    if info is not None:
        name, branch = name or info.path.name, info.default_branch
    elif name is None:
        assert remote is not None
        name = remote.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git") or remote
    try:
        project_id: int = await conn.fetchval(q.ADD_PROJECT, name, str(info.path) if info else None, branch, remote)
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
