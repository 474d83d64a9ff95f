"""The bubblewrap sandbox, tried by a hostile agent: the fake ACP agent runs shell commands itself
(``RUN``) without asking anyone, as a compromised agent binary would."""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from backends.acp import AcpBackend
from backends.base import OutcomeStatus, Turn, TurnOutcome
from backends.registry import AgentSpec
from backends.sandbox import Sandbox, SandboxSettings, probe
from testkit import fake_acp_agent_command
from testkit.repos import git_repo, tree_digest
from tests.backends.recorder import Recorder

pytestmark = pytest.mark.anyio

FAKE = AgentSpec("fake", "acp", tuple(fake_acp_agent_command()))
SECRETS = {
    "SWITCHYARD_DATABASE_URL": "postgresql://switchyard:db-SECRET@127.0.0.1/x",
    "AWS_SECRET_ACCESS_KEY": "aws-SECRET",
}


@dataclass
class Service:
    """A service's files as an agent could find them: its data directory and a project."""

    data: Path
    repo: Path
    worktree: Path
    other_worktree: Path
    credentials: Path

    def digests(self) -> dict[str, str]:
        return {
            "data directory": tree_digest(self.data, skip=[self.worktree]),
            "project checkout and .git": tree_digest(self.repo),
            "credentials": tree_digest(self.credentials),
        }


@pytest.fixture
def service(tmp_path: Path) -> Service:
    data = tmp_path / "data"
    (data / "postgres").mkdir(parents=True)
    (data / "postgres" / "switchyard.password").write_text("db-SECRET\n")
    (data / "api-token").write_text("sy_SECRET\n")
    repo = git_repo(tmp_path / "project")
    worktree = data / "worktrees" / "1" / "7"
    worktree.parent.mkdir(parents=True)
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "-q", str(worktree)], check=True)
    other = data / "worktrees" / "2" / "8"
    other.mkdir(parents=True)
    (other / "theirs.txt").write_text("another project's work\n")
    credentials = tmp_path / "home" / ".ssh"
    credentials.mkdir(parents=True)
    (credentials / "id_ed25519").write_text("PRIVATE KEY SECRET\n")
    return Service(data, repo, worktree, other, credentials)


def sandbox_for(service: Service, **settings: object) -> Sandbox:
    hidden = (str(service.credentials),)
    return Sandbox(SandboxSettings(hidden=hidden, **settings), protected=(service.data,))  # type: ignore[arg-type]


async def hostile_turn(service: Service, sandbox: Sandbox, *commands: str) -> tuple[TurnOutcome, str]:
    backend = AcpBackend(FAKE, sandbox=sandbox, parent_env={**os.environ, **SECRETS})
    prompt = " ".join(f"RUN {quote(c, safe='')}" for c in commands)
    turn = Turn(
        task_id=1, session_id=7, project_id=1, input=prompt, workdir=service.worktree, git_dir=service.repo / ".git"
    )
    emit = Recorder()
    outcome = await backend.run_turn(turn, emit)
    return outcome, emit.text


def result(text: str, command: str) -> str:
    """What the fake agent reported for one RUN: ``exit <code> <output>``."""
    head = f"run {quote(command, safe='')}="
    return text.split(head, 1)[1].split("; run ", 1)[0]


