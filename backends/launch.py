"""Starting a one-shot external agent: its argv, its environment, and its sandbox.

Shared by the ACP and PTY tracks. :func:`prepare` resolves the executable, builds the
environment (opencode agents get the offline environment of :mod:`backends.opencode_env` with
a per-turn directory for HOME and the XDG dirs, removed afterwards), places the task's model
and, for the PTY track, its input on the command line, and wraps it all in the bubblewrap
sandbox (:mod:`backends.sandbox`): writable are only the worktree and that HOME.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import anyio
import anyio.to_thread

from backends.base import Emit, Turn, TurnOutcome
from backends.errors import AgentNotFoundError, BadModelError
from backends.opencode_env import OpencodeSettings, opencode_env
from backends.permissions import PermissionPolicy
from backends.processes import RUN_MARKER, ProcessTree
from backends.registry import AgentSpec, agent_env, executable
from backends.sandbox import TMP, Sandbox, SandboxUnavailable

HOME_PREFIX = "switchyard-agent-"
END_OF_OPTIONS = "--"


@dataclass(frozen=True)
class Launch:
    argv: tuple[str, ...]
    env: dict[str, str]
    # Also in ``env`` as RUN_MARKER: finds every process of this run (backends.processes).
    run_id: str
    # The model to select through the ACP session's ``model`` config option (no model_flag).
    session_model: str | None = None
    # argv starts with bwrap: the agent is in a sandbox, bwrap is the process started.
    sandboxed: bool = False
    # An opencode agent's private HOME (writable in the sandbox, removed after the run).
    home: Path | None = None

    def tree(self, pid: int) -> ProcessTree:
        """The process tree of the run started as ``pid``."""
        return ProcessTree(pid, self.run_id, wrapped=self.sandboxed)


class OneShotBackend(abc.ABC):
    """An agent run once per turn in the session worktree: what the ACP and PTY tracks share."""

    needs_worktree = True
    # Whether the track can apply a task's agent options (ACP session config options).
    takes_agent_options = False

    def __init__(
        self,
        spec: AgentSpec,
        policy: PermissionPolicy | None = None,
        *,
        opencode: OpencodeSettings | None = None,
        parent_env: Mapping[str, str] | None = None,
        sandbox: Sandbox | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.spec = spec
        self.policy = policy or PermissionPolicy()
        self.opencode = opencode or OpencodeSettings()
        self.parent_env = parent_env
        self.sandbox = sandbox or Sandbox()
        # Where an opencode agent keeps its sessions (per Switchyard session) between turns, so a
        # later turn can resume them; None: in the turn's throw-away HOME.
        self.state_dir = state_dir

    def session_state(self, turn: Turn) -> Path | None:
        """The agent's data directory for the turn's Switchyard session (opencode agents only)."""
        if self.state_dir is None or not self.spec.opencode:
            return None
        return self.state_dir / self.spec.name / str(turn.session_id)

    async def run_turn(self, turn: Turn, emit: Emit) -> TurnOutcome:
        if turn.workdir is None:
            return TurnOutcome.failed("bad_input", f"agent {self.spec.name!r} runs in the session worktree; none given")
        if turn.agent_options and not self.takes_agent_options:
            error = f"agent {self.spec.name!r} offers no agent options: {dict(turn.agent_options)}"
            return TurnOutcome.failed("bad_input", error)
        try:
            return await self.run_in(turn, turn.workdir, emit)
        except (AgentNotFoundError, SandboxUnavailable) as exc:
            return TurnOutcome.failed("agent_unavailable", str(exc))
        except BadModelError as exc:
            return TurnOutcome.failed("bad_input", str(exc))

    @abc.abstractmethod
    async def run_in(self, turn: Turn, workdir: Path, emit: Emit) -> TurnOutcome:
        """Run the turn in ``workdir``; a missing agent or a bad model may be raised."""


def opencode_model(settings: OpencodeSettings, model: str | None) -> str:
    """``<provider>/<model>`` for a task's model, which must be one the opencode config offers."""
    provider, _, name = (model or "").rpartition("/")
    name = name or settings.models[0]
    if (provider and provider != settings.provider_id) or name not in settings.models:
        configured = ", ".join(settings.model_ref(m) for m in settings.models)
        raise BadModelError(f"model {model!r} is not configured for opencode ({configured})")
    return settings.model_ref(name)


@asynccontextmanager
async def prepare(
    spec: AgentSpec,
    model: str | None,
    *,
    workdir: Path,
    sandbox: Sandbox,
    git_dir: Path | None = None,
    prompt: str | None = None,
    opencode: OpencodeSettings | None = None,
    parent_env: Mapping[str, str] | None = None,
    data_dir: Path | None = None,
    warmup_url: str | None = None,
) -> AsyncIterator[Launch]:
    """The launch of one turn in ``workdir``; ``prompt`` (PTY track) goes last on the command line;
    an opencode agent keeps its data (sessions) in ``data_dir`` when given (writable in the
    sandbox), else in the turn's HOME, and knows the warm-up provider when given ``warmup_url``
    (a pre-started agent, backends.warmup).

    ``git_dir`` (the project repository's git directory) stays readable in the sandbox. Raises
    AgentNotFoundError, BadModelError or SandboxUnavailable before anything is created.
    """
    parent = os.environ if parent_env is None else parent_env
    program = await anyio.to_thread.run_sync(executable, spec, opencode.binary if opencode else None)
    sandboxed = (await sandbox.check()).usable
    argv = [str(program), *spec.command[1:]]
    session_model = None
    if spec.opencode:
        settings = opencode or OpencodeSettings()
        model = opencode_model(settings, model)
        if spec.model_flag is None:
            # opencode's default model is the first configured one: put the task's first.
            first = model.partition("/")[2]
            settings = dataclasses.replace(settings, models=(first, *(m for m in settings.models if m != first)))
    if model:
        if spec.model_flag:
            argv += [spec.model_flag, model]
        elif not spec.opencode:
            session_model = model
    if prompt is not None:
        argv += [f"{spec.prompt_flag}={prompt}"] if spec.prompt_flag else [END_OF_OPTIONS, prompt]
    home: Path | None = None
    try:
        if spec.opencode:
            home = Path(await anyio.to_thread.run_sync(tempfile.mkdtemp, None, HOME_PREFIX))
            env = agent_env(spec, parent, opencode_env(settings, home, parent, warmup_url))
            if data_dir is not None:
                await anyio.to_thread.run_sync(lambda: data_dir.mkdir(parents=True, exist_ok=True))
                env["XDG_DATA_HOME"] = str(data_dir)
        else:
            env = agent_env(spec, parent)
        run_id = secrets.token_hex(16)
        env[RUN_MARKER] = run_id
        if sandboxed:
            env["TMPDIR"] = str(TMP)
            wrap = partial(
                sandbox.command,
                argv,
                cwd=workdir,
                writable=[workdir, *([home] if home else []), *([data_dir] if data_dir else [])],
                read_only=[program, *([git_dir] if git_dir else [])],
                frozen=[workdir / ".git"],
            )
            argv = await anyio.to_thread.run_sync(wrap)
        yield Launch(tuple(argv), env, run_id, session_model, sandboxed, home)
    finally:
        if home is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(shutil.rmtree, home, True)
