"""The ``pty`` track: a CLI agent (``opencode run``, ``claude -p``, ...) run once in a pseudo terminal.

The agent runs in the session worktree with its stdout and stderr on a pseudo terminal (so it
formats its output for a person), and stdin on ``/dev/null``, so a question it asks gets
end-of-file at once instead of hanging the turn. Its output streams as ``TextDelta`` line by line,
UTF-8 decoded, with terminal escape sequences removed and carriage returns collapsed (a progress
line redrawn with ``\\r`` leaves only its last state). At most ``spec.output_limit`` bytes of text
are streamed; the rest is read and dropped.

Exit code 0 completes the turn; any other exit fails it (``agent_failed``) with the tail of the
output. After ``spec.timeout`` seconds the turn fails (``timeout``). Cancellation, a timeout and
the end of every turn kill the agent's whole process tree: SIGINT, then SIGTERM, then SIGKILL
(:mod:`backends.processes`).

opencode agents cannot ask anyone for permission here, so the policy is handed to opencode as its
permission config (:func:`backends.permissions.opencode_permission`).
"""

from __future__ import annotations

import codecs
import dataclasses
import fcntl
import os
import re
import struct
import termios
from pathlib import Path

import anyio
from anyio.abc import Process

from backends.base import Emit, TextDelta, Turn, TurnOutcome
from backends.errors import BadModelError
from backends.launch import Launch, OneShotBackend, prepare
from backends.permissions import opencode_permission
from backends.processes import INTERRUPT, SIGNAL_GRACE, TERMINATE, ProcessTree

READ_SIZE = 65536
# While its terminal is silent, how often the reader checks whether the agent has exited.
EXIT_POLL = 0.2
TERMINAL_ROWS = 50
TERMINAL_COLUMNS = 200
DEFAULT_TERM = "xterm-256color"
# Characters of output kept for the error of a failed turn.
TAIL_CHARS = 2000
# A line without a newline is streamed anyway once it is this long.
MAX_PENDING_CHARS = 8192
TRUNCATED_NOTE = "\n[output truncated after {limit} bytes]\n"

ESCAPES = re.compile(
    r"""
      \x1b\[[0-?]*[\x20-/]*[@-~]              # CSI: colours, cursor movement, erase
    | \x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?      # OSC: window title, hyperlinks
    | \x1b[PX^_][^\x1b]*(?:\x1b\\)?           # DCS, SOS, PM, APC strings
    | \x1b[\x20-/]*[0-~]                      # other escapes: charset, keypad, save/restore
    | [\x00-\x08\x0b\x0c\x0e-\x1f\x7f]        # remaining control characters (tab, LF, CR kept)
    """,
    re.VERBOSE,
)


def plain_text(text: str) -> str:
    """Terminal output as plain text: escapes removed, each line only as it was last drawn."""
    lines = ESCAPES.sub("", text).split("\n")
    return "\n".join(line.rstrip("\r").rpartition("\r")[2] for line in lines)


