"""An ``emit`` callback for backend tests: records events and lets a test wait for one."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio

from backends.base import BackendEvent, TextDelta

E = TypeVar("E", bound=BackendEvent)


class Recorder:
    def __init__(self) -> None:
        self.events: list[BackendEvent] = []
        self._changed = anyio.Event()

    async def __call__(self, event: BackendEvent) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds (checked after every event)."""
        while not predicate():
            await self._changed.wait()

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, TextDelta))

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]
