"""The external agents Switchyard can run: built-in presets, merged with ``[agents.<name>]`` config.

An :class:`AgentSpec` says how to start one agent: its transport (``acp``, ``pty`` or
``opencode_server``), its command, the environment it gets and how the task's model is passed.
Presets cover the pinned opencode (``opencode-acp``, ``opencode-run``, ``opencode``) and document
the usual launch lines of other agents, which need their own install and credentials.

Configuration changes a preset key by key or defines a new agent::

    [agents.opencode-run]
    timeout = 600.0

    [agents.my-gemini]
    transport = "acp"
    command = ["gemini", "--acp"]
    pass_env = ["GEMINI_API_KEY"]
    model_flag = "--model"

:func:`probe` checks that an agent's command exists and asks it for its version, so the service
can mirror every agent into ``available_agents`` at start.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread

from backends.errors import AgentConfigError, AgentNotFoundError, BackendError
from backends.opencode_env import PASSTHROUGH_ENV, find_opencode
from backends.processes import ProcessTree

TRANSPORTS = ("acp", "pty", "opencode_server")
OPENCODE_EXECUTABLE = "opencode"
DEFAULT_VERSION_ARGS = ("--version",)
# An agent's own cap on one turn (the dispatcher's turn_timeout applies as well).
DEFAULT_AGENT_TIMEOUT = 1800.0
# PTY track: output beyond this many bytes is read and dropped, not streamed.
DEFAULT_OUTPUT_LIMIT = 1024 * 1024
# ACP track: started and initialized processes kept ready per project and model (backends.acp_spares).
DEFAULT_SPARE = 1
PROBE_TIMEOUT = 10.0
VERSION_MAX_CHARS = 200


@dataclass(frozen=True)
class AgentSpec:
    name: str
    transport: str
    # Executable and fixed arguments. For the PTY track the task's input is appended last
    # (after ``--``, or as ``<prompt_flag>=<input>``), so it can never be read as an option.
    command: tuple[str, ...]
    # Set in the agent's environment (after everything else).
    env: Mapping[str, str] = field(default_factory=dict)
    # Variables of Switchyard's own environment passed through (API keys); all others are
    # dropped except a few harmless ones (PATH, locale, HOME for non-opencode agents).
    pass_env: tuple[str, ...] = ()
    # ``--model``: the task's model goes on the command line. None: an ACP agent's ``model``
    # session config option is used instead.
    model_flag: str | None = None
    # PTY track: the input is passed as ``<prompt_flag>=<input>`` (aider's --message).
    prompt_flag: str | None = None
    version_args: tuple[str, ...] = DEFAULT_VERSION_ARGS
    # Run the pinned opencode offline: sandboxed HOME/XDG dirs and the inline provider config.
    opencode: bool = False
    timeout: float = DEFAULT_AGENT_TIMEOUT
    output_limit: int = DEFAULT_OUTPUT_LIMIT
    # ACP track: how many started and ``initialize``d processes to keep ready for the next turns
    # of a project that used the agent recently (0: none; each turn then starts its own).
    spare: int = DEFAULT_SPARE
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise AgentConfigError("agents", self.name, "an agent needs a name")
        key = f"agents.{self.name}"
        if self.transport not in TRANSPORTS:
            raise AgentConfigError(f"{key}.transport", self.transport, f"must be one of {', '.join(TRANSPORTS)}")
        if not self.command or not all(self.command):
            raise AgentConfigError(f"{key}.command", list(self.command), "must be a non-empty list of arguments")
        if self.timeout <= 0:
            raise AgentConfigError(f"{key}.timeout", self.timeout, "must be positive")
        if self.output_limit <= 0:
            raise AgentConfigError(f"{key}.output_limit", self.output_limit, "must be positive")
        if self.spare < 0:
            raise AgentConfigError(f"{key}.spare", self.spare, "must not be negative")


@dataclass(frozen=True)
class AgentConfig:
    """``[agents.<name>]``: a new agent, or changes to the preset of that name.

    Unset keys keep the preset's value; an empty ``model_flag``/``prompt_flag`` removes the
    preset's; ``enabled = false`` removes the agent.
    """

    transport: str | None = None
    command: tuple[str, ...] | None = None
    env: dict[str, str] | None = None
    pass_env: tuple[str, ...] | None = None
    model_flag: str | None = None
    prompt_flag: str | None = None
    version_args: tuple[str, ...] | None = None
    opencode: bool | None = None
    timeout: float | None = None
    output_limit: int | None = None
    spare: int | None = None
    description: str | None = None
    enabled: bool = True


PRESETS: dict[str, AgentSpec] = {
    spec.name: spec
    for spec in (
        # Working presets: the pinned opencode, offline, against the configured endpoint.
        AgentSpec("opencode-acp", "acp", (OPENCODE_EXECUTABLE, "acp"), opencode=True, description="opencode over ACP"),
        AgentSpec(
            "opencode-run",
            "pty",
            (OPENCODE_EXECUTABLE, "run"),
            opencode=True,
            model_flag="--model",
            description="opencode run in a terminal",
        ),
        AgentSpec(
            "opencode", "opencode_server", (OPENCODE_EXECUTABLE, "serve"), opencode=True, description="pooled opencode"
        ),
        # Documented presets: install the agent and provide its credentials to use them.
        AgentSpec(
            "gemini",
            "acp",
            ("gemini", "--acp"),
            model_flag="--model",
            pass_env=("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_CLOUD_PROJECT", "GOOGLE_APPLICATION_CREDENTIALS"),
            description="Gemini CLI over ACP (npm @google/gemini-cli)",
        ),
        AgentSpec(
            "claude-agent-acp",
            "acp",
            ("claude-agent-acp",),
            pass_env=("ANTHROPIC_API_KEY",),
            description="Claude Agent SDK over ACP (npm @zed-industries/claude-agent-acp)",
        ),
        AgentSpec(
            "codex-acp",
            "acp",
            ("codex-acp",),
            pass_env=("OPENAI_API_KEY",),
            description="Codex over ACP (npm @zed-industries/codex-acp)",
        ),
        AgentSpec(
            "goose",
            "acp",
            ("goose", "acp"),
            pass_env=("GOOSE_PROVIDER", "GOOSE_MODEL", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"),
            description="Goose over ACP",
        ),
        AgentSpec(
            "claude",
            "pty",
            ("claude", "-p", "--permission-mode", "acceptEdits"),
            model_flag="--model",
            pass_env=("ANTHROPIC_API_KEY",),
            description="Claude Code, print mode",
        ),
        AgentSpec(
            "codex",
            "pty",
            ("codex", "exec", "--sandbox", "workspace-write"),
            model_flag="--model",
            pass_env=("OPENAI_API_KEY",),
            description="Codex CLI, exec mode",
        ),
        AgentSpec(
            "aider",
            "pty",
            ("aider", "--yes-always", "--no-auto-commits", "--no-pretty"),
            model_flag="--model",
            prompt_flag="--message",
            pass_env=("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_API_BASE"),
            description="aider, one message",
        ),
    )
}


def build_specs(configs: Mapping[str, AgentConfig], presets: Mapping[str, AgentSpec] = PRESETS) -> dict[str, AgentSpec]:
    """The presets with ``[agents.*]`` applied; raises :class:`AgentConfigError` naming the key."""
    specs = dict(presets)
    for name, config in configs.items():
        if not config.enabled:
            specs.pop(name, None)
            continue
        changes = {
            f.name: getattr(config, f.name)
            for f in dataclasses.fields(config)
            if f.name != "enabled" and getattr(config, f.name) is not None
        }
        for flag in ("model_flag", "prompt_flag"):
            if changes.get(flag) == "":
                changes[flag] = None
        base = specs.get(name)
        if base is not None:
            specs[name] = dataclasses.replace(base, **changes)
            continue
        for required in ("transport", "command"):
            if required not in changes:
                raise AgentConfigError(f"agents.{name}.{required}", None, "required for an agent that is not a preset")
        specs[name] = AgentSpec(name=name, **changes)
    return specs


def executable(spec: AgentSpec, opencode_binary: str | None = None) -> Path:
    """The agent's executable: found on PATH (opencode also in the pinned .tools copy)."""
    program = spec.command[0]
    if spec.opencode and program == OPENCODE_EXECUTABLE:
        try:
            return find_opencode(opencode_binary)
        except BackendError as exc:
            raise AgentNotFoundError(str(exc)) from None
    found = shutil.which(program)
    if found is None:
        raise AgentNotFoundError(f"agent {spec.name!r}: {program!r} is not an executable on PATH")
    return Path(found)


