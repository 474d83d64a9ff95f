"""External agents: configuration, routing, the available_agents mirror and `switchyard agents`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from backends.acp import AcpBackend
from backends.commands import CommandRule
from backends.pty import PtyBackend
from backends.registry import AgentSpec
from kernel.errors import ConfigError
from orchestrator.app.config import load_config
from orchestrator.app.wiring import build_router
from orchestrator.errors import TaskRejected
from orchestrator.services.agents import list_available_agents, sync_available_agents
from testkit import SWITCHYARD

CONFIG = f"""
[agents.opencode-run]
timeout = 60.0

[agents.scripted]
transport = "pty"
command = ["{sys.executable}", "-c", "print('hi')"]
version_args = ["--version"]

[permissions]
edit = "ask"

[permissions.commands.pytest]
args = "any"
deny_options = ["-p"]

[permissions.commands.make.subcommands.test]
args = "any"
"""


def write_config(tmp_path: Path, text: str = CONFIG) -> Path:
    path = tmp_path / "switchyard.toml"
    path.write_text(text)
    return path


def test_agents_and_permissions_come_from_configuration(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path), environ={"SWITCHYARD__AGENTS__SCRIPTED__TIMEOUT": "5"})
    specs = config.agent_specs()
    assert specs["opencode-run"].timeout == 60.0
    assert specs["opencode-run"].command == ("opencode", "run")
    assert specs["scripted"].transport == "pty"
    assert specs["scripted"].timeout == 5.0
    assert config.permissions.commands["pytest"] == CommandRule(args="any", deny_options=("-p",))
    assert config.permissions.commands["make"].subcommands["test"].args == "any"
    assert {"git", "ls", "pytest", "make"} <= config.permissions.rules.keys()
    assert config.permissions.edit == "ask"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[agents.half]\ntransport = "acp"\n', "agents.half.command"),
        ('[agents.x]\ntransport = "ftp"\ncommand = ["x"]\n', "agents.x.transport"),
        ("[agents.x]\ncommand = []\ntransport = 'pty'\n", "agents.x.command"),
        ('[agents.opencode-acp]\nflavour = "sweet"\n', "agents.opencode-acp.flavour"),
        ('[permissions]\nedit = "maybe"\n', "permissions"),
        ('[permissions]\nexecute_allow = ["pytest"]\n', "permissions"),
        ('[permissions.commands.pytest]\nargs = "all"\n', "permissions.commands.pytest"),
        ('[permissions.commands.pytest]\noptions = ["p"]\n', "permissions.commands.pytest"),
        (
            '[permissions.commands.make.subcommands.test]\nargz = "any"\n',
            "permissions.commands.make.subcommands.test.argz",
        ),
    ],
)
def test_bad_agent_configuration_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, text), environ={})
    assert caught.value.key == key


def test_the_old_execute_allow_is_refused_with_the_new_form(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, '[permissions]\nexecute_allow = ["pytest"]\n'), environ={})
    assert '[permissions.commands.pytest] args = "any"' in str(caught.value)


def test_agents_are_routed_by_transport(tmp_path: Path) -> None:
    router = build_router(load_config(write_config(tmp_path), environ={}))
    acp = router.route("opencode-acp")
    pty = router.route("scripted")
    assert isinstance(acp, AcpBackend) and acp.policy.edit == "ask"
    assert isinstance(pty, PtyBackend) and pty.spec.name == "scripted"
    assert isinstance(router.route("claude"), PtyBackend)
    with pytest.raises(TaskRejected) as unknown:
        router.route("no-such-agent")
    assert unknown.value.reason == "unknown_agent"


@pytest.mark.anyio
async def test_available_agents_mirrors_the_registry(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        present = AgentSpec("python", "pty", (sys.executable,))
        ghost = AgentSpec("ghost", "acp", ("no-such-agent-binary", "--acp"))
        await sync_available_agents(conn, {"python": present, "ghost": ghost})
        rows = {r["name"]: r for r in await list_available_agents(conn)}
        assert rows.keys() == {"python", "ghost"}
        assert rows["python"]["available"] is True
        assert rows["python"]["version"].startswith("Python 3.")
        assert rows["python"]["transport"] == "pty"
        assert rows["ghost"]["available"] is False
        assert rows["ghost"]["command"] == ["no-such-agent-binary", "--acp"]
        assert "no-such-agent-binary" in rows["ghost"]["detail"]
        # An agent no longer configured disappears; the rest is refreshed.
        await sync_available_agents(conn, {"python": present})
        assert [r["name"] for r in await list_available_agents(conn)] == ["python"]
    finally:
        await conn.close()


def test_switchyard_agents_lists_presets_and_configured_agents(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD")}
    env["SWITCHYARD_CONFIG"] = str(write_config(tmp_path))
    result = subprocess.run(
        [*SWITCHYARD, "agents", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    agents = {a["name"]: a for a in json.loads(result.stdout)}
    assert agents["opencode-acp"]["available"] is True
    assert agents["opencode-acp"]["version"] == "1.18.33"
    assert agents["scripted"]["transport"] == "pty"
    assert agents["scripted"]["version"].startswith("Python 3.")
    assert agents["goose"]["transport"] == "acp"