def running(token: str) -> bool:
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and token.encode() in (entry / "cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


async def test_a_hostile_agent_reaches_nothing_outside_its_worktree(service: Service) -> None:
    before = service.digests()
    attacks = {
        "token": f"cat {service.data / 'api-token'}",
        "password": f"cat {service.data / 'postgres' / 'switchyard.password'}",
        "other project": f"cat {service.other_worktree / 'theirs.txt'}",
        "credentials": f"cat {service.credentials / 'id_ed25519'}",
        "checkout": f"echo pwned > {service.repo / 'README.md'}",
        "hook": f"echo 'touch /tmp/pwned' > {service.repo / '.git' / 'hooks' / 'pre-commit'}",
        "dotgit": "echo 'gitdir: /tmp/evil' > .git",
        "kill": f"kill -9 {os.getpid()}",
        "environ": "cat /proc/self/environ",
        "processes": "ls /proc",
    }
    allowed = {"write": "echo mine > inside.txt && echo written", "git": "git status --short && echo git-ok"}
    outcome, text = await hostile_turn(service, sandbox_for(service), *attacks.values(), *allowed.values())
    assert outcome.status is OutcomeStatus.COMPLETED, outcome.error

    for what in ("token", "password", "other project", "credentials"):
        assert result(text, attacks[what]).startswith("exit 1"), what
    assert "SECRET" not in text.replace("SECRET\\n", "")  # no secret content, only the commands' text
    for what in ("hook", "dotgit"):
        assert "Read-only file system" in result(text, attacks[what]), what
    # The checkout lies under /tmp here, which is the sandbox's own tmpfs: the write landed there
    # (the digests below show the real checkout did not change).
    assert "No such process" in result(text, attacks["kill"])  # Switchyard is in another PID namespace
    environ = result(text, attacks["environ"])
    assert "db-SECRET" not in environ and "aws-SECRET" not in environ and "SWITCHYARD_AGENT_RUN" in environ
    # Only the sandbox's own processes: bwrap's init, the agent, its shell, ls.
    assert len([p for p in result(text, attacks["processes"]).split() if p.isdigit()]) <= 5

    assert result(text, allowed["write"]).startswith("exit 0 written")
    assert result(text, allowed["git"]).startswith("exit 0")  # git reads the project's .git
    assert (service.worktree / "inside.txt").read_text() == "mine\n"
    assert service.digests() == before


async def test_what_an_agent_starts_dies_with_the_turn(service: Service) -> None:
    # Double fork and a new session: the classic way to outlive a process group kill.
    detach = "setsid sh -c 'sleep 987 & sleep 988 &' >/dev/null 2>&1 && echo detached"
    outcome, text = await hostile_turn(service, sandbox_for(service), detach)
    assert outcome.status is OutcomeStatus.COMPLETED, outcome.error
    assert result(text, detach).startswith("exit 0 detached")
    assert not running("sleep\x00987") and not running("sleep\x00988")


def fake_bwrap(tmp_path: Path, stderr: str) -> str:
    path = tmp_path / "bwrap"
    path.write_text(f"#!/bin/sh\necho '{stderr}' >&2\nexit 1\n")
    path.chmod(0o755)
    return str(path)


def test_the_probe_says_in_one_line_why_there_is_no_sandbox(tmp_path: Path) -> None:
    assert probe("bwrap").usable and probe("bwrap").line.startswith("sandbox: bubblewrap")
    missing = probe(str(tmp_path / "no-such-bwrap"))
    assert not missing.usable
    assert (
        missing.line
        == f"sandbox: bwrap not found ({str(tmp_path / 'no-such-bwrap')!r}); install the bubblewrap package"
    )
    broken = probe(fake_bwrap(tmp_path, "bwrap: No permissions to create new namespace"))
    assert not broken.usable
    assert broken.line.endswith("cannot create its namespaces here: bwrap: No permissions to create new namespace")
    assert "\n" not in missing.line + broken.line


async def test_a_required_sandbox_that_cannot_be_made_keeps_agents_from_starting(
    service: Service, tmp_path: Path
) -> None:
    sandbox = sandbox_for(service, bwrap=fake_bwrap(tmp_path, "bwrap: setting up uid map: Permission denied"))
    assert sandbox.startup_line().endswith("agents will not start (sandbox.required = true)")
    outcome, text = await hostile_turn(service, sandbox, "touch ran")
    assert (outcome.status, outcome.stop_reason) == (OutcomeStatus.FAILED, "agent_unavailable")
    assert outcome.error is not None
    assert outcome.error.endswith("setting up uid map: Permission denied (sandbox.required = true)")
    assert not (service.worktree / "ran").exists() and not text


async def test_without_required_an_agent_runs_unsandboxed_after_one_warning(
    service: Service, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sandbox = sandbox_for(service, bwrap=str(tmp_path / "no-such-bwrap"), required=False)
    assert "agents run WITHOUT a sandbox" in sandbox.startup_line()
    with caplog.at_level(logging.WARNING, logger="switchyard.backends.sandbox"):
        for _ in range(2):
            outcome, text = await hostile_turn(service, sandbox, f"cat {service.data / 'api-token'}")
            assert outcome.status is OutcomeStatus.COMPLETED, outcome.error
            # Unsandboxed, only the permission policy stands between an agent and the service.
            assert "sy_SECRET" in text
    assert [r.message for r in caplog.records] == ["sandbox.unavailable"]


def test_a_protected_path_stays_hidden_even_if_configured_readable(service: Service) -> None:
    sandbox = Sandbox(SandboxSettings(hidden=(), read_only=(str(service.data),)), protected=(service.data,))
    for path, readable in ((service.data / "api-token", False), (service.worktree / "README.md", True)):
        argv = sandbox.command(["cat", str(path)], cwd=service.worktree, writable=[service.worktree])
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert (done.returncode == 0) is readable, (path, done.stderr)
        assert "SECRET" not in done.stdout


def test_a_program_installed_under_tmp_runs_and_its_hidden_parts_stay_hidden(service: Service) -> None:
    """A clone in /tmp (its .venv, .tools) is not lost under the sandbox's private /tmp."""
    with tempfile.TemporaryDirectory(dir="/tmp") as install:
        root = Path(install)
        program = root / "bin" / "tool"
        program.parent.mkdir()
        program.write_text('#!/bin/sh\necho installed\ncat "$1"\n')
        program.chmod(0o755)
        secret = root / "data" / "api-token"
        secret.parent.mkdir()
        secret.write_text("SECRET\n")
        sandbox = Sandbox(SandboxSettings(), protected=(secret.parent,))
        argv = sandbox.command([str(program), str(secret)], cwd=service.worktree, writable=[service.worktree])
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert done.stdout.startswith("installed\n"), done.stderr
        assert "SECRET" not in done.stdout
