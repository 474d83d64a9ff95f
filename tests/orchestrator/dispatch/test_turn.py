"""One turn's own logic: which claimed rows are refused and why, how outcomes become results."""

from __future__ import annotations

import uuid
from dataclasses import replace

import anyio
import pytest

from backends import TurnOutcome, Usage
from orchestrator.dispatch import ClaimedTask, DispatcherSettings, Router
from orchestrator.dispatch.sink import TurnSink
from orchestrator.dispatch.turn import (
    SESSION_TITLE_CHARS,
    StopReason,
    TaskState,
    TurnHandle,
    TurnResult,
    TurnRunner,
    _check_task,
    failed,
    session_title,
    watch_turns,
)
from orchestrator.errors import TaskRejected

TASK = ClaimedTask(
    id=1,
    project_id=10,
    session_id=20,
    input="do it",
    agent="noop",
    model=None,
    mode_id=None,
    attempt=1,
    max_attempts=3,
    claim_token=uuid.uuid4(),
    expired=False,
    cancel_requested=False,
    project_exists=True,
    session_project_id=10,
    session_status="active",
)
SETTINGS = DispatcherSettings(retry_backoff=2.0, retry_backoff_max=5.0, turn_timeout=60.0, inactivity_timeout=30.0)


def runner() -> TurnRunner:
    # Only the pure parts are used here; nothing touches the pool or the flusher.
    return TurnRunner(None, SETTINGS, Router(), None, None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"project_id": None}, "project_not_found"),
        ({"project_exists": False}, "project_not_found"),
        ({"session_project_id": None}, "session_not_found"),
        ({"session_project_id": 11}, "session_project_mismatch"),
        ({"session_status": "archived"}, "session_archived"),
        ({"input": "  \n "}, "empty_input"),
        ({"expired": True}, "expired"),
    ],
)
def test_bad_rows_are_refused_with_their_own_reason(changes: dict[str, object], reason: str) -> None:
    with pytest.raises(TaskRejected) as refused:
        _check_task(replace(TASK, **changes))  # type: ignore[arg-type]
    assert refused.value.reason == reason and refused.value.message


def test_a_good_row_names_its_project_and_a_sessionless_one_is_fine() -> None:
    assert _check_task(TASK) == 10
    assert _check_task(replace(TASK, session_id=None, session_project_id=None, session_status=None)) == 10


def test_titles_are_one_line_and_bounded() -> None:
    assert session_title("  fix\n\tthe   build  ") == "fix the build"
    assert len(session_title("x" * 500)) == SESSION_TITLE_CHARS


@pytest.mark.anyio
async def test_outcomes_become_results() -> None:
    run, sink = runner(), TurnSink(1, 20, "do it", 1)
    done = run._from_outcome(TASK, TurnOutcome.completed("end_turn", Usage(3, 4)), sink)
    assert (done.state, done.attempt_outcome, done.stop_reason, done.usage) == (
        TaskState.COMPLETED, "completed", "end_turn", Usage(3, 4),
    )  # fmt: skip
    permanent = run._from_outcome(TASK, TurnOutcome.failed("model_rejected", "bad request"), sink)
    assert (permanent.state, permanent.failure_reason, permanent.message_status) == (
        TaskState.FAILED, "model_rejected", "failed",
    )  # fmt: skip
    retried = run._from_outcome(TASK, TurnOutcome.failed("model_unreachable", "down", transient=True), sink)
    assert (retried.state, retried.attempt_outcome, retried.retry_delay) == (TaskState.PENDING, "retry", 2.0)
    told = run._from_outcome(TASK, TurnOutcome.failed("model_rate_limited", "429", transient=True, retry_after=7), sink)
    assert told.retry_delay == 7


def test_transient_failures_stop_being_retried_at_max_attempts() -> None:
    last = replace(TASK, attempt=3)
    result = runner()._retry_or_fail("model_unreachable", "down", last)
    assert result.state is TaskState.FAILED and "attempt 3 of 3" in (result.error or "")
    assert runner()._retry_or_fail("x", "y", replace(TASK, attempt=3), 1.0).state is TaskState.FAILED
    assert runner()._retry_or_fail("x", "y", replace(TASK, attempt=2)).retry_delay == 4.0


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("stop", "state", "reason"),
    [
        (StopReason.CANCELLED, TaskState.CANCELLED, "cancelled"),
        (StopReason.TIMEOUT, TaskState.FAILED, "timeout"),
        (StopReason.INACTIVE, TaskState.FAILED, "inactive"),
        (StopReason.SHUTDOWN, TaskState.PENDING, "shutdown"),
    ],
)
async def test_stops_from_outside_win_over_what_the_backend_was_doing(
    stop: StopReason, state: TaskState, reason: str
) -> None:
    handle = TurnHandle(TASK)
    handle.abort(stop)
    settled = runner()._settle(handle, None, TurnSink(1, 20, "do it", 1))
    assert settled is not None and (settled.state, settled.failure_reason) == (state, reason)


@pytest.mark.anyio
async def test_a_lost_lease_writes_nothing_and_a_finished_turn_keeps_its_result() -> None:
    lost = TurnHandle(TASK)
    lost.abort(StopReason.LEASE_LOST)
    assert runner()._settle(lost, failed("x", "y"), TurnSink(1, 20, "", 1)) is None
    finished = TurnHandle(TASK)
    finished.reason = StopReason.CANCELLED  # arrived after the backend completed, scope not cancelled
    result = TurnResult(TaskState.COMPLETED, "completed")
    assert runner()._settle(finished, result, TurnSink(1, 20, "", 1)) is result


@pytest.mark.anyio
async def test_shutdown_on_the_last_attempt_fails_instead_of_handing_back() -> None:
    handle = TurnHandle(replace(TASK, attempt=3))
    handle.abort(StopReason.SHUTDOWN)
    settled = runner()._settle(handle, None, TurnSink(1, 20, "", 3))
    assert settled is not None
    assert (settled.state, settled.failure_reason, settled.attempt_outcome) == (
        TaskState.FAILED,
        "shutdown",
        "interrupted",
    )


@pytest.mark.anyio
async def test_the_inactivity_watch_spares_a_turn_waiting_for_a_person() -> None:
    idle, waiting = TurnHandle(TASK), TurnHandle(replace(TASK, id=2))
    for handle in (idle, waiting):
        handle.executing = True
        handle.sink = TurnSink(handle.task.id, 20, "x", 1)
        handle.sink.last_activity -= 10
    assert waiting.sink is not None
    waiting.sink.waiting = 1
    with anyio.move_on_after(0.5):
        await watch_turns(lambda: [idle, waiting], 0.2)
    assert (idle.reason, waiting.reason) == (StopReason.INACTIVE, None)