class TerminalText:
    """Raw terminal bytes in, plain text out, complete lines at a time, capped at ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.emitted = 0
        self.truncated = False
        self.tail = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""

    def feed(self, data: bytes) -> str:
        """The text of the lines ``data`` completes ("" when none is, or past the cap)."""
        self._pending += self._decoder.decode(data)
        cut = self._pending.rfind("\n") + 1
        if not cut and len(self._pending) >= MAX_PENDING_CHARS:
            cut = len(self._pending)
        done, self._pending = self._pending[:cut], self._pending[cut:]
        return self._capped(plain_text(done)) if done else ""

    def finish(self) -> str:
        """Whatever is left once the terminal is closed."""
        rest = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        return self._capped(plain_text(rest)) if rest else ""

    def _capped(self, text: str) -> str:
        self.tail = (self.tail + text)[-TAIL_CHARS:]
        if self.truncated:
            return ""
        data = text.encode()
        room = self.limit - self.emitted
        if len(data) <= room:
            self.emitted += len(data)
            return text
        self.truncated = True
        self.emitted = self.limit
        return data[:room].decode(errors="ignore") + TRUNCATED_NOTE.format(limit=self.limit)


# Linux's limit for one argv string (MAX_ARG_STRLEN: 32 pages, its NUL included); the prompt is one.
MAX_ARG_STRLEN = 32 * 4096


class PtyBackend(OneShotBackend):
    execution_path = "pty"

    @property
    def max_input_bytes(self) -> int:
        """The longest prompt (UTF-8 bytes) the agent can be started with; the dispatcher refuses
        a longer one as ``input_too_long`` instead of failing to start the agent (E2BIG)."""
        flag = f"{self.spec.prompt_flag}=" if self.spec.prompt_flag else ""
        return MAX_ARG_STRLEN - 1 - len(flag.encode())

    async def run_in(self, turn: Turn, workdir: Path, emit: Emit) -> TurnOutcome:
        if turn.mode_id:
            raise BadModelError(f"agent {self.spec.name!r} runs in a terminal and offers no modes ({turn.mode_id!r})")
        settings = dataclasses.replace(self.opencode, permission=opencode_permission(self.policy))
        async with prepare(
            self.spec,
            turn.model,
            workdir=workdir,
            sandbox=self.sandbox,
            git_dir=turn.git_dir,
            prompt=turn.input,
            opencode=settings,
            parent_env=self.parent_env,
        ) as launch:
            if launch.session_model is not None:
                raise BadModelError(f"agent {self.spec.name!r} has no model_flag to pass model {turn.model!r}")
            return await self._run(launch, workdir, emit)

    async def _run(self, launch: Launch, workdir: Path, emit: Emit) -> TurnOutcome:
        master, slave = os.openpty()
        try:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", TERMINAL_ROWS, TERMINAL_COLUMNS, 0, 0))
            os.set_blocking(master, False)
            env = {"TERM": DEFAULT_TERM, **launch.env}
            devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            try:
                process = await anyio.open_process(
                    list(launch.argv),
                    stdin=devnull,
                    stdout=slave,
                    stderr=slave,
                    cwd=workdir,
                    env=env,
                    start_new_session=True,
                )
            except (OSError, ValueError) as exc:
                return TurnOutcome.failed("agent_unavailable", f"cannot start {launch.argv[0]}: {exc}")
            finally:
                os.close(devnull)
                os.close(slave)
            return await self._supervise(process, launch.tree(process.pid), master, emit)
        finally:
            os.close(master)

    async def _supervise(self, process: Process, tree: ProcessTree, master: int, emit: Emit) -> TurnOutcome:
        text = TerminalText(self.spec.output_limit)
        finished = False
        try:
            async with anyio.create_task_group() as watchers:
                watchers.start_soon(tree.watch)
                with anyio.move_on_after(self.spec.timeout) as deadline:
                    await _pump(master, process, text, emit)
                    await process.wait()
                watchers.cancel_scope.cancel()
            if deadline.cancelled_caught:
                await tree.terminate(INTERRUPT)
            rest = text.finish()
            if rest:
                await emit(TextDelta(rest))
            finished = True
        finally:
            with anyio.CancelScope(shield=True):
                await tree.terminate(TERMINATE if finished else INTERRUPT)
                with anyio.move_on_after(SIGNAL_GRACE):
                    await process.aclose()
        name = self.spec.name
        if deadline.cancelled_caught:
            return TurnOutcome.failed("timeout", f"{name} gave no result in {self.spec.timeout:g}s: {_tail(text)}")
        code = process.returncode
        if code == 0:
            return TurnOutcome.completed("end_turn")
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        return TurnOutcome.failed("agent_failed", f"{name} {how}: {_tail(text)}")


async def _pump(master: int, process: Process, text: TerminalText, emit: Emit) -> None:
    """Stream the terminal until every writer has closed it, or the agent exited and it is quiet."""
    while True:
        try:
            data = os.read(master, READ_SIZE)
        except BlockingIOError:
            if process.returncode is not None:
                return
            with anyio.move_on_after(EXIT_POLL):
                await anyio.wait_readable(master)
            continue
        except OSError:  # EIO: no process holds the terminal any more
            return
        if not data:
            return
        chunk = text.feed(data)
        if chunk:
            await emit(TextDelta(chunk))


def _tail(text: TerminalText) -> str:
    tail = text.tail.strip()
    return tail or "(no output)"
