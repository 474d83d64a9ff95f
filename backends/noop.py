"""The ``noop`` backend: echoes the input back as one delta.

For tests and benchmarks of the dispatcher on its own; it reaches no model. A task asks
for it with ``agent = 'noop'``.
"""

from __future__ import annotations

from backends.base import Emit, TextDelta, Turn, TurnOutcome, Usage


class NoopBackend:
    execution_path = "noop"
    needs_worktree = False

    async def run_turn(self, turn: Turn, emit: Emit) -> TurnOutcome:
        await emit(TextDelta(turn.input))
        return TurnOutcome.completed(usage=Usage(prompt_tokens=0, completion_tokens=0))
