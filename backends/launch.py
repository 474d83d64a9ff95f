"""Starting a one-shot external agent: its argv, its environment, and opencode's sandbox.

Shared by the ACP and PTY tracks. :func:`prepare` resolves the executable, builds the
environment (opencode agents get the offline environment of :mod:`backends.opencode_env` with
a per-turn sandbox for HOME and the XDG dirs, removed afterwards) and places the task's model
and, for the PTY track, its input on the command line.
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
from pathlib import Path

import anyio
import anyio.to_thread

from backends.base import Emit, Turn, TurnOutcome
from backends.errors import AgentNotFoundError, BadModelError
from backends.opencode_env import OpencodeSettings, opencode_env
from backends.permissions import PermissionPolicy
from backends.processes import RUN_MARKER
from backends.registry import AgentSpec, agent_env, executable

SANDBOX_PREFIX = "switchyard-agent-"
END_OF_OPTIONS = "--"


@dataclass(frozen=True)
class Launch:
    argv: tuple[str, ...]
    env: dict[str, str]
    # Also in ``env`` as RUN_MARKER: finds every process of this run (backends.processes).
    run_id: str
    # The model to select through the ACP session's ``model`` config option (no model_flag).
    session_model: str | None = None


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
        state_dir: Path | None = None,
    ) -> None:
        self.spec = spec
        self.policy = policy or PermissionPolicy()
        self.opencode = opencode or OpencodeSettings()
        self.parent_env = parent_env
        # Where an opencode agent keeps its sessions (per Switchyard session) between turns, so a
        # later turn can resume them; None: in the turn's throw-away sandbox.
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
        except AgentNotFoundError as exc:
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
    prompt: str | None = None,
    opencode: OpencodeSettings | None = None,
    parent_env: Mapping[str, str] | None = None,
    data_dir: Path | None = None,
) -> AsyncIterator[Launch]:
    """The launch of one turn; ``prompt`` (PTY track) goes last on the command line; an opencode
    agent keeps its data (sessions) in ``data_dir`` when given, else in the turn's sandbox.

    Raises AgentNotFoundError or BadModelError before anything is created.
    """
    parent = os.environ if parent_env is None else parent_env
    program = await anyio.to_thread.run_sync(executable, spec, opencode.binary if opencode else None)
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
    sandbox: Path | None = None
    try:
        if spec.opencode:
            sandbox = Path(await anyio.to_thread.run_sync(tempfile.mkdtemp, None, SANDBOX_PREFIX))
            env = agent_env(spec, parent, opencode_env(settings, sandbox, parent))
            if data_dir is not None:
                await anyio.to_thread.run_sync(lambda: data_dir.mkdir(parents=True, exist_ok=True))
                env["XDG_DATA_HOME"] = str(data_dir)
        else:
            env = agent_env(spec, parent)
        run_id = secrets.token_hex(16)
        env[RUN_MARKER] = run_id
        yield Launch(tuple(argv), env, run_id, session_model)
    finally:
        if sandbox is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(shutil.rmtree, sandbox, True)
