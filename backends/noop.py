"""The ``noop`` backend: echoes the input back as one delta.

For tests and benchmarks of the dispatcher on its own; it reaches no model. A task asks
for it with ``agent = 'noop'``.

One input convention lets tests hold a turn open in a real dispatcher process (which can
only run the backends its router knows): ``sleep:<seconds>`` waits that long, then echoes
as usual. Cancelling the turn interrupts the wait, as it would abort a real agent.
"""

from __future__ import annotations

import anyio

from backends.base import Emit, TextDelta, Turn, TurnOutcome, Usage

SLEEP_PREFIX = "sleep:"


class NoopBackend:
    execution_path = "noop"
    needs_worktree = False

    async def run_turn(self, turn: Turn, emit: Emit) -> TurnOutcome:
        if turn.input.startswith(SLEEP_PREFIX):
            try:
                seconds = float(turn.input.removeprefix(SLEEP_PREFIX))
            except ValueError:
                return TurnOutcome.failed("bad_input", f"noop: {turn.input!r} is not sleep:<seconds>")
            await anyio.sleep(seconds)
        await emit(TextDelta(turn.input))
        return TurnOutcome.completed(usage=Usage(prompt_tokens=0, completion_tokens=0))
