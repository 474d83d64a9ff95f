from __future__ import annotations

import subprocess
from pathlib import Path

import asyncpg
import pytest

from orchestrator.errors import NotFound
from orchestrator.services.projects import InvalidProject, add_project, inspect_repo, resolve_project
from testkit.repos import git_repo

pytestmark = pytest.mark.anyio


def test_inspect_finds_the_top_level_and_branch(tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "repo")
    (repo / "sub").mkdir()
    info = inspect_repo(repo / "sub")
    assert info.path == repo.resolve()
    assert info.default_branch == "main"


@pytest.mark.parametrize("kind", ["missing", "plain directory", "no commit"])
def test_what_cannot_be_a_project(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "x"
    if kind != "missing":
        path.mkdir()
    if kind == "no commit":
        subprocess.run(["git", "init", "-q", str(path)], check=True)
    with pytest.raises(InvalidProject):
        inspect_repo(path)


async def test_add_and_resolve_by_id_or_name(pool: asyncpg.Pool, tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "demo")
    async with pool.acquire() as conn:
        project_id = await add_project(conn, repo)
        assert await resolve_project(conn, "demo") == project_id
        assert await resolve_project(conn, str(project_id)) == project_id
        with pytest.raises(InvalidProject, match="exists already"):
            await add_project(conn, repo, name="again")
        with pytest.raises(NotFound):
            await resolve_project(conn, "nope")
