"""Payloads of the session frames the orchestrator writes (shapes in ws_gateway.frames).

A frame is ``(type, payload)`` as ``ws_gateway.eventlog.append_events`` takes it. Optional keys
(``failure_reason``, ``error``) are left out when empty, as the protocol documents.
"""

from __future__ import annotations

from typing import Any

from ws_gateway.frames import SessionFrame

Frame = tuple[str, dict[str, Any]]


def task_state(
    task_id: int, state: str, attempt: int, failure_reason: str | None = None, error: str | None = None
) -> Frame:
    payload: dict[str, Any] = {"task_id": task_id, "state": state, "attempt": attempt}
    if failure_reason:
        payload["failure_reason"] = failure_reason
    if error:
        payload["error"] = error
    return SessionFrame.TASK_STATE.value, payload


def message_complete(
    message_id: int,
    task_id: int,
    status: str,
    stop_reason: str | None,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    error: str | None = None,
) -> Frame:
    fields = message_complete_fields(task_id, status, stop_reason, prompt_tokens, completion_tokens, error)
    return SessionFrame.MESSAGE_COMPLETE.value, {"message_id": message_id, **fields}


def message_complete_fields(
    task_id: int,
    status: str,
    stop_reason: str | None,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    error: str | None = None,
) -> dict[str, Any]:
    """The message_complete payload without message_id (for a message not inserted yet)."""
    payload: dict[str, Any] = {
        "task_id": task_id,
        "status": status,
        "stop_reason": stop_reason,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
    }
    if error:
        payload["error"] = error
    return payload
