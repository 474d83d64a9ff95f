"""``switchyard pool``: the warm opencode servers of running pools, read from their status files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backends.opencode_env import OpencodeSettings
from backends.opencode_pool import POOL_DIR, OpencodePool, OpencodePoolSettings, ProjectPlace
from orchestrator.app.cli import CliContext, build_parser
from orchestrator.app.config import Config

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
        [row] = json.loads(capsys.readouterr().out)
        assert (row["key"], row["project_id"], row["sessions"], row["state"]) == (server.key, 3, [7], "ready")
        assert row["rss_mb"] > 0 and row["age_seconds"] >= 0
    assert await pool_command(tmp_path) == 0
    assert "no opencode server is running" in capsys.readouterr().out
