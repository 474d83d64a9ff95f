"""``switchyard pool``: the warm opencode servers of running pools, read from their status files."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import asyncpg
import pytest

from backends.opencode_env import OpencodeSettings
from backends.opencode_pool import POOL_DIR, OpencodePool, OpencodePoolSettings, ProjectPlace
from orchestrator.app.cli import CliContext, build_parser
from orchestrator.app.config import Config
from testkit.rows import add_project
from worktrees import SpareWorktrees, WorktreeSettings, read_spare_status

pytestmark = pytest.mark.anyio


async def pool_command(data_dir: Path, *flags: str) -> int:
    args = build_parser().parse_args(["pool", *flags])
    code: int = await args.handler(CliContext(Config(data_dir=data_dir)), args)
    return code


async def test_pool_lists_running_servers_with_sessions_age_and_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await pool_command(tmp_path) == 0
    assert "no opencode server is running" in capsys.readouterr().out
    opencode = OpencodeSettings(base_url="http://127.0.0.1:9/v1", models=("fake-model",))
    async with OpencodePool(OpencodePoolSettings(servers=1), opencode, tmp_path / POOL_DIR) as pool:
        async with pool.lease(ProjectPlace(3, tmp_path), 7, str(tmp_path)):
            await pool.check()
        [server] = pool.servers
        assert await pool_command(tmp_path) == 0
        table = capsys.readouterr().out
        assert server.key in table and str(server.pid) in table and "ready" in table
        assert await pool_command(tmp_path, "--json") == 0
        listing = json.loads(capsys.readouterr().out)
        [row] = listing["servers"]
        assert (row["key"], row["project_id"], row["sessions"], row["state"]) == (server.key, 3, [7], "ready")
        assert row["rss_mb"] > 0 and row["age_seconds"] >= 0
        assert (row["instances"], row["spares"]) == (1, 0)
        assert listing["spare_worktrees"] == []
    assert await pool_command(tmp_path) == 0
    assert "no opencode server is running" in capsys.readouterr().out


async def test_pool_lists_the_spare_worktrees(
    pool: asyncpg.Pool, repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = await add_project(pool, repo=repo)
    settings = WorktreeSettings(root=tmp_path / "worktrees")
    async with SpareWorktrees(pool, settings, status_dir=tmp_path / POOL_DIR) as spares:
        spares.want(project, repo)
        with anyio.fail_after(30):
            while not any(s["spares"] for s in read_spare_status(tmp_path / POOL_DIR)):
                await anyio.sleep(0.05)
        (spare,) = spares.ready(project)
        assert await pool_command(tmp_path) == 0
        table = capsys.readouterr().out
        assert "no opencode server is running" in table
        assert "spare worktrees (1):" in table and str(spare.path) in table
        assert await pool_command(tmp_path, "--json") == 0
        [row] = json.loads(capsys.readouterr().out)["spare_worktrees"]
        assert (row["project_id"], row["path"], row["base"], row["warmed"]) == (
            project,
            str(spare.path),
            spare.base,
            False,  # no warm pool: nothing was loaded for it
        )
    assert await pool_command(tmp_path, "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"servers": [], "spare_worktrees": []}
