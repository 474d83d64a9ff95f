"""The `switchyard` command as a user runs it: real processes, a real embedded cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kernel.net import free_port
from testkit import SWITCHYARD
from testkit.cluster import reachable_tmp_dir
from tests.leftovers import no_leftovers


def run(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SWITCHYARD, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def home() -> Iterator[Path]:
    with reachable_tmp_dir() as root:
        yield root


@pytest.fixture
def env(home: Path) -> dict[str, str]:
    config = home / "switchyard.toml"
    config.write_text(f'data_dir = "{home / "data"}"\n[database]\nembedded_port = {free_port()}\n')
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD")}
    return {**clean, "SWITCHYARD_CONFIG": str(config)}


@pytest.fixture
def repo(home: Path) -> Path:
    path = home / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    subprocess.run(
        [
            "git",
            "-C",
            str(path),
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "i",
        ],
        check=True,
    )
    return path


def start_up(env: dict[str, str]) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """Start `switchyard up`; returns the process and its banner (database, websocket, token)."""
    proc = subprocess.Popen([*SWITCHYARD, "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    banner: dict[str, str] = {}
    for line in proc.stdout:
        key, _, value = line.strip().partition(": ")
        if key in ("open", "database", "websocket", "token", "sandbox"):
            banner[key] = value.strip()
        if line.startswith("Stop:"):
            return proc, banner
    proc.wait(10)
    raise AssertionError(f"up exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")


def stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(60)


@pytest.mark.slow
def test_up_psql_insert_tasks_and_restart(env: dict[str, str], repo: Path, home: Path) -> None:
    with no_leftovers():  # the cluster and the warm opencode servers all stop with the service
        first_token = up_insert_and_list(env, repo, home)
    proc, second = start_up(env)
    try:
        assert second["token"] == first_token  # kept across restarts, not a new one each time
        listed = run(["tasks", "--json"], env)
        assert sorted(t["input"] for t in json.loads(listed.stdout)) == ["from psql", "warm up"]
    finally:
        assert stop(proc) == 0


def psql(url: str, sql: str) -> str:
    done = subprocess.run(["psql", url, "-Atc", sql], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def up_insert_and_list(env: dict[str, str], repo: Path, home: Path) -> str:
    proc, banner = start_up(env)
    url = banner["database"]
    try:
        assert url.startswith("postgresql://switchyard:")
        assert banner["websocket"].startswith("ws://127.0.0.1:")
        page_url = banner["open"].split()[0]
        assert page_url == banner["websocket"].replace("ws://", "http://").removesuffix("ws")
        assert "<title>Switchyard</title>" in httpx.get(page_url, timeout=10).text
        assert len(banner["token"]) >= 32
        assert banner["sandbox"].startswith("bubblewrap")
        added = run(["project", "add", str(repo), "--name", "demo"], env)
        assert added.returncode == 0, added.stderr
        project_id = added.stdout.strip()
        psql(url, f"INSERT INTO tasks (project_id, input, agent) VALUES ({project_id}, 'from psql', 'noop')")
        listed = run(["tasks", "--json"], env)
        assert listed.returncode == 0, listed.stderr
        assert [t["input"] for t in json.loads(listed.stdout)] == ["from psql"]
        # The project's first opencode turn starts its warm server (no model answers here).
        warm = psql(
            url,
            f"INSERT INTO tasks (project_id, input, agent) VALUES ({project_id}, 'warm up', 'opencode') RETURNING id",
        )
        deadline = time.monotonic() + 60
        servers: list[dict[str, object]] = []
        while time.monotonic() < deadline and [s["state"] for s in servers] != ["ready"]:
            time.sleep(0.2)
            servers = json.loads(run(["pool", "--json"], env).stdout)["servers"]
        assert [(s["state"], s["project_id"]) for s in servers] == [("ready", int(project_id))]
        assert run(["cancel", warm.splitlines()[0]], env).returncode == 0
    finally:
        assert stop(proc) == 0
    status = subprocess.run(
        ["pg_ctl", "status", "-D", str(home / "data" / "postgres")], capture_output=True, check=False
    )
    assert status.returncode != 0 or b"no server running" in status.stdout
    return banner["token"]


def test_submit_inserts_what_sql_would(env: dict[str, str], repo: Path) -> None:
    assert run(["project", "add", str(repo)], env).returncode == 0
    first = run(["submit", "--project", "repo", "--agent", "noop", "--dispatch-key", "k", "hello"], env)
    assert first.returncode == 0, first.stderr
    again = run(["submit", "--project", "repo", "--dispatch-key", "k", "hello"], env)
    assert again.returncode == 0
    assert "nothing added" in again.stdout
    rows = json.loads(run(["tasks", "--json"], env).stdout)
    assert len(rows) == 1 and rows[0]["agent"] == "noop" and rows[0]["state"] == "pending"
    # Agent options and a fresh context; native inference takes no options.
    fresh = run(
        ["submit", "--project", "repo", "--agent", "noop", "--option", "effort=high", "--fresh-context", "x"], env
    )
    assert fresh.returncode == 0, fresh.stderr
    refused = run(["submit", "--project", "repo", "--option", "effort=high", "x"], env)
    assert "native inference offers no agent options" in one_line_error(refused)
    assert "is not KEY=VALUE" in run(["submit", "--project", "repo", "--option", "effort", "x"], env).stderr


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("switchyard: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_bad_configuration_is_one_line(env: dict[str, str], home: Path) -> None:
    bad = home / "bad.toml"
    bad.write_text("[dispatcher]\nmax_concurrent_turns = 'lots'\n")
    line = one_line_error(run(["--config", str(bad), "tasks"], env))
    assert "dispatcher.max_concurrent_turns='lots'" in line


def test_missing_postgres_binaries_is_one_line(env: dict[str, str], home: Path) -> None:
    env = {**env, "SWITCHYARD__DATABASE__PG_BINDIR": str(home)}
    assert "apt-get install postgresql" in one_line_error(run(["tasks"], env))


def test_occupied_port_is_one_line(env: dict[str, str]) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        env = {**env, "SWITCHYARD__DATABASE__EMBEDDED_PORT": str(sock.getsockname()[1])}
        assert "is in use" in one_line_error(run(["up"], env))


def test_unreachable_database_is_one_line(env: dict[str, str]) -> None:
    env = {**env, "SWITCHYARD_DATABASE_URL": f"postgresql://nobody:pw@127.0.0.1:{free_port()}/x"}
    line = one_line_error(run(["tasks"], env))
    assert "cannot connect" in line and "pw@" not in line


def test_help_everywhere(env: dict[str, str]) -> None:
    for args in (["--help"], ["up", "--help"], ["project", "add", "--help"], ["submit", "--help"], ["tasks", "--help"]):
        result = run(args, env)
        assert result.returncode == 0 and "usage: switchyard" in result.stdout