def agent_env(spec: AgentSpec, parent: Mapping[str, str], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The agent's whole environment: ``base`` (default: a few harmless variables of ``parent``
    plus HOME), the ``pass_env`` variables of ``parent``, then ``spec.env``."""
    harmless = (*PASSTHROUGH_ENV, "HOME")
    env = {name: parent[name] for name in harmless if name in parent} if base is None else dict(base)
    env.update({name: parent[name] for name in spec.pass_env if name in parent})
    env.update(spec.env)
    return env


@dataclass(frozen=True)
class AgentProbe:
    name: str
    available: bool
    version: str | None = None
    # Why the agent is unavailable, or why its version is unknown.
    detail: str | None = None


async def probe(spec: AgentSpec, *, opencode_binary: str | None = None) -> AgentProbe:
    """Does the agent's command exist, and which version is it? Runs in a worker thread."""
    return await anyio.to_thread.run_sync(probe_sync, spec, opencode_binary)


def probe_sync(spec: AgentSpec, opencode_binary: str | None = None, timeout: float = PROBE_TIMEOUT) -> AgentProbe:
    """:func:`probe` for synchronous callers: ``<executable> <version_args>``, at most ``timeout`` s."""
    try:
        program = executable(spec, opencode_binary)
    except AgentNotFoundError as exc:
        return AgentProbe(spec.name, False, detail=str(exc))
    env = agent_env(spec, os.environ)
    try:
        proc = subprocess.Popen(
            [str(program), *spec.version_args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        return AgentProbe(spec.name, False, detail=f"cannot run {program}: {exc.strerror}")
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        ProcessTree(proc.pid).kill_now()
        proc.communicate()
        return AgentProbe(spec.name, True, detail=f"no version after {timeout:g}s")
    text = (out or err).decode(errors="replace")
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if proc.returncode != 0:
        return AgentProbe(spec.name, True, detail=f"version query exited with code {proc.returncode}")
    return AgentProbe(spec.name, True, version=first[:VERSION_MAX_CHARS] or None)
