from __future__ import annotations

import subprocess
from pathlib import Path

import asyncpg
import pytest

from orchestrator.errors import NotFound
from orchestrator.services.projects import InvalidProject, add_project, inspect_repo, resolve_project
from testkit.repos import bare_remote, git_repo

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


async def test_a_project_with_a_git_remote_alone_or_with_its_checkout(pool: asyncpg.Pool, tmp_path: Path) -> None:
    checkout = git_repo(tmp_path / "app")
    remote = bare_remote(checkout, tmp_path / "app.git")
    async with pool.acquire() as conn:
        only_remote = await add_project(conn, None, remote=str(remote))
        both = await add_project(conn, checkout, "app-local", remote=str(remote))
        rows = {r["id"]: r for r in await conn.fetch("SELECT * FROM projects")}
        assert (rows[only_remote]["name"], rows[only_remote]["repo_path"]) == ("app", None)
        assert rows[only_remote]["default_branch"] == "main" and rows[only_remote]["remote_url"] == str(remote)
        assert (rows[both]["repo_path"], rows[both]["remote_url"]) == (str(checkout), str(remote))
        with pytest.raises(InvalidProject, match="cannot reach the git remote"):
            await add_project(conn, None, "x", remote=str(tmp_path / "nowhere.git"))
        with pytest.raises(InvalidProject, match="is not a git remote"):
            await add_project(conn, None, "y", remote="--upload-pack=touch /tmp/pwned")
        with pytest.raises(InvalidProject, match=r"a checkout \(PATH\) or a git remote"):
            await add_project(conn, None, "z")
