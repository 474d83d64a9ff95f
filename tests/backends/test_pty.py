"""The PTY track with real processes: scripted CLIs and the real ``opencode run``."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from backends.base import OutcomeStatus, Turn
from backends.commands import ANY, CommandRule
from backends.opencode_env import OpencodeSettings
from backends.permissions import PermissionPolicy
from backends.processes import process_table
from backends.pty import PtyBackend, TerminalText, plain_text
from backends.registry import PRESETS, AgentSpec
from testkit.fake_model import FakeModel, Reply, ToolCall
from tests.backends.recorder import Recorder

pytestmark = pytest.mark.anyio


def cli(code: str, **options: object) -> AgentSpec:
    """A PTY agent that is a Python script; the task input is its last argument."""
    return AgentSpec("script", "pty", (sys.executable, "-c", code), **options)  # type: ignore[arg-type]


def turn(workdir: Path | None, text: str = "do it", model: str | None = None) -> Turn:
    return Turn(task_id=1, session_id=1, project_id=1, input=text, agent="script", model=model, workdir=workdir)


def gone(token: str) -> bool:
    """No live process has ``token`` (a turn's input) on its command line.

    The agent runs in its own PID namespace, so the pid it could print is not ours to look up.
    """
    for pid, info in process_table().items():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if not info.zombie and token.encode() in cmdline:
            return False
    return True


# ---------------------------------------------------------------------------- terminal text


def test_plain_text_strips_escapes_and_collapses_carriage_returns() -> None:
    raw = "\x1b]0;title\x07\x1b[1;31mred\x1b[0m text\r\nstep 1/3\rstep 2/3\rstep 3/3\r\n\x1b(Bend\x07\x08"
    assert plain_text(raw) == "red text\nstep 3/3\nend"


def test_terminal_text_reassembles_split_characters_and_lines() -> None:
    text = TerminalText(limit=1000)
    data = "héllo \x1b[32mgreen\x1b[0m\r\nnext".encode()
    out = [text.feed(data[i : i + 1]) for i in range(len(data))]
    assert "".join(out) == "héllo green\n"
    assert text.finish() == "next"
    assert text.tail == "héllo green\nnext"


def test_terminal_text_caps_what_it_streams_but_keeps_the_tail() -> None:
    text = TerminalText(limit=10)
    assert text.feed(b"0123456789abcdef\n") == "0123456789\n[output truncated after 10 bytes]\n"
    assert text.feed(b"more\n") == ""
    assert text.truncated
    assert text.tail.endswith("abcdef\nmore\n")


# ---------------------------------------------------------------------------- scripted CLIs

PRINTER = r"""
import os, sys
print("\x1b[1;32mhello\x1b[0m " + sys.argv[-1])
sys.stdout.write("progress 10%\rprogress 100%\r\n")
print("tty=%s" % os.isatty(1))
print("cwd=" + os.getcwd())
print("stdin=%r" % sys.stdin.read())
print("h\u00e9llo \u2713")
"""


async def test_output_streams_as_plain_text_from_a_terminal_in_the_worktree(worktree: Path) -> None:
    emit = Recorder()
    outcome = await PtyBackend(cli(PRINTER)).run_turn(turn(worktree, "--help me"), emit)
    assert outcome.status is OutcomeStatus.COMPLETED
    # The input after "--" can never be taken for an option.
    assert emit.text == (
        f"hello --help me\nprogress 100%\ntty=True\ncwd={worktree.resolve()}\nstdin=''\nh\u00e9llo \u2713\n"
    )


async def test_a_nonzero_exit_fails_the_turn_with_the_tail_of_the_output(worktree: Path) -> None:
    code = "import sys; print('working'); sys.stderr.write('boom: bad things\\n'); sys.exit(3)"
    outcome = await PtyBackend(cli(code)).run_turn(turn(worktree), Recorder())
    assert outcome.status is OutcomeStatus.FAILED
    assert outcome.stop_reason == "agent_failed"
    assert outcome.error is not None
    assert "exited with code 3" in outcome.error
    assert "working" in outcome.error and "boom: bad things" in outcome.error


async def test_output_beyond_the_byte_cap_is_dropped(worktree: Path) -> None:
    emit = Recorder()
    code = "for i in range(2000): print('x' * 60)"
    outcome = await PtyBackend(cli(code, output_limit=1000)).run_turn(turn(worktree), emit)
    assert outcome.status is OutcomeStatus.COMPLETED
    assert emit.text.endswith("[output truncated after 1000 bytes]\n")
    assert len(emit.text.encode()) < 1100


async def test_a_timeout_fails_the_turn_and_kills_the_agent(worktree: Path) -> None:
    emit = Recorder()
    code = "import os, time; print('pid', os.getpid(), flush=True); time.sleep(60)"
    outcome = await PtyBackend(cli(code, timeout=1.0)).run_turn(turn(worktree, "timeout-token"), emit)
    assert outcome.status is OutcomeStatus.FAILED
    assert outcome.stop_reason == "timeout"
    assert outcome.error is not None and "pid" in outcome.error
    assert gone("timeout-token")


INTERRUPTIBLE = r"""
import os, signal, sys, time
def on_int(signum, frame):
    open("interrupted", "w").close()
    sys.exit(130)
signal.signal(signal.SIGINT, on_int)
print("ready", os.getpid(), flush=True)
time.sleep(60)
"""

STUBBORN = r"""
import os, signal, time
signal.signal(signal.SIGINT, lambda *a: open("got-int", "w").close())
signal.signal(signal.SIGTERM, lambda *a: open("got-term", "w").close())
print("ready", os.getpid(), flush=True)
while True:
    time.sleep(1)
"""


async def cancel_when_ready(backend: PtyBackend, workdir: Path, token: str) -> Recorder:
    emit = Recorder()
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(backend.run_turn, turn(workdir, token), emit)
            await emit.wait_for(lambda: "ready" in emit.text)
            scope.cancel()
    assert scope.cancelled_caught
    return emit


async def test_cancel_sends_sigint_first(worktree: Path) -> None:
    await cancel_when_ready(PtyBackend(cli(INTERRUPTIBLE)), worktree, "interruptible-token")
    assert (worktree / "interrupted").exists()
    assert gone("interruptible-token")


async def test_cancel_escalates_to_sigterm_then_sigkill(worktree: Path) -> None:
    await cancel_when_ready(PtyBackend(cli(STUBBORN)), worktree, "stubborn-token")
    assert (worktree / "got-int").exists()
    assert (worktree / "got-term").exists()
    assert gone("stubborn-token")


async def test_a_detached_grandchild_does_not_outlive_the_turn(worktree: Path) -> None:
    code = (
        "import subprocess, sys\n"
        "code = 'import time; time.sleep(60)'\n"
        "child = subprocess.Popen([sys.executable, '-c', code, sys.argv[-1]], start_new_session=True)\n"
        "print('child', child.pid, flush=True)\n"
    )
    emit = Recorder()
    outcome = await PtyBackend(cli(code)).run_turn(turn(worktree, "grandchild-token"), emit)
    assert outcome.status is OutcomeStatus.COMPLETED
    assert gone("grandchild-token")


async def test_a_missing_command_or_worktree_fails_clearly(worktree: Path) -> None:
    missing = await PtyBackend(AgentSpec("ghost", "pty", ("no-such-cli",))).run_turn(turn(worktree), Recorder())
    assert missing.stop_reason == "agent_unavailable"
    no_worktree = await PtyBackend(cli("print(1)")).run_turn(turn(None), Recorder())
    assert no_worktree.stop_reason == "bad_input"
    no_model_flag = await PtyBackend(cli("print(1)")).run_turn(turn(worktree, model="big"), Recorder())
    assert no_model_flag.stop_reason == "bad_input"
    assert no_model_flag.error is not None and "model_flag" in no_model_flag.error


async def test_the_model_goes_after_the_model_flag(worktree: Path) -> None:
    emit = Recorder()
    code = "import sys; print(sys.argv[1:])"
    outcome = await PtyBackend(cli(code, model_flag="--model")).run_turn(turn(worktree, "hi", "big"), emit)
    assert outcome.status is OutcomeStatus.COMPLETED
    assert emit.text == "['--model', 'big', '--', 'hi']\n"


# ---------------------------------------------------------------------------- real opencode run


async def test_opencode_run_writes_a_file_in_the_worktree(worktree: Path, tmp_path: Path) -> None:
    emit = Recorder()
    async with FakeModel(models=("fake-model",)) as fm:
        settings = OpencodeSettings(base_url=fm.base_url, models=("fake-model",))
        backend = PtyBackend(PRESETS["opencode-run"], opencode=settings)
        outcome = await backend.run_turn(turn(worktree, "WRITE_FILE notes/out.txt TOKEN-PTY-1", "fake-model"), emit)
        outside = await backend.run_turn(turn(worktree, "WRITE_FILE ../escaped.txt TOKEN-PTY-2"), Recorder())
    assert outcome.status is OutcomeStatus.COMPLETED, outcome.error
    assert (worktree / "notes" / "out.txt").read_text() == "TOKEN-PTY-1\n"
    text = emit.text
    assert text.index("I will write the file.") < text.index("Write notes/out.txt") < text.index("Done. Tool said:")
    assert "\x1b" not in text and "\r" not in text
    # external_directory is always denied: the write outside fails inside opencode.
    assert outside.status is OutcomeStatus.COMPLETED
    assert not (worktree.parent / "escaped.txt").exists()


async def test_opencode_run_allows_only_exact_argument_free_commands(worktree: Path, tmp_path: Path) -> None:
    def bash(command: str) -> ToolCall:
        return ToolCall("bash", {"command": command, "description": "run it"})

    emit = Recorder()
    async with FakeModel(models=("fake-model",)) as fm:
        fm.enqueue(
            Reply(text="First.", tool_calls=(bash("git status"),)),
            Reply(text="Second.", tool_calls=(bash("touch allowed.txt"),)),
            Reply(text="Third.", tool_calls=(bash(f"git log -1 --output={tmp_path / 'pwned'}"),)),
            Reply(text="Fourth.", tool_calls=(bash("rm README.md"),)),
            Reply(text="All done."),
        )
        settings = OpencodeSettings(base_url=fm.base_url, models=("fake-model",))
        policy = PermissionPolicy(commands={"touch": CommandRule(args=ANY)})
        backend = PtyBackend(PRESETS["opencode-run"], policy, opencode=settings)
        outcome = await backend.run_turn(turn(worktree, "run the commands"), emit)
    assert outcome.status is OutcomeStatus.COMPLETED, outcome.error
    # `git status` is exactly an allowed command: it ran (read-only git works in the sandbox).
    assert "On branch main" in emit.text
    # Everything with arguments was refused by opencode under the translated policy: opencode
    # cannot check arguments, so `touch allowed.txt` is refused although the rules allow it.
    assert not (worktree / "allowed.txt").exists()
    assert not (tmp_path / "pwned").exists()
    assert (worktree / "README.md").exists()
    assert "All done." in emit.text


@pytest.mark.parametrize("prompt_flag", ["", "--message"])
def test_the_longest_prompt_a_pty_agent_takes_is_exactly_what_one_argument_may_hold(prompt_flag: str) -> None:
    limit = PtyBackend(cli("pass", prompt_flag=prompt_flag)).max_input_bytes
    flag = f"{prompt_flag}=" if prompt_flag else ""
    subprocess.run(["true", flag + "x" * limit], check=True)
    with pytest.raises(OSError) as refused:
        subprocess.run(["true", flag + "x" * (limit + 1)], check=True)
    assert refused.value.errno == errno.E2BIG
