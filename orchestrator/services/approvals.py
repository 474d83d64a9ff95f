"""A person's reply to a turn that asks (the WebSocket ``permission_reply`` / ``question_reply``).

The gateway has checked that the client's token sees the request's project. The reply locks the
request row, so of two replies the first decides and the second is told who did
(:class:`AlreadyDecided`); it records the decision, remembers an "allow always" as grants of the
session, and appends the ``permission_resolved`` (``question_resolved``) frame, all in one
transaction. Its commit NOTIFYs ``permission_replies``: the waiting turn, in whichever dispatcher,
answers its agent (orchestrator.dispatch.approvals). A request whose turn is gone is withdrawn
instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from backends import ALLOW_OPTION_KINDS, REJECT_OPTION_KINDS
from kernel import append_events
from orchestrator.dispatch.approvals import PERMISSION, QUESTION, resolved_frame
from orchestrator.errors import AlreadyDecided, BadInput, NotFound
from orchestrator.services import queries as q

# A reply's ``decision``: the kind of option it picks among those the agent offered.
DECISIONS = ("allow_once", "allow_always", "reject")
WITHDRAWN_REASON = "the turn that asked is gone"


@dataclass(frozen=True)
class Decision:
    request_id: int
    session_id: int
    state: str
    option_id: str | None
    remember: str | None
    answers: list[list[str]] | None
    decided_by: str


async def reply_permission(
    pool: asyncpg.Pool, request_id: int, *, option_id: str | None, decision: str | None, by: str
) -> Decision:
    """Decide a permission request with one of its options (by id, or by ``decision``)."""

    def decide(row: Mapping[str, Any]) -> tuple[str, str | None, str | None, Any]:
        option = choose(row["options"], option_id, decision)
        allowed = option["kind"] in ALLOW_OPTION_KINDS
        always = allowed and (decision == "allow_always" or option["kind"] == "allow_always")
        return ("allowed" if allowed else "denied"), option["option_id"], ("session" if always else "once"), None

    return await _reply(pool, request_id, PERMISSION, decide, by)


async def reply_question(
    pool: asyncpg.Pool, request_id: int, *, answers: Sequence[Sequence[str]] | None, by: str
) -> Decision:
    """Answer a question request (one list of labels per question), or dismiss it (``None``)."""

    def decide(row: Mapping[str, Any]) -> tuple[str, str | None, str | None, Any]:
        if answers is None:
            return "denied", None, None, None
        return "answered", None, None, check_answers(row["questions"] or [], answers)

    return await _reply(pool, request_id, QUESTION, decide, by)


async def _reply(pool: asyncpg.Pool, request_id: int, kind: str, decide: Any, by: str) -> Decision:
    withdrawn: asyncpg.Record | None = None
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(q.LOCK_PERMISSION_REQUEST, request_id)
        if row is None or row["kind"] != kind:
            raise NotFound(f"no {kind} request {request_id}")
        if row["state"] != "pending":
            raise AlreadyDecided(already(row))
        if not row["turn_alive"]:
            withdrawn = await conn.fetchrow(
                q.DECIDE_PERMISSION_REQUEST, request_id, "withdrawn", None, None, None, None, WITHDRAWN_REASON
            )
            await append_events(conn, row["session_id"], [resolved_frame(withdrawn)])
        else:
            state, option_id, remember, answers = decide(row)
            decided = await conn.fetchrow(
                q.DECIDE_PERMISSION_REQUEST, request_id, state, option_id, remember, answers, by, None
            )
            if remember == "session":
                patterns = list(row["patterns"]) or ["*"]
                await conn.execute(q.INSERT_GRANT, row["session_id"], row["tool_kind"], request_id, by, patterns)
            await append_events(conn, row["session_id"], [resolved_frame(decided)])
            return Decision(request_id, row["session_id"], state, option_id, remember, answers, by)
    assert withdrawn is not None
    raise AlreadyDecided(already(withdrawn))


def choose(options: Sequence[Mapping[str, Any]], option_id: str | None, decision: str | None) -> Mapping[str, Any]:
    """The offered option a reply picks: by its id, or the first of the decision's kinds."""
    if option_id is not None:
        for option in options:
            if option["option_id"] == option_id:
                return option
        offered = ", ".join(o["option_id"] for o in options) or "none"
        raise BadInput(f"option {option_id!r} was not offered (offered: {offered})")
    kinds = {
        "allow_once": ("allow_once",),
        # Switchyard remembers it for the session even if the agent has no "always" of its own.
        "allow_always": ("allow_always", "allow_once"),
        "reject": REJECT_OPTION_KINDS,
    }[decision or ""]
    for kind in kinds:
        for option in options:
            if option["kind"] == kind:
                return option
    raise BadInput(f"the agent offered no option to {decision} (offered: {', '.join(o['kind'] for o in options)})")


def check_answers(questions: Sequence[Mapping[str, Any]], answers: Sequence[Sequence[str]]) -> list[list[str]]:
    """The answers if they fit the questions: one list per question; one label unless it allows
    ``multiple``; offered labels only, unless the question allows a ``custom`` answer."""
    if len(answers) != len(questions):
        raise BadInput(f"{len(questions)} question(s) need {len(questions)} answer(s), not {len(answers)}")
    for number, (question, answer) in enumerate(zip(questions, answers, strict=True), start=1):
        if not answer:
            raise BadInput(f"answer {number} is empty")
        if len(answer) > 1 and not question.get("multiple"):
            raise BadInput(f"question {number} takes one answer")
        labels = {o.get("label") for o in question.get("options") or ()}
        if question.get("custom") is False and not set(answer) <= labels:
            raise BadInput(f"answer {number} must be among {', '.join(sorted(map(str, labels)))}")
    return [list(a) for a in answers]


def already(row: Mapping[str, Any]) -> str:
    """Who (or what) decided a request first, for the second reply's error."""
    when = row["decided_at"].isoformat() if row["decided_at"] else "?"
    if row["decided_by"]:
        return f"request {row['id']} was already {row['state']} by {row['decided_by']} at {when}"
    return f"request {row['id']} is already {row['state']} ({row['reason'] or row['state']}) since {when}"
