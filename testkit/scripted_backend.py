"""A backend a test scripts: what it emits, whether it waits, what each attempt returns.

It records every turn it was given and every turn that was aborted (cancelled while running),
so a test can check that cancellation really reached the backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio

from backends.base import BackendEvent, Emit, Turn, TurnOutcome


@dataclass
class ScriptedBackend:
    events: Sequence[BackendEvent] = ()
    # Outcome of attempt n is outcomes[n-1] (the last one repeats); default: completed.
    outcomes: Sequence[TurnOutcome] = ()
    # Wait after emitting until release() (or cancellation).
    block: bool = False
    # Wait this long between events.
    pause: float = 0.0
    needs_worktree: bool = False
    # Called with the turn before returning (a test can edit the worktree here).
    work: Callable[[Turn], None] | None = None
    execution_path: str = "noop"
    turns: list[Turn] = field(default_factory=list)
    aborted: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._started = anyio.Event()
        self._released = anyio.Event()

    async def wait_started(self) -> None:
        await self._started.wait()

    def release(self) -> None:
        self._released.set()

    async def run_turn(self, turn: Turn, emit: Emit) -> TurnOutcome:
        self.turns.append(turn)
        self._started.set()
        try:
            for event in self.events:
                if self.pause:
                    await anyio.sleep(self.pause)
                await emit(event)
            if self.block:
                await self._released.wait()
        except anyio.get_cancelled_exc_class():
            self.aborted.append(turn.task_id)
            raise
        if self.work is not None:
            self.work(turn)
        if not self.outcomes:
            return TurnOutcome.completed()
        return self.outcomes[min(turn.attempt, len(self.outcomes)) - 1]
