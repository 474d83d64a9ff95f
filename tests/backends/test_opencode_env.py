"""The offline opencode environment, checked against the real pinned binary and the fake model."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from backends.errors import OpencodeNotFoundError
from backends.opencode_env import (
    OFFLINE_FLAGS,
    PINNED_BINARY,
    OpencodeSettings,
    find_opencode,
    opencode_config,
    opencode_env,
    permission_rules,
    project_root,
)
from backends.warmup import WARMUP_MODEL, WARMUP_PROVIDER, warmup_model_ref
from testkit.fake_model import FakeModel
from testkit.repos import git_repo

RUN_TIMEOUT = 120


def opencode_run(fm: FakeModel, repo: Path, sandbox: Path, prompt: str) -> subprocess.CompletedProcess[str]:
    settings = OpencodeSettings(base_url=fm.base_url, models=("fake-model",), api_key_env="FAKE_MODEL_KEY")
    env = opencode_env(settings, sandbox, base_env={**os.environ, "FAKE_MODEL_KEY": "sk-test-123"})
    return subprocess.run(
        [str(find_opencode()), "run", "--model", settings.model_ref(), prompt],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )


def test_opencode_run_writes_a_file_through_the_fake_model(tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "repo")
    sandbox = tmp_path / "sandbox"
    with FakeModel(models=("fake-model",)) as fm:
        result = opencode_run(fm, repo, sandbox, "WRITE_FILE docs/out.txt TOKEN-7f3a")
        requests = fm.chat_requests

    assert result.returncode == 0, result.stderr
    assert (repo / "docs" / "out.txt").read_text() == "TOKEN-7f3a\n"
    # write tool call, then the answer to its result
    assert [r.last_role for r in requests] == ["user", "tool"]
    first = requests[0]
    assert first.body["model"] == "fake-model"
    assert first.headers["authorization"] == "Bearer sk-test-123"
    assert "write" in first.tool_names
    assert "question" not in first.tool_names
    assert first.working_directory == str(repo)
    # opencode kept its state in the sandbox
    assert (sandbox / "data" / "opencode" / "opencode.db").exists()


def test_opencode_may_not_write_outside_its_directory(tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "repo")
    with FakeModel(models=("fake-model",)) as fm:
        opencode_run(fm, repo, tmp_path / "sandbox", "WRITE_FILE ../escaped.txt TOKEN-9")
        requests = fm.chat_requests

    assert not (tmp_path / "escaped.txt").exists()
    assert requests[-1].last_role == "tool"
    assert "prevents you from using this specific tool call" in requests[-1].messages[-1]["content"]


def test_a_repositorys_own_opencode_config_is_ignored(tmp_path: Path) -> None:
    # A repository under review could otherwise add plugins, MCP servers or instructions.
    repo = git_repo(tmp_path / "repo")
    (repo / "INJECTED.md").write_text("MARKER-from-the-repository-config\n")
    (repo / "opencode.json").write_text('{"instructions": ["INJECTED.md"]}')
    with FakeModel(models=("fake-model",)) as fm:
        result = opencode_run(fm, repo, tmp_path / "sandbox", "hello")
        requests = fm.chat_requests
    assert result.returncode == 0, result.stderr
    assert requests
    assert all("MARKER-from-the-repository-config" not in r.system_text for r in requests)


def test_env_isolates_home_and_xdg_and_drops_other_variables(tmp_path: Path) -> None:
    base = {"PATH": "/usr/bin", "LANG": "C.UTF-8", "DATABASE_URL": "postgres://secret", "MY_KEY": "k"}
    env = opencode_env(OpencodeSettings(api_key_env="MY_KEY"), tmp_path / "sb", base_env=base)

    root = (tmp_path / "sb").resolve()
    for var in ("HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
        assert Path(env[var]).parent == root
    assert len({env[v] for v in ("HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME")}) == 3
    assert OFFLINE_FLAGS.items() <= env.items()
    assert env["PATH"] == "/usr/bin"
    assert env["MY_KEY"] == "k"
    assert "DATABASE_URL" not in env
    assert json.loads(env["OPENCODE_CONFIG_CONTENT"]) == opencode_config(OpencodeSettings(api_key_env="MY_KEY"))


def test_config_names_one_provider_and_every_model() -> None:
    settings = OpencodeSettings(
        base_url="http://127.0.0.1:9/v1",
        models=("big", "other"),
        small_model="tiny",
        provider_id="lab",
        permission={"bash": "ask", "edit": "allow"},
    )
    config = opencode_config(settings)

    assert config["enabled_providers"] == ["lab"]
    assert config["autoupdate"] is False
    assert config["share"] == "disabled"
    assert config["model"] == "lab/big"
    assert config["small_model"] == "lab/tiny"
    assert config["permission"] == {"bash": "ask", "edit": "allow", "external_directory": "deny"}
    assert config["tools"] == {"question": False}
    assert config["snapshot"] is False  # Switchyard snapshots worktrees itself
    provider = config["provider"]["lab"]
    assert provider["npm"] == "@ai-sdk/openai-compatible"
    assert provider["options"] == {"baseURL": "http://127.0.0.1:9/v1"}  # no api_key_env: no key
    assert list(provider["models"]) == ["big", "other", "tiny"]
    assert settings.model_ref("other") == "lab/other"


def test_permission_rules_put_the_catch_all_first_and_confinement_last() -> None:
    assert permission_rules("allow") == {"*": "allow", "external_directory": "deny"}
    rules = permission_rules({"external_directory": {"/shared/*": "allow"}, "bash": "ask", "*": "allow"})
    assert list(rules.items()) == [
        ("*", "allow"),
        ("bash", "ask"),
        ("external_directory", {"/shared/*": "allow"}),
    ]


def test_settings_need_a_model() -> None:
    with pytest.raises(ValueError, match="at least one model"):
        OpencodeSettings(models=())


def test_find_opencode_prefers_config_then_path_then_pinned_copy(tmp_path: Path) -> None:
    fake = tmp_path / "bin" / "opencode"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)

    assert find_opencode(str(fake), path="") == fake
    assert find_opencode(None, path=str(fake.parent)) == fake
    assert find_opencode(None, path="") == project_root() / PINNED_BINARY
    with pytest.raises(OpencodeNotFoundError, match="nope"):
        find_opencode(str(tmp_path / "nope"))


def test_a_pre_started_agents_config_adds_the_warm_up_provider_as_its_small_model() -> None:
    settings = OpencodeSettings(base_url="http://127.0.0.1:9/v1", models=("big",), provider_id="lab")
    config = opencode_config(settings, warmup_url="http://127.0.0.1:7/v1")
    assert config["enabled_providers"] == ["lab", WARMUP_PROVIDER]
    assert config["model"] == "lab/big" and config["small_model"] == warmup_model_ref()
    warmup = config["provider"][WARMUP_PROVIDER]
    assert warmup["options"] == {"baseURL": "http://127.0.0.1:7/v1"} and list(warmup["models"]) == [WARMUP_MODEL]
    assert config["provider"]["lab"] == opencode_config(settings)["provider"]["lab"]
