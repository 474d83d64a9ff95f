"""Pre-started ACP agents: the process start and ``initialize`` off a turn's critical path.

ACP gives each session its own ``cwd``, so an initialized agent does not need to know its
worktree in advance. For every (agent, project, model) a turn used within ``idle`` seconds,
:class:`AgentSpares` keeps ``spec.spare`` processes started and ``initialize``d, launched the
way a turn launches its own (:meth:`Starter.launch`) except that the sandbox makes the project's
worktree directory writable instead of one worktree (the warm opencode servers' sandbox, so a
spare serves only that project) and the process runs there. A turn takes one
(:meth:`AgentSpares.take`), sends only ``session/new`` or ``session/resume`` with its worktree,
and shuts the process down at its end as it would its own: one process still serves one turn.
Taking one wakes the keeper, which starts the next. An opencode spare also opens a session in a
scratch directory of its HOME once initialized: opencode loads its providers, tools and plugins
for its first session. Then, given the project's spare worktrees (``directories``), it warms the
one the next new session will take: a scratch session there, prompted with the warm-up model,
which the service's refusing endpoint answers at once (backends.warmup: no request reaches the
user's model). That directory's ``session/new`` and first prompt, a second each in a fresh
process, are then as quick as a follow-up's; :meth:`AgentSpares.take` prefers the spare warmed in
the turn's directory.

An opencode agent keeps its data per Switchyard session, and opens its database when it starts:
a spare gets a fresh data directory (``<state_dir>/<agent>/.spares/<owner>-<n>``), so it can
serve only a session that has none yet (a new one, or one that never used the agent); after the
turn that directory becomes the session's. A follow-up turn of such an agent starts its own
process, which opens the session's data to resume it. Agents that keep their own data serve any
turn.

A spare that exits while waiting is dropped and replaced; one found dead when a turn takes it is
skipped and the turn starts its own. When the service stops, every spare is shut down (their
sandbox also dies with the service: ``--die-with-parent``); data directories of spares of a
service that died are removed by the next one.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import anyio
import anyio.abc
import anyio.to_thread
from acp import PROTOCOL_VERSION, RequestError, text_block
from pydantic import ValidationError

from backends.acp_process import AgentProcess
from backends.errors import BackendError
from backends.launch import Launch
from backends.registry import AgentSpec
from backends.sandbox import SandboxUnavailable
from backends.warmup import RefusingEndpoint, warmup_model_ref
from kernel import get_logger, owner_gone

log = get_logger("backends.acp_spares")

# A key no turn used for this long has its spares shut down.
DEFAULT_IDLE = 600.0
# How long a spare may take to start and answer ``initialize``.
STARTUP_TIMEOUT = 60.0
# After a spare failed to start, its key waits this long before the next attempt.
RETRY_AFTER = 30.0
# The keeper's look at idleness, at the latest.
CHECK_INTERVAL = 5.0
SPARES_DIR = ".spares"
WARM_UP_DIR = "warm-up"
# How long a new spare waits for a spare worktree to warm, and how long warming it may take.
DIRECTORY_WAIT = 10.0
WARM_TIMEOUT = 30.0
WARM_PROMPT = "Switchyard warm-up"
START_ERRORS = (OSError, ValueError, BackendError, SandboxUnavailable, RequestError, ValidationError, TimeoutError)


@dataclass(frozen=True)
class SpareKey:
    """What a spare is made for: the agent, the project (its worktrees' directory and git
    directory, the sandbox's view) and the task's model (on the command line or in the config)."""

    agent: str
    project_root: Path
    git_dir: Path | None
    model: str | None


class Starter(Protocol):
    """What launches an agent (the AcpBackend): its spec, a launch, and a spare's data directory."""

    spec: AgentSpec

    def launch(
        self,
        model: str | None,
        workdir: Path,
        git_dir: Path | None,
        data_dir: Path | None,
        warmup_url: str | None = None,
    ) -> AbstractAsyncContextManager[Launch]: ...

    def spare_state(self, name: str) -> Path | None: ...


@dataclass
class PreStarted:
    """A started, initialized agent waiting for a turn; the turn that takes it calls :meth:`release`."""

    agent: AgentProcess
    # Its data directory (opencode agents), which becomes the taking session's.
    data_dir: Path | None
    # The spare worktree it warmed (a new session there is quick on it), if any.
    warmed: Path | None = None
    claimed: bool = False
    released: anyio.Event = field(default_factory=anyio.Event)
    changed: anyio.Event = field(default_factory=anyio.Event)

    def poke(self) -> None:
        self.changed.set()

    async def release(self, session_data: Path | None) -> None:
        """The turn is over and has shut the process down: its data becomes ``session_data``."""
        with anyio.CancelScope(shield=True):
            if self.data_dir is not None and session_data is not None:
                try:
                    await anyio.to_thread.run_sync(_adopt_data, self.data_dir, session_data)
                except OSError as exc:
                    log.warning("acp.spare_data_not_kept", path=str(session_data), error=str(exc))
            self.released.set()

    async def until_done(self) -> None:
        """Until the turn that took it released it, or, not taken, it exited or was told to stop."""

        async def exit_watch() -> None:
            await self.agent.process.wait()
            self.poke()

        async with anyio.create_task_group() as tg:
            tg.start_soon(exit_watch)
            while True:
                if self.claimed:
                    await self.released.wait()
                    break
                if not self.agent.alive:
                    break
                await self.changed.wait()
                self.changed = anyio.Event()
            tg.cancel_scope.cancel()


@dataclass
class _Entry:
    key: SpareKey
    starter: Starter
    wanted_at: float
    ready: list[PreStarted] = field(default_factory=list)
    starting: int = 0
    retry_at: float = 0.0
    wake: anyio.Event = field(default_factory=anyio.Event)
    # Spare worktrees a starting spare is warming.
    warming: set[Path] = field(default_factory=set)


class AgentSpares:
    """The pre-started ACP agents of one service; ``async with`` it for the life of the dispatcher."""

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        idle: float = DEFAULT_IDLE,
        directories: Callable[[Path], Sequence[Path]] | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.idle = idle
        # The spare worktrees ready under a project's worktree directory (worktrees.SpareWorktrees).
        self.directories = directories
        self.endpoint: RefusingEndpoint | None = None
        self.owner = f"{os.getpid()}.{secrets.token_hex(4)}"
        self._entries: dict[SpareKey, _Entry] = {}
        self._numbers = itertools.count(1)
        self._tg: anyio.abc.TaskGroup | None = None
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> AgentSpares:
        if self.state_dir is not None:
            await anyio.to_thread.run_sync(_sweep, self.state_dir)
        if self.directories is not None:
            self.endpoint = await self._stack.enter_async_context(RefusingEndpoint())
        self._tg = await self._stack.enter_async_context(anyio.create_task_group())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        tg, self._tg = self._tg, None
        if tg is not None:
            tg.cancel_scope.cancel()
        # Each spare's task shuts its process down (shielded) as it is cancelled.
        await self._stack.aclose()
        self._entries.clear()

    def spare_name(self) -> str:
        return f"{self.owner}-{next(self._numbers)}"

    async def take(
        self, starter: Starter, key: SpareKey, session_data: Path | None, directory: Path | None = None
    ) -> PreStarted | None:
        """A live spare for a turn of ``key`` in ``directory`` whose session's agent data would be
        ``session_data`` (None: the agent keeps its own), the one warmed there if any; or None:
        the turn starts its own process. Either way the key is used now, so spares are kept (or
        made) for it."""
        if starter.spec.spare < 1 or self._tg is None:
            return None
        entry = self._want(starter, key)
        if session_data is not None and await anyio.to_thread.run_sync(os.path.lexists, session_data):
            return None  # its data must be opened at the start: a spare has its own
        entry.ready.sort(key=lambda s: s.warmed != directory)  # the one warmed there first
        while entry.ready:
            spare = entry.ready.pop(0)
            entry.wake.set()
            if await spare.agent.running():
                spare.claimed = True
                spare.poke()
                warmed = spare.warmed is not None and spare.warmed == directory
                log.info("acp.spare_taken", agent=key.agent, pid=spare.agent.process.pid, warmed_here=warmed)
                return spare
            spare.poke()
        return None

    def ready(self, key: SpareKey) -> list[PreStarted]:
        entry = self._entries.get(key)
        return list(entry.ready) if entry else []

    def all_ready(self) -> bool:
        """Every key used recently has its spares (benchmarks wait for it)."""
        return all(
            len(e.ready) >= e.starter.spec.spare or e.retry_at > time.monotonic() for e in self._entries.values()
        )

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {"agent": e.key.agent, "project_root": str(e.key.project_root), "model": e.key.model, "ready": len(e.ready)}
            for e in self._entries.values()
        ]

    # ------------------------------------------------------------------------------ keeping

    def _want(self, starter: Starter, key: SpareKey) -> _Entry:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(key, starter, time.monotonic())
            assert self._tg is not None
            self._tg.start_soon(self._keep, entry)
        entry.wanted_at = time.monotonic()
        return entry

    async def _keep(self, entry: _Entry) -> None:
        """Keep the key's spares until no turn used it for ``idle``; then stop those waiting."""
        try:
            async with anyio.create_task_group() as tg:
                while (left := entry.wanted_at + self.idle - time.monotonic()) > 0:
                    if entry.retry_at <= time.monotonic():
                        while len(entry.ready) + entry.starting < entry.starter.spec.spare:
                            entry.starting += 1
                            tg.start_soon(self._one, entry)
                    with anyio.move_on_after(min(left, CHECK_INTERVAL, max(entry.retry_at - time.monotonic(), 0.1))):
                        await entry.wake.wait()
                    entry.wake = anyio.Event()
                tg.cancel_scope.cancel()
        finally:
            if self._entries.get(entry.key) is entry:
                del self._entries[entry.key]

    async def _one(self, entry: _Entry) -> None:
        """One spare's life: started, initialized, ready; then taken (and waited for until its turn
        released it), or dead, or stopped. Its process and HOME never outlive this task."""
        key, spec = entry.key, entry.starter.spec
        data_dir = entry.starter.spare_state(self.spare_name())
        spare: PreStarted | None = None
        started = False
        try:
            warmup_url = self.endpoint.base_url if self.endpoint is not None and spec.opencode else None
            launch_spare = entry.starter.launch(key.model, key.project_root, key.git_dir, data_dir, warmup_url)
            async with launch_spare as launch:
                agent = await AgentProcess.start(launch, key.project_root, spec.name)
                spare = PreStarted(agent, data_dir)
                async with anyio.create_task_group() as services:
                    services.start_soon(agent.serve)
                    try:
                        with anyio.fail_after(STARTUP_TIMEOUT):
                            init = await agent.initialize()
                        if init.protocol_version != PROTOCOL_VERSION:
                            raise BackendError(f"{spec.name} speaks another ACP version")
                        if launch.home is not None:
                            await self._warm_up(agent, launch.home)
                            if warmup_url is not None:
                                spare.warmed = await self._warm_directory(entry, agent)
                        entry.starting -= 1
                        started = True
                        entry.ready.append(spare)
                        log.info("acp.spare_ready", agent=spec.name, pid=agent.process.pid)
                        await spare.until_done()
                        if not spare.claimed:
                            log.info("acp.spare_exited", agent=spec.name, pid=agent.process.pid)
                    finally:
                        with anyio.CancelScope(shield=True):
                            if spare in entry.ready:
                                entry.ready.remove(spare)
                            await agent.shut_down()
                        services.cancel_scope.cancel()
        except START_ERRORS as exc:
            entry.retry_at = time.monotonic() + RETRY_AFTER
            log.warning("acp.spare_failed", agent=spec.name, error=str(exc), retry_in=RETRY_AFTER)
        except ConnectionError as exc:  # it died during initialize
            log.warning("acp.spare_failed", agent=spec.name, error=str(exc))
        finally:
            if not started:
                entry.starting -= 1
            # A taken spare's data is the session's once released (moved away by then).
            if data_dir is not None and not (spare and spare.claimed and not spare.released.is_set()):
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(shutil.rmtree, data_dir, True)
            entry.wake.set()

    @staticmethod
    async def _warm_up(agent: AgentProcess, home: Path) -> None:
        """opencode loads its providers, tools and plugins for its first session: a spare opens
        one in a scratch directory of its HOME, so a turn's ``session/new`` costs only its own
        directory (measured: about half of a first one)."""
        scratch = home / WARM_UP_DIR
        await anyio.to_thread.run_sync(scratch.mkdir)
        await agent.conn.new_session(cwd=str(scratch), mcp_servers=[])

    async def _warm_directory(self, entry: _Entry, agent: AgentProcess) -> Path | None:
        """Warm a spare worktree of the key's project no other spare has: the directory, or None
        (none came within DIRECTORY_WAIT, or the warm-up failed; the spare serves turns anyway)."""
        assert self.directories is not None
        deadline = time.monotonic() + DIRECTORY_WAIT
        while True:
            taken = {s.warmed for s in entry.ready} | entry.warming
            free = [d for d in self.directories(entry.key.project_root) if d not in taken]
            if free:
                break
            if time.monotonic() > deadline:
                return None
            await anyio.sleep(0.2)
        directory = free[0]
        entry.warming.add(directory)
        try:
            with anyio.fail_after(WARM_TIMEOUT):
                session = await agent.conn.new_session(cwd=str(directory), mcp_servers=[])
                option = next((o for o in session.config_options or () if o.category == "model"), None)
                if option is None:
                    return None  # no way to choose the warm-up model: never prompt the user's
                sid = session.session_id
                await agent.conn.set_config_option(config_id=option.id, session_id=sid, value=warmup_model_ref())
                with contextlib.suppress(RequestError):  # the refusal, as the agent reports it
                    await agent.conn.prompt(session_id=sid, prompt=[text_block(WARM_PROMPT)])
        except (TimeoutError, RequestError, ValidationError) as exc:
            log.warning("acp.spare_not_warmed", agent=entry.key.agent, directory=str(directory), error=str(exc))
            return None
        finally:
            entry.warming.discard(directory)
        log.info("acp.spare_warmed", agent=entry.key.agent, directory=str(directory))
        return directory


def _adopt_data(spare: Path, session: Path) -> None:
    """The spare's data directory as the session's (if the session has none by now)."""
    if os.path.lexists(session):
        shutil.rmtree(spare, ignore_errors=True)
        return
    session.parent.mkdir(parents=True, exist_ok=True)
    spare.rename(session)


def _sweep(state_dir: Path) -> None:
    """Remove the spares' data directories of services that are gone."""
    for directory in _spare_dirs(state_dir):
        if owner_gone(directory.name):
            shutil.rmtree(directory, ignore_errors=True)


def _spare_dirs(state_dir: Path) -> Iterator[Path]:
    with contextlib.suppress(OSError):
        for agent in state_dir.iterdir():
            spares = agent / SPARES_DIR
            if spares.is_dir():
                yield from spares.iterdir()
