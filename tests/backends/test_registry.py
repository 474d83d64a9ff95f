"""Agent presets, [agents.*] overrides, the agent environment and the version probe."""

from __future__ import annotations

import sys

import pytest

from backends.errors import AgentConfigError, AgentNotFoundError
from backends.registry import (
    PRESETS,
    AgentConfig,
    AgentSpec,
    agent_env,
    build_specs,
    executable,
    probe,
    probe_sync,
)


def test_presets_cover_both_working_opencode_tracks_and_documented_agents() -> None:
    assert PRESETS["opencode-acp"].transport == "acp"
    assert PRESETS["opencode-acp"].command == ("opencode", "acp")
    assert PRESETS["opencode-run"].transport == "pty"
    assert PRESETS["opencode-run"].model_flag == "--model"
    assert PRESETS["opencode"].transport == "opencode_server"
    assert {"gemini", "claude-agent-acp", "codex-acp", "goose", "claude", "codex", "aider"} <= PRESETS.keys()
    assert PRESETS["aider"].prompt_flag == "--message"


def test_config_changes_a_preset_key_by_key_and_adds_agents() -> None:
    specs = build_specs(
        {
            "opencode-run": AgentConfig(timeout=60.0, model_flag=""),
            "mine": AgentConfig(transport="acp", command=("my-agent", "--acp"), env={"A": "1"}),
            "aider": AgentConfig(enabled=False),
        }
    )
    assert specs["opencode-run"].timeout == 60.0
    assert specs["opencode-run"].model_flag is None
    assert specs["opencode-run"].command == ("opencode", "run")
    assert specs["mine"] == AgentSpec("mine", "acp", ("my-agent", "--acp"), env={"A": "1"})
    assert "aider" not in specs


def test_incomplete_or_invalid_agents_are_refused_naming_the_key() -> None:
    with pytest.raises(AgentConfigError) as missing:
        build_specs({"new": AgentConfig(transport="acp")})
    assert missing.value.key == "agents.new.command"
    with pytest.raises(AgentConfigError) as bad:
        build_specs({"opencode-acp": AgentConfig(transport="telnet")})
    assert bad.value.key == "agents.opencode-acp.transport"
    with pytest.raises(AgentConfigError):
        AgentSpec("x", "pty", ())
    with pytest.raises(AgentConfigError):
        AgentSpec("x", "pty", ("run",), timeout=0)


def test_the_agent_environment_passes_only_what_it_is_told() -> None:
    parent = {"PATH": "/bin", "HOME": "/home/me", "DATABASE_URL": "postgres://secret", "MY_KEY": "k", "LANG": "C"}
    spec = AgentSpec("x", "acp", ("x",), env={"EXTRA": "1"}, pass_env=("MY_KEY", "ABSENT"))
    assert agent_env(spec, parent) == {"PATH": "/bin", "HOME": "/home/me", "LANG": "C", "MY_KEY": "k", "EXTRA": "1"}
    assert agent_env(spec, parent, base={"HOME": "/sandbox"}) == {"HOME": "/sandbox", "MY_KEY": "k", "EXTRA": "1"}


def test_executable_finds_opencode_and_refuses_missing_commands() -> None:
    assert executable(PRESETS["opencode-acp"]).name.startswith("opencode")
    with pytest.raises(AgentNotFoundError, match="not an executable"):
        executable(AgentSpec("ghost", "pty", ("no-such-agent-binary",)))


@pytest.mark.anyio
async def test_probe_reports_version_of_the_pinned_opencode() -> None:
    result = await probe(PRESETS["opencode-run"])
    assert result.available
    assert result.version == "1.18.33"


@pytest.mark.anyio
async def test_probe_of_a_missing_agent_says_why() -> None:
    result = await probe(AgentSpec("ghost", "acp", ("no-such-agent-binary", "acp")))
    assert not result.available
    assert result.version is None
    assert result.detail is not None and "no-such-agent-binary" in result.detail


def test_probe_of_a_hanging_agent_is_bounded_and_leaves_nothing() -> None:
    hang = AgentSpec("hang", "pty", (sys.executable,), version_args=("-c", "import time; time.sleep(60)"))
    result = probe_sync(hang, timeout=0.5)
    assert result.available
    assert result.version is None
    assert result.detail is not None and "no version" in result.detail


def test_probe_of_a_failing_version_query() -> None:
    failing = AgentSpec("fails", "pty", (sys.executable,), version_args=("-c", "raise SystemExit(2)"))
    result = probe_sync(failing)
    assert result.available
    assert result.detail == "version query exited with code 2"
