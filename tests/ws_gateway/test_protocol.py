"""Client frames are parsed into typed requests or refused with a clear reason."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ws_gateway import InvalidFrame, MalformedFrame
from ws_gateway.protocol import (
    Cancel,
    ClientFrame,
    Comment,
    GetDiff,
    ListAgents,
    ListChanges,
    ListModels,
    PermissionReply,
    Ping,
    QuestionReply,
    Rebase,
    RequestChanges,
    ResolveWithAgent,
    Review,
    Submit,
    Subscribe,
    Unsubscribe,
    encode_frame,
    parse_client_frame,
)


@pytest.mark.parametrize(
    ("frame", "parsed"),
    [
        ({"type": "subscribe", "session_ids": [3, 1, 3]}, Subscribe((3, 1), None)),
        ({"type": "subscribe", "session_ids": [3], "since_seq": 0, "id": "a"}, Subscribe((3,), 0, "a")),
        ({"type": "subscribe", "session_ids": [3, 4], "since_seq": {"4": 9}}, Subscribe((3, 4), {4: 9})),
        ({"type": "subscribe", "session_ids": [3], "since_seq": None}, Subscribe((3,), None)),
        ({"type": "unsubscribe", "session_ids": [3], "id": 5}, Unsubscribe((3,), 5)),
        ({"type": "submit", "input": "hi", "project_id": 1}, Submit("hi", project_id=1)),
        (
            {"type": "submit", "input": "hi", "session_id": 2, "agent": "opencode", "priority": -3, "max_attempts": 1},
            Submit("hi", session_id=2, agent="opencode", priority=-3, max_attempts=1),
        ),
        ({"type": "cancel", "task_id": 9}, Cancel(9)),
        ({"type": "review", "change_id": 9, "action": "accept"}, Review(9, "accept")),
        ({"type": "review", "change_id": 9, "action": "reject", "files": ["a.py"]}, Review(9, "reject", ("a.py",))),
        ({"type": "get_diff", "change_id": 9}, GetDiff(9)),
        ({"type": "ping", "id": "p"}, Ping("p")),
        (
            {"type": "submit", "input": "hi", "project_id": 1, "agent_options": {"effort": "high", "x": True}},
            Submit("hi", project_id=1, agent_options={"effort": "high", "x": True}),
        ),
        (
            {"type": "submit", "input": "hi", "project_id": 1, "fresh_context": True},
            Submit("hi", 1, fresh_context=True),
        ),
        (
            {"type": "permission_reply", "request_id": 4, "decision": "allow_once"},
            PermissionReply(4, None, "allow_once"),
        ),
        (
            {"type": "permission_reply", "request_id": 4, "option_id": "once", "id": 2},
            PermissionReply(4, "once", None, 2),
        ),
        (
            {"type": "question_reply", "request_id": 5, "answers": [["red"], ["a", "b"]]},
            QuestionReply(5, (("red",), ("a", "b"))),
        ),
        ({"type": "question_reply", "request_id": 5, "dismiss": True}, QuestionReply(5, None)),
        ({"type": "list_agents", "id": 1}, ListAgents(1)),
        ({"type": "list_models"}, ListModels()),
    ],
)
def test_valid_frames(frame: dict[str, Any], parsed: ClientFrame) -> None:
    assert parse_client_frame(json.dumps(frame)) == parsed


@pytest.mark.parametrize(
    ("frame", "parsed"),
    [
        (
            {"type": "review", "change_id": 9, "action": "accept", "hunks": {"a.py": [2, 2, 1]}, "files": ["b.py"]},
            Review(9, "accept", ("b.py",), {"a.py": (2, 1)}),
        ),
        (
            {"type": "review", "change_id": 9, "action": "accept", "mode": "commit", "message": "Fix"},
            Review(9, "accept", mode="commit", message="Fix"),
        ),
        (
            {"type": "review", "change_id": 9, "action": "accept", "mode": "branch", "branch": "pr/fix"},
            Review(9, "accept", mode="branch", branch="pr/fix"),
        ),
        (
            {"type": "review", "change_id": 9, "action": "reject", "hunks": {"a.py": [1]}},
            Review(9, "reject", None, {"a.py": (1,)}),
        ),
        ({"type": "get_diff", "change_id": 9, "since_change_id": 7}, GetDiff(9, 7)),
        ({"type": "get_diff", "session_id": 4, "live": True}, GetDiff(session_id=4, live=True)),
        ({"type": "get_diff", "change_id": 9, "live": False}, GetDiff(9)),
        ({"type": "comment", "change_id": 9, "body": "Why?"}, Comment(9, "Why?")),
        (
            {"type": "comment", "change_id": 9, "body": "x", "path": "a.py", "line": 3, "side": "old"},
            Comment(9, "x", "a.py", 3, "old"),
        ),
        ({"type": "request_changes", "change_id": 9, "message": "Go"}, RequestChanges(9, "Go")),
        ({"type": "rebase", "change_id": 9, "id": 4}, Rebase(9, 4)),
        ({"type": "resolve_with_agent", "change_id": 9}, ResolveWithAgent(9)),
        ({"type": "list_changes", "session_id": 3}, ListChanges(3)),
        ({"type": "list_changes", "session_id": 3, "status": "all", "limit": 5}, ListChanges(3, None, 5)),
        ({"type": "list_changes", "session_id": 3, "status": "conflict"}, ListChanges(3, "conflict")),
    ],
)
def test_review_frames(frame: dict[str, Any], parsed: ClientFrame) -> None:
    assert parse_client_frame(json.dumps(frame)) == parsed


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ({"type": "review", "change_id": 1, "action": "merge"}, "'action' must be one of accept, reject"),
        ({"type": "review", "change_id": 1, "action": "accept", "hunks": []}, "object of 1 to"),
        ({"type": "review", "change_id": 1, "action": "accept", "hunks": {"a": []}}, "non-empty list of hunk ids"),
        ({"type": "review", "change_id": 1, "action": "accept", "hunks": {"a": [0]}}, "between 1"),
        ({"type": "review", "change_id": 1, "action": "accept", "hunks": {"a": ["1"]}}, "must be an integer"),
        ({"type": "review", "change_id": 1, "action": "accept", "mode": "push"}, "one of apply, commit, branch"),
        ({"type": "review", "change_id": 1, "action": "accept", "message": "m"}, "goes with mode 'commit'"),
        ({"type": "review", "change_id": 1, "action": "accept", "mode": "branch"}, "needs 'branch'"),
        (
            {"type": "review", "change_id": 1, "action": "accept", "mode": "commit", "branch": "b"},
            "needs mode 'branch'",
        ),
        ({"type": "review", "change_id": 1, "action": "reject", "mode": "commit"}, "go with 'accept'"),
        ({"type": "get_diff"}, "missing field 'change_id'"),
        ({"type": "get_diff", "change_id": 1, "session_id": 2}, "goes with 'live'"),
        ({"type": "get_diff", "change_id": 1, "live": True}, "takes a 'session_id'"),
        ({"type": "get_diff", "live": True}, "missing field 'session_id'"),
        ({"type": "get_diff", "change_id": 1, "live": "yes"}, "true or false"),
        ({"type": "get_diff", "change_id": 1, "since_change_id": 0}, "between 1"),
        ({"type": "comment", "change_id": 1}, "missing field 'body'"),
        ({"type": "comment", "change_id": 1, "body": "x", "path": "a.py"}, "'path' and 'line'"),
        ({"type": "comment", "change_id": 1, "body": "x", "line": 3}, "'path' and 'line'"),
        ({"type": "comment", "change_id": 1, "body": "x", "side": "new"}, "'path' and 'line'"),
        ({"type": "comment", "change_id": 1, "body": "x", "path": "a", "line": 1, "side": "up"}, "one of new, old"),
        ({"type": "comment", "change_id": 1, "body": "x" * 20_001}, "longer than 20000"),
        ({"type": "request_changes"}, "missing field 'change_id'"),
        ({"type": "request_changes", "change_id": 1, "message": 5}, "non-empty string"),
        ({"type": "rebase", "change_id": 1, "onto": "main"}, "unknown field 'onto'"),
        ({"type": "resolve_with_agent", "change_id": "1"}, "must be an integer"),
        ({"type": "list_changes", "session_id": 1, "status": "open"}, "one of pending"),
        ({"type": "list_changes", "session_id": 1, "limit": 500}, "between 1"),
    ],
)
def test_invalid_review_frames(frame: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidFrame, match=reason.replace("(", r"\(")) as refused:
        parse_client_frame(json.dumps(frame))
    assert refused.value.code == "invalid_frame"


def test_since_seq_per_session() -> None:
    frame = parse_client_frame(json.dumps({"type": "subscribe", "session_ids": [3, 4], "since_seq": {"4": 9}}))
    assert isinstance(frame, Subscribe)
    assert (frame.since(3), frame.since(4)) == (None, 9)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ({}, "missing field 'type'"),
        ({"type": 3}, "missing field 'type'"),
        ({"type": "shutdown"}, "unknown frame type 'shutdown'"),
        ({"type": "ping", "extra": 1}, "unknown field 'extra'"),
        ({"type": "subscribe", "session_ids": []}, "non-empty list"),
        ({"type": "subscribe", "session_ids": [0]}, "between 1"),
        ({"type": "subscribe", "session_ids": [2**63]}, "between 1"),
        ({"type": "subscribe", "session_ids": list(range(1, 102))}, "at most 100"),
        ({"type": "subscribe", "session_ids": [1], "since_seq": "5"}, "must be an integer"),
        ({"type": "subscribe", "session_ids": [1], "since_seq": {"x": 1}}, "keys must be session ids"),
        # Digits str.isdigit() accepts and int() does not: once a ValueError that ended the handler.
        ({"type": "subscribe", "session_ids": [1], "since_seq": {"²": 0}}, "keys must be session ids"),
        ({"type": "subscribe", "session_ids": [1], "since_seq": {"\u0661": 0}}, "keys must be session ids"),
        ({"type": "subscribe", "session_ids": [1], "since_seq": {"9" * 5000: 0}}, "keys must be session ids"),
        ({"type": "subscribe", "session_ids": [1], "since_seq": {"01": 0}}, "keys must be session ids"),
        ({"type": "subscribe", "session_ids": [1], "since_seq": {"2": 1}}, "not in 'session_ids'"),
        ({"type": "submit"}, "missing field 'input'"),
        ({"type": "submit", "input": ""}, "non-empty string"),
        ({"type": "submit", "input": "x", "agent": 5}, "non-empty string"),
        ({"type": "submit", "input": "x", "max_attempts": 0}, "between 1"),
        ({"type": "submit", "input": "x", "model": "m" * 201}, "longer than 200"),
        ({"type": "cancel"}, "missing field 'task_id'"),
        ({"type": "cancel", "task_id": 1.5}, "must be an integer"),
        ({"type": "review", "change_id": 1}, "missing field 'action'"),
        ({"type": "review", "change_id": 1, "action": "accept", "files": []}, "list of 1 to"),
        ({"type": "review", "change_id": 1, "action": "accept", "files": [""]}, "non-empty strings"),
        ({"type": "ping", "id": True}, "'id' must be a string or an integer"),
        ({"type": "ping", "id": "x" * 65}, "'id' is longer"),
        # The frames of issue 13.
        ({"type": "submit", "input": "x", "agent_options": []}, "must be an object"),
        ({"type": "submit", "input": "x", "agent_options": {"effort": 3}}, "values must be true, false or a string"),
        ({"type": "submit", "input": "x", "agent_options": {"": "x"}}, "keys must be 1 to 64"),
        ({"type": "submit", "input": "x", "agent_options": {str(i): "v" for i in range(33)}}, "at most 32"),
        ({"type": "submit", "input": "x", "fresh_context": "yes"}, "must be true or false"),
        ({"type": "permission_reply", "decision": "allow_once"}, "missing field 'request_id'"),
        ({"type": "permission_reply", "request_id": "1", "decision": "allow_once"}, "must be an integer"),
        ({"type": "permission_reply", "request_id": 1}, "exactly one of 'option_id' and 'decision'"),
        ({"type": "permission_reply", "request_id": 1, "option_id": "a", "decision": "reject"}, "exactly one of"),
        ({"type": "permission_reply", "request_id": 1, "decision": "maybe"}, "'decision' must be one of"),
        ({"type": "permission_reply", "request_id": 1, "option_id": ""}, "non-empty string"),
        ({"type": "permission_reply", "request_id": 1, "decision": "reject", "note": "x"}, "unknown field 'note'"),
        ({"type": "question_reply", "request_id": 1}, "either 'answers' or 'dismiss'"),
        ({"type": "question_reply", "request_id": 1, "answers": [["a"]], "dismiss": True}, "either 'answers'"),
        ({"type": "question_reply", "request_id": 1, "answers": []}, "list of 1 to 20 answers"),
        ({"type": "question_reply", "request_id": 1, "answers": ["red"]}, "lists of 1 to 50 labels"),
        ({"type": "question_reply", "request_id": 1, "answers": [[3]]}, "labels must be strings"),
        ({"type": "question_reply", "request_id": 1, "dismiss": "yes"}, "must be true or false"),
        ({"type": "list_agents", "all": True}, "unknown field 'all'"),
        ({"type": "list_models", "refresh": True}, "unknown field 'refresh'"),
    ],
)
def test_invalid_frames(frame: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidFrame, match=reason.replace("(", r"\(")) as refused:
        parse_client_frame(json.dumps(frame))
    assert refused.value.code == "invalid_frame"


def test_invalid_frame_keeps_the_request_id() -> None:
    with pytest.raises(InvalidFrame) as refused:
        parse_client_frame(json.dumps({"type": "cancel", "id": "c1"}))
    assert refused.value.request_id == "c1"


@pytest.mark.parametrize("text", ["", "{", "[]", "3", '"subscribe"', "null", "[" * 100_000])
def test_malformed_frames(text: str) -> None:
    with pytest.raises(MalformedFrame):
        parse_client_frame(text)


def test_encode_frame_is_compact_utf8() -> None:
    assert encode_frame({"type": "delta", "text": "é"}) == '{"type":"delta","text":"é"}'.encode()
