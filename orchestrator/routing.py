"""Which backend runs a task: ``tasks.agent`` -> Backend.

- ``NULL`` or ``'native'``: native inference (an OpenAI-compatible endpoint).
- ``'noop'``: the test and benchmark backend (backends.noop), always available.
- any other name: a configured agent from ``agents`` (name -> factory, built on first use and
  kept, so a pooled backend stays warm), or ``unavailable`` (configured, but e.g. its binary is
  missing; the value says why).

Anything else fails the task with ``failure_reason='unknown_agent'``; a configured agent that
cannot be used fails it with ``'agent_unavailable'``. Never silently another backend.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial

from backends.acp import AcpBackend
from backends.base import Backend
from backends.errors import BackendError
from backends.native import NativeBackend
from backends.noop import NoopBackend
from backends.opencode_pool import OpencodePool
from backends.opencode_server import OpencodeServerBackend
from backends.pty import PtyBackend
from backends.sandbox import Sandbox
from orchestrator.config import Config
from orchestrator.errors import TaskRejected

NATIVE = "native"
NOOP = "noop"
UNKNOWN_AGENT = "unknown_agent"
AGENT_UNAVAILABLE = "agent_unavailable"
# The registry preset of the opencode_server transport.
OPENCODE_SERVER_AGENT = "opencode"

BackendFactory = Callable[[], Backend]


class Router:
    def __init__(
        self,
        *,
        native: BackendFactory | None = None,
        agents: Mapping[str, BackendFactory] | None = None,
        unavailable: Mapping[str, str] | None = None,
    ) -> None:
        factories: dict[str, BackendFactory] = {NOOP: NoopBackend}
        if native is not None:
            factories[NATIVE] = native
        for name, factory in (agents or {}).items():
            if name in (NATIVE, NOOP):
                raise ValueError(f"agent name {name!r} is reserved")
            factories[name] = factory
        self._factories = factories
        self._unavailable = dict(unavailable or {})
        self._backends: dict[str, Backend] = {}

    @property
    def agent_names(self) -> list[str]:
        """Every name a task may ask for (``native`` only when configured)."""
        return sorted({*self._factories, *self._unavailable})

    def route(self, agent: str | None) -> Backend:
        """The backend for ``tasks.agent``; raises TaskRejected with the failure reason."""
        name = agent or NATIVE
        backend = self._backends.get(name)
        if backend is not None:
            return backend
        if name in self._unavailable:
            raise TaskRejected(AGENT_UNAVAILABLE, f"agent {name!r} is unavailable: {self._unavailable[name]}")
        factory = self._factories.get(name)
        if factory is None:
            if name == NATIVE:
                raise TaskRejected(AGENT_UNAVAILABLE, "native inference is not configured on this dispatcher")
            raise TaskRejected(UNKNOWN_AGENT, f"unknown agent {name!r} (known: {', '.join(self.agent_names)})")
        try:
            backend = factory()
        except BackendError as exc:
            raise TaskRejected(AGENT_UNAVAILABLE, f"agent {name!r} could not be started: {exc}") from exc
        self._backends[name] = backend
        return backend


def agent_sandbox(config: Config) -> Sandbox:
    """The sandbox of every agent process; the data directory and the worktree root are hidden in it."""
    return Sandbox(config.sandbox, protected=(config.data_dir, config.worktrees.root))


def build_router(
    config: Config, *, opencode_pool: OpencodePool | None = None, sandbox: Sandbox | None = None
) -> Router:
    """The router of a configured service.

    Every ``acp`` and ``pty`` agent of the registry (presets plus ``[agents.*]``) is routed to a
    one-shot AcpBackend/PtyBackend under the ``[permissions]`` policy, in ``sandbox`` (default:
    :func:`agent_sandbox`). The ``opencode`` agent runs on the service's warm ``opencode_pool``
    (entered once by whoever runs the dispatcher).
    """
    sandbox = sandbox or agent_sandbox(config)
    agents: dict[str, BackendFactory] = {}
    for spec in config.agent_specs().values():
        # A missing executable fails the turn itself (agent_unavailable), so installing an
        # agent later needs no restart.
        if spec.transport in ("acp", "pty"):
            track = AcpBackend if spec.transport == "acp" else PtyBackend
            agents[spec.name] = partial(track, spec, config.permissions, opencode=config.opencode, sandbox=sandbox)
    if opencode_pool is not None:
        agents[OPENCODE_SERVER_AGENT] = partial(OpencodeServerBackend, opencode_pool, config.permissions)
    return Router(native=lambda: NativeBackend(config.native), agents=agents)
