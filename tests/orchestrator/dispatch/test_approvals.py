"""A turn's asker against a real database: asking, being answered through LISTEN, the timeout,
withdrawal, remembered grants; and replies, the first of which wins."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial

import anyio
import asyncpg
import pytest

from backends import ApprovalRequest, AskOption, QuestionRequest
from kernel import Listener, connect
from orchestrator.dispatch.approvals import CHANNEL, Approvals, ReplyBoard, TurnAsker, withdraw_orphans
from orchestrator.dispatch.queue import ClaimedTask
from orchestrator.dispatch.sink import TurnSink
from orchestrator.errors import AlreadyDecided, BadInput, NotFound
from orchestrator.services import approvals as replies
from testkit.rows import add_project, add_session
from tests.dispatching import holds, wait_for

pytestmark = pytest.mark.anyio

OPTIONS = (
    AskOption("once", "allow_once", "Allow once"),
    AskOption("always", "allow_always", "Always allow"),
    AskOption("no", "reject_once", "Reject"),
)
BASH = ApprovalRequest("bash", "execute", "git status", OPTIONS, "call-1", "git status")


@dataclass
class Turn:
    pool: asyncpg.Pool
    board: ReplyBoard
    task: ClaimedTask
    sink: TurnSink

    def asker(self, ask_timeout: float = 30.0) -> TurnAsker:
        return Approvals(self.pool, self.board, ask_timeout).asker(self.task, self.sink)


@pytest.fixture
async def turn(pool: asyncpg.Pool, db_url: str) -> AsyncIterator[Turn]:
    """A running task of a session, its sink, and a reply board woken by a real LISTEN connection."""
    project = await add_project(pool)
    session = await add_session(pool, project)
    token = uuid.uuid4()
    task_id = await pool.fetchval(
        """INSERT INTO tasks (project_id, session_id, input, state, claim_token, lease_expires_at, started_at, attempt)
           VALUES ($1, $2, 'go', 'running', $3, now() + interval '1 hour', now(), 1) RETURNING id""",
        project,
        session,
        token,
    )
    claimed = ClaimedTask(
        task_id, project, session, "go", "fake", None, None, 1, 3, token, False, False, True, project, "active"
    )
    sink = TurnSink(task_id, session, "go", 1)
    sink.open_message()
    board = ReplyBoard()
    listener = Listener(partial(connect, db_url), {CHANNEL: board.on_notify}, name="test", health_interval=5.0)
    async with anyio.create_task_group() as tg:
        await tg.start(listener.run)
        yield Turn(pool, board, claimed, sink)
        tg.cancel_scope.cancel()


async def pending(pool: asyncpg.Pool) -> int:
    request_id: int | None = None

    async def asked() -> bool:
        nonlocal request_id
        request_id = await pool.fetchval("SELECT id FROM permission_requests WHERE state = 'pending'")
        return request_id is not None

    await wait_for(asked, "a pending request")
    assert request_id is not None
    return request_id


async def frames(pool: asyncpg.Pool, session_id: int, *types: str) -> list[dict[str, object]]:
    rows = await pool.fetch(
        "SELECT type, payload FROM session_events WHERE session_id = $1 AND type = ANY($2) ORDER BY seq",
        session_id,
        list(types),
    )
    return [{"type": r["type"], **r["payload"]} for r in rows]


async def test_a_reply_reaches_the_waiting_turn_and_a_second_one_is_refused(turn: Turn) -> None:
    answers = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: _collect(turn.asker().permission(BASH), answers))
        request_id = await pending(turn.pool)
        assert turn.sink.waiting == 1  # the inactivity watch leaves the turn alone
        decided = await replies.reply_permission(turn.pool, request_id, option_id=None, decision="allow_once", by="ann")
        assert (decided.state, decided.option_id, decided.remember) == ("allowed", "once", "once")
        with pytest.raises(AlreadyDecided, match="already allowed by ann"):
            await replies.reply_permission(turn.pool, request_id, option_id="no", decision=None, by="bob")
    [answer] = answers
    assert (answer.allowed, answer.option_id, answer.reason) == (True, "once", "allowed by ann")
    assert turn.sink.waiting == 0
    session = turn.sink.session_id
    assert session is not None
    asked, resolved = await frames(turn.pool, session, "permission_request", "permission_resolved")
    assert (asked["request_id"], asked["command"], asked["tool_kind"]) == (request_id, "git status", "execute")
    assert asked["message_id"] == turn.sink.message_id is not None
    assert [o["option_id"] for o in asked["options"]] == ["once", "always", "no"]  # type: ignore[attr-defined]
    assert (resolved["state"], resolved["decided_by"], resolved["reason"]) == ("allowed", "ann", "allowed by ann")


async def test_of_two_concurrent_replies_exactly_one_decides(turn: Turn) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(turn.asker().permission, BASH)
        request_id = await pending(turn.pool)
        outcomes: list[str] = []

        async def reply(by: str, decision: str) -> None:
            try:
                await replies.reply_permission(turn.pool, request_id, option_id=None, decision=decision, by=by)
                outcomes.append(f"won:{by}")
            except AlreadyDecided as exc:
                outcomes.append(f"lost:{exc}")

        async with anyio.create_task_group() as racers:
            racers.start_soon(reply, "ann", "allow_once")
            racers.start_soon(reply, "bob", "reject")
    won = [o for o in outcomes if o.startswith("won:")]
    lost = [o for o in outcomes if o.startswith("lost:")]
    assert len(won) == 1 and len(lost) == 1
    assert f"by {won[0].removeprefix('won:')}" in lost[0]
    assert await turn.pool.fetchval("SELECT count(*) FROM session_events WHERE type = 'permission_resolved'") == 1


async def test_nobody_answering_expires_with_the_reject_option(turn: Turn) -> None:
    answer = await turn.asker(ask_timeout=0.3).permission(BASH)
    assert (answer.allowed, answer.option_id) == (False, "no")
    assert "0.3 s" in answer.reason
    row = await turn.pool.fetchrow("SELECT state, option_id, decided_by FROM permission_requests")
    assert (row["state"], row["option_id"], row["decided_by"]) == ("expired", "no", None)


async def test_a_cancelled_wait_withdraws_the_request(turn: Turn) -> None:
    with anyio.move_on_after(0.5):
        await turn.asker().permission(BASH)
    assert await turn.pool.fetchval("SELECT state FROM permission_requests") == "withdrawn"
    session = turn.sink.session_id
    assert session is not None
    [resolved] = await frames(turn.pool, session, "permission_resolved")
    assert resolved["state"] == "withdrawn"
    with pytest.raises(AlreadyDecided, match="withdrawn"):
        await replies.reply_permission(turn.pool, 1, option_id="once", decision=None, by="ann")


async def test_allow_always_grants_the_session_commands_of_the_same_program(turn: Turn) -> None:
    answers = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: _collect(turn.asker().permission(BASH), answers))
        request_id = await pending(turn.pool)
        decided = await replies.reply_permission(
            turn.pool, request_id, option_id=None, decision="allow_always", by="ann"
        )
        assert (decided.option_id, decided.remember) == ("always", "session")
    patterns = await turn.pool.fetch("SELECT pattern FROM permission_grants ORDER BY pattern")
    assert [p["pattern"] for p in patterns] == ["git", "git *"]
    later = await turn.asker().permission(ApprovalRequest("bash", "execute", "git log", OPTIONS, command="git log -3"))
    assert (later.allowed, later.option_id, later.remembered) == (True, "once", True)
    assert later.reason == "allowed always for this session by ann"
    # Not another program, and not a command that chains one in.
    for command in ("rm -rf build", "git status; rm -rf ."):
        with anyio.move_on_after(0.3):
            await turn.asker().permission(ApprovalRequest("bash", "execute", command, OPTIONS, command=command))
    assert await turn.pool.fetchval("SELECT count(*) FROM permission_requests") == 3


async def test_a_reply_to_a_request_whose_turn_is_gone_withdraws_it(turn: Turn) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(turn.asker().permission, BASH)
        request_id = await pending(turn.pool)
        await turn.pool.execute("UPDATE tasks SET claim_token = gen_random_uuid() WHERE id = $1", turn.task.id)
        with pytest.raises(AlreadyDecided, match="the turn that asked is gone"):
            await replies.reply_permission(turn.pool, request_id, option_id="once", decision=None, by="ann")
        tg.cancel_scope.cancel()


async def test_orphaned_requests_are_withdrawn_by_the_sweep(turn: Turn) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(turn.asker().permission, BASH)
        await pending(turn.pool)
        await turn.pool.execute("UPDATE tasks SET state = 'failed', ended_at = now() WHERE id = $1", turn.task.id)
        assert await withdraw_orphans(turn.pool) == 1
        await wait_for(holds(lambda: turn.sink.waiting == 0), "the turn to learn it")
    assert await turn.pool.fetchval("SELECT state FROM permission_requests") == "withdrawn"


async def test_bad_replies_are_refused_and_change_nothing(turn: Turn) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(turn.asker().permission, BASH)
        request_id = await pending(turn.pool)
        with pytest.raises(BadInput, match="option 'maybe' was not offered"):
            await replies.reply_permission(turn.pool, request_id, option_id="maybe", decision=None, by="ann")
        with pytest.raises(NotFound, match="no question request"):
            await replies.reply_question(turn.pool, request_id, answers=[["x"]], by="ann")
        assert await turn.pool.fetchval("SELECT state FROM permission_requests") == "pending"
        tg.cancel_scope.cancel()


async def test_a_question_is_answered_with_labels(turn: Turn) -> None:
    options = [{"label": "red", "description": ""}, {"label": "blue", "description": ""}]
    question = QuestionRequest(({"question": "Colour?", "header": "Colour", "options": options, "custom": False},))
    answers = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: _collect(turn.asker().question(question), answers))
        request_id = await pending(turn.pool)
        with pytest.raises(BadInput, match="1 question"):
            await replies.reply_question(turn.pool, request_id, answers=[["red"], ["blue"]], by="ann")
        with pytest.raises(BadInput, match="among blue, red"):
            await replies.reply_question(turn.pool, request_id, answers=[["green"]], by="ann")
        with pytest.raises(BadInput, match="takes one answer"):
            await replies.reply_question(turn.pool, request_id, answers=[["red", "blue"]], by="ann")
        await replies.reply_question(turn.pool, request_id, answers=[["blue"]], by="ann")
    [answer] = answers
    assert answer.answers == (("blue",),)
    session = turn.sink.session_id
    assert session is not None
    asked, resolved = await frames(turn.pool, session, "question", "question_resolved")
    assert asked["questions"] == [question.questions[0]]
    assert (resolved["state"], resolved["answers"]) == ("answered", [["blue"]])


async def _collect(awaitable: object, into: list[object]) -> None:
    into.append(await awaitable)  # type: ignore[misc]
