from __future__ import annotations

from pathlib import Path

import pytest

from kernel.errors import ConfigError
from orchestrator.app.config import Config, load_config


def test_defaults_without_file_or_environment() -> None:
    config = load_config(None, environ={})
    assert config.database == Config().database
    assert config.database.url == ""


def test_paths_are_absolute_and_worktrees_live_under_data_dir(tmp_path: Path) -> None:
    config = load_config(None, environ={"SWITCHYARD_DATA_DIR": "rel-data"})
    assert config.data_dir == Path.cwd() / "rel-data"
    assert config.worktrees.root == Path.cwd() / "rel-data" / "worktrees"
    config = load_config(None, environ={"SWITCHYARD__WORKTREES__ROOT": str(tmp_path)})
    assert config.worktrees.root == tmp_path


def test_file_then_environment_overrides(tmp_path: Path) -> None:
    file = tmp_path / "s.toml"
    file.write_text('log_level = "debug"\n[database]\nurl = "postgresql://a/b"\nembedded_port = 6000\n')
    config = load_config(
        file,
        environ={"SWITCHYARD_DATABASE_URL": "postgresql://c/d", "SWITCHYARD__DISPATCHER__LEASE_SECONDS": "12.5"},
    )
    assert config.log_level == "debug"
    assert config.database.url == "postgresql://c/d"
    assert config.database.embedded_port == 6000
    assert config.dispatcher.lease_seconds == 12.5


def test_config_file_from_environment_variable(tmp_path: Path) -> None:
    file = tmp_path / "s.toml"
    file.write_text("[dispatcher]\nmax_concurrent_turns = 3\n")
    assert load_config(None, environ={"SWITCHYARD_CONFIG": str(file)}).dispatcher.max_concurrent_turns == 3


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("[database]\nembedded_port = 'many'\n", "database.embedded_port", "many"),
        ("[database]\nembeded_port = 1\n", "database.embeded_port", 1),
        ("log_level = 'loud'\n", "log_level", "loud"),
        ("[dispatcher]\nlease_seconds = -1\n", "dispatcher.lease_seconds", -1),
        ("database = 3\n", "database", 3),
    ],
)
def test_errors_name_the_key_and_the_value(tmp_path: Path, text: str, key: str, value: object) -> None:
    file = tmp_path / "s.toml"
    file.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ={})
    assert caught.value.key == key
    assert caught.value.value == value
    assert key in str(caught.value)


def test_unparsable_and_missing_files(tmp_path: Path) -> None:
    file = tmp_path / "s.toml"
    file.write_text("[database\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(file, environ={})
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.toml", environ={})


def test_permissions_with_asking_and_overrides(tmp_path: Path) -> None:
    file = tmp_path / "s.toml"
    file.write_text(
        '[permissions]\nedit = "ask"\nask_timeout = 120\nquestions = "ask"\n'
        '[permissions.agents.opencode-acp]\nexecute = "ask"\n'
        '[permissions.projects.web]\nexecute = "allow"\n[permissions.projects.web.commands.npm]\nargs = "any"\n'
    )
    policy = load_config(file, environ={}).permissions
    assert (policy.edit, policy.ask_timeout, policy.asks_questions) == ("ask", 120.0, True)
    web = policy.effective("opencode-acp", "web")
    assert (web.edit, web.execute) == ("ask", "allow") and "npm" in web.rules
    file.write_text('[permissions.agents.x]\nedit = "often"\n')
    with pytest.raises(ConfigError, match=r"permissions\.agents\.x"):
        load_config(file, environ={})
