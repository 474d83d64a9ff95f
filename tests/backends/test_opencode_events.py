"""The opencode event translation, replayed against a real ``/event`` capture of opencode 1.18.33.

The capture (``captures/opencode-1.18.33_event_dir-proj.sse``, from PROTOCOLS.md B.8-B.10) holds
five prompts on one directory instance: a plain reply, a bash tool call, a tool call that asked
for permission (another session), an aborted ``sleep 30``, and a reply after the abort. Each test
feeds the *whole* stream to a translator for one prompt, so events of the other prompts and
sessions are always part of the input and must be ignored.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from backends.base import BackendEvent, Plan, ReasoningDelta, TextDelta, ToolCall, ToolStatus, Usage
from backends.opencode_events import EarlyError, Idle, PermissionAsked, Retrying, Signal, TurnTranslator

CAPTURES = Path(__file__).parent / "captures"
SESSION = "ses_df07676ddffe5xiqajdOjbHOZK"
OTHER_SESSION = "ses_df075e87bffeUMp1Q0CAQW2nyk"
PLAIN = "msg_20f899562001cLEOVFwBycTb4W"
TOOL = "msg_20f89dc69001nrn0tS6Ax6G6zv"
PERMISSION = "msg_20f8a2448001YOliuecnRRcyNq"
ABORTED = "msg_20f8aa6e50011DIE51EGj2nO22"
AFTER_ABORT = "msg_20f8d7346001al3tjb572fvx1M"


def capture() -> list[dict[str, Any]]:
    lines = (CAPTURES / "opencode-1.18.33_event_dir-proj.sse").read_text().splitlines()
    return [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]


def replay(translator: TurnTranslator, events: Iterable[Mapping[str, Any]]) -> list[BackendEvent | Signal]:
    out: list[BackendEvent | Signal] = []
    for event in events:
        out += translator.handle(event)
    return out


def text(items: Iterable[object], kind: type[TextDelta] | type[ReasoningDelta] = TextDelta) -> str:
    return "".join(i.text for i in items if isinstance(i, kind))


def until_idle(items: list[BackendEvent | Signal]) -> list[BackendEvent | Signal]:
    return items[: next(i for i, item in enumerate(items) if isinstance(item, Idle)) + 1]


def test_plain_reply_streams_each_piece_once() -> None:
    translator = TurnTranslator(SESSION, PLAIN)
    out = until_idle(replay(translator, capture()))
    assert text(out) == "Hello from the mock model."
    assert [i.text for i in out if isinstance(i, TextDelta)] == ["Hello ", "from ", "the mock model."]
    assert text(out, ReasoningDelta) == "Short thought."
    # The prompt itself (a text part of the user message) is never echoed.
    assert "Say hi please" not in text(out)
    assert translator.usage == Usage(100, 20)
    assert translator.stop_reason == "end_turn"
    assert translator.error is None


def test_tool_call_snapshots_and_text_of_every_step() -> None:
    translator = TurnTranslator(SESSION, TOOL)
    out = until_idle(replay(translator, capture()))
    calls = [i for i in out if isinstance(i, ToolCall)]
    assert {c.tool_call_id for c in calls} == {"call_mock_1"}
    assert calls[0].status is ToolStatus.PENDING
    assert calls[-1].status is ToolStatus.COMPLETED
    assert calls[-1].kind == "execute"
    assert calls[-1].output == "hello-from-tool\n"
    assert calls[-1].input["command"] == "echo hello-from-tool > out.txt && cat out.txt"
    # Partial output of the running command is shown while it runs.
    assert any(c.status is ToolStatus.IN_PROGRESS and c.output == "hello-from-tool\n" for c in calls)
    # Identical snapshots are not sent twice.
    assert all(a != b for a, b in itertools.pairwise(calls))
    assert text(out) == "I will run a command.The tool ran. Final answer: done."
    assert translator.usage.total > 0
    assert translator.stop_reason == "end_turn"


def test_permission_request_of_its_own_session_only() -> None:
    translator = TurnTranslator(OTHER_SESSION, PERMISSION)
    out = until_idle(replay(translator, capture()))
    asked = [i for i in out if isinstance(i, PermissionAsked)]
    assert len(asked) == 1
    assert asked[0].request_id == "per_20f8a25680011yJvoHVLUBxUyz"
    assert asked[0].permission == "bash"
    assert asked[0].tool_call_id == "call_mock_1"
    assert asked[0].metadata["command"] == "echo hello-from-tool > out.txt && cat out.txt"
    # The main session's prompts in the same stream leave no trace.
    assert text(out) == "I will run a command.The tool ran. Final answer: done."
    assert not any(isinstance(i, PermissionAsked) for i in replay(TurnTranslator(SESSION, TOOL), capture()))


def test_aborted_turn_ends_once_with_the_abort_error() -> None:
    translator = TurnTranslator(SESSION, ABORTED)
    out = replay(translator, capture())
    # opencode sends two idles after an abort; the turn ends at the first.
    assert sum(isinstance(i, Idle) for i in out) == 1
    assert translator.error is not None
    assert translator.error.name == "MessageAbortedError"


def test_leftovers_of_earlier_turns_are_ignored() -> None:
    translator = TurnTranslator(SESSION, AFTER_ABORT)
    events = capture()
    start = next(
        i
        for i, e in enumerate(events)
        if e["type"] == "message.updated" and e["properties"]["info"]["id"] == AFTER_ABORT
    )
    # Subscribed just before the prompt: the aborted turn's trailing events (late tool snapshot,
    # assistant error, second idle) come first, and they are ignored.
    trailing = next(i for i, e in enumerate(events) if e["type"] == "session.error")
    assert replay(translator, events[trailing + 1 : start]) == []
    out = replay(translator, events[start:])
    assert sum(isinstance(i, Idle) for i in out) == 1
    assert text(out) == "Hello from the mock model."
    assert translator.error is None


def test_an_error_before_the_prompt_started_is_only_a_signal() -> None:
    translator = TurnTranslator("ses_x", "msg_x")
    error = {"name": "UnknownError", "data": {"message": 'Agent not found: "nope"'}}
    out = translator.handle({"type": "session.error", "properties": {"sessionID": "ses_x", "error": error}})
    assert len(out) == 1 and isinstance(out[0], EarlyError)
    assert out[0].error.message == 'Agent not found: "nope"'
    assert translator.error is None
    # An idle before anything of this prompt is a leftover too.
    assert translator.handle({"type": "session.idle", "properties": {"sessionID": "ses_x"}}) == []


def test_retry_status_is_a_signal() -> None:
    translator = TurnTranslator("ses_x", "msg_x")
    status = {"type": "retry", "attempt": 2, "message": "mock internal error", "next": 0}
    out = translator.handle({"type": "session.status", "properties": {"sessionID": "ses_x", "status": status}})
    assert out == [Retrying(2, "mock internal error")]


def test_todos_become_a_plan_once() -> None:
    translator = TurnTranslator("ses_x", "msg_x")
    todos = [{"id": "1", "content": "write tests", "status": "pending", "priority": "high"}]
    event = {"type": "todo.updated", "properties": {"sessionID": "ses_x", "todos": todos}}
    assert translator.handle(event) == [Plan(({"content": "write tests", "priority": "high", "status": "pending"},))]
    assert translator.handle(event) == []


def test_a_subagent_session_is_watched_for_permissions_only() -> None:
    translator = TurnTranslator("ses_parent", "msg_x")
    child_text = {
        "type": "message.part.updated",
        "properties": {
            "sessionID": "ses_child",
            "part": {"id": "prt_1", "messageID": "msg_c", "sessionID": "ses_child", "type": "text", "text": "hi"},
        },
    }
    asked = {
        "type": "permission.asked",
        "properties": {"id": "per_1", "sessionID": "ses_child", "permission": "edit", "patterns": ["a.txt"]},
    }
    assert not translator.is_own(child_text)
    assert translator.handle(asked) == []
    created = {
        "type": "session.created",
        "properties": {"sessionID": "ses_child", "info": {"id": "ses_child", "parentID": "ses_parent"}},
    }
    assert translator.handle(created) == []
    assert translator.is_own(child_text)
    assert translator.handle(child_text) == []
    [request] = translator.handle(asked)
    assert isinstance(request, PermissionAsked) and request.request_id == "per_1"


def test_reconcile_after_a_drop_sends_only_what_is_missing() -> None:
    response = json.loads((CAPTURES / "opencode_sync_message_response.json").read_text())
    info, parts = response["info"], response["parts"]
    session, user = info["sessionID"], info["parentID"]
    text_part = next(p for p in parts if p["type"] == "text")
    translator = TurnTranslator(session, user)
    streamed = replay(
        translator,
        [
            {"type": "session.status", "properties": {"sessionID": session, "status": {"type": "busy"}}},
            {"type": "message.updated", "properties": {"sessionID": session, "info": {**info, "finish": None}}},
            {"type": "message.part.updated", "properties": {"sessionID": session, "part": {**text_part, "text": ""}}},
            {
                "type": "message.part.delta",
                "properties": {
                    "sessionID": session,
                    "messageID": info["id"],
                    "partID": text_part["id"],
                    "field": "text",
                    "delta": "Hello ",
                },
            },
        ],
    )
    assert text(streamed) == "Hello "
    # The stream dropped; the message list has the rest (and the reasoning the stream never showed).
    caught_up = translator.reconcile([{"info": {"id": user, "role": "user", "sessionID": session}}, response])
    assert text(caught_up) == "from the mock model."
    assert text(caught_up, ReasoningDelta) == "Short thought."
    # The new stream may repeat deltas already in that snapshot, then sends the final snapshot.
    late_delta = {
        "type": "message.part.delta",
        "properties": {
            "sessionID": session,
            "messageID": info["id"],
            "partID": text_part["id"],
            "field": "text",
            "delta": "the mock model.",
        },
    }
    assert translator.handle(late_delta) == []
    final = {"type": "message.part.updated", "properties": {"sessionID": session, "part": text_part}}
    assert translator.handle(final) == []
    assert translator.usage == Usage(100, 20)
    assert translator.handle({"type": "session.idle", "properties": {"sessionID": session}}) == [Idle()]
