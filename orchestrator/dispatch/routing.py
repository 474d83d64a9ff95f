"""Which backend runs a task: ``tasks.agent`` -> Backend.

- ``NULL`` or ``'native'``: native inference (an OpenAI-compatible endpoint).
- ``'noop'``: the test and benchmark backend (backends.noop), always available.
- any other name: a configured agent from ``agents`` (name -> factory, built on first use and
  kept, so a pooled backend stays warm), or ``unavailable`` (configured, but e.g. its binary is
  missing; the value says why).

Anything else fails the task with ``failure_reason='unknown_agent'``; a configured agent that
cannot be used fails it with ``'agent_unavailable'``. Never silently another backend.

Backends that hold resources for the life of the dispatcher (the native track's HTTP client)
have an ``aclose``; :meth:`Router.aclose` calls it on every backend built so far.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import anyio

from backends import Backend, BackendError, NoopBackend
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

    @property
    def runnable_names(self) -> list[str]:
        """The names it has a backend for (``unavailable`` ones left out)."""
        return sorted(self._factories)

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

    async def aclose(self) -> None:
        """Release what the backends built so far hold; a later ``route`` builds them again."""
        backends, self._backends = list(self._backends.values()), {}
        with anyio.CancelScope(shield=True):
            for backend in backends:
                close = getattr(backend, "aclose", None)
                if close is not None:
                    await close()
