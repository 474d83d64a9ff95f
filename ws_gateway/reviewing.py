"""The review frames of one connection: authorized, then handed to the injected actions.

``review``, ``get_diff``, ``comment``, ``request_changes``, ``rebase``, ``resolve_with_agent``
and ``list_changes`` (docs/PROTOCOL.md). The token must see the project of the change (both
changes, for an interdiff) or of the session; the actions (the orchestrator's review service,
the same the CLI calls) do the rest and refuse with ActionRejected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg

from ws_gateway import auth
from ws_gateway.actions import CommentRequest, GatewayActions, ReviewRequest
from ws_gateway.auth import TokenAccess
from ws_gateway.errors import ActionRejected
from ws_gateway.protocol import (
    Comment,
    GetDiff,
    ListChanges,
    Rebase,
    RequestChanges,
    ResolveWithAgent,
    Review,
    ReviewFrame,
)


class Reviewing:
    def __init__(self, pool: asyncpg.Pool, access: TokenAccess, actions: GatewayActions) -> None:
        self._pool = pool
        self._access = access
        self._actions = actions
        # Comments are signed and changes resolved by the token's name.
        self._by = f"token:{access.name}"

    async def handle(self, frame: ReviewFrame) -> tuple[str, Mapping[str, Any]]:
        """The frame's ack: its action name and result."""
        match frame:
            case Review():
                await self._change(frame.change_id)
                request = ReviewRequest(
                    frame.change_id, frame.action, frame.files, frame.hunks, frame.mode, frame.message, frame.branch
                )
                return "review", await self._actions.review(request, self._by)
            case GetDiff(live=True):
                assert frame.session_id is not None
                await self._session(frame.session_id)
                return "get_diff", await self._actions.live_diff(frame.session_id)
            case GetDiff():
                assert frame.change_id is not None
                await self._change(frame.change_id)
                if frame.since_change_id is not None:
                    await self._change(frame.since_change_id)
                return "get_diff", await self._actions.get_diff(frame.change_id, frame.since_change_id)
            case Comment():
                await self._change(frame.change_id)
                comment = CommentRequest(frame.change_id, frame.body, frame.path, frame.line, frame.side)
                return "comment", await self._actions.comment(comment, self._by)
            case RequestChanges():
                await self._change(frame.change_id)
                return "request_changes", await self._actions.request_changes(frame.change_id, frame.message, self._by)
            case Rebase():
                await self._change(frame.change_id)
                return "rebase", await self._actions.rebase(frame.change_id, self._by)
            case ResolveWithAgent():
                await self._change(frame.change_id)
                result = await self._actions.resolve_with_agent(frame.change_id, frame.message, self._by)
                return "resolve_with_agent", result
            case ListChanges():
                await self._session(frame.session_id)
                return "list_changes", await self._actions.list_changes(frame.session_id, frame.status, frame.limit)

    def _authorize(self, project_id: int | None, what: str) -> None:
        if not self._access.sees(project_id):
            raise ActionRejected("forbidden", f"{what} does not exist or belongs to a project this token cannot see")

    async def _change(self, change_id: int) -> None:
        self._authorize(await auth.change_project(self._pool, change_id), f"change {change_id}")

    async def _session(self, session_id: int) -> None:
        self._authorize(await auth.session_project(self._pool, session_id), f"session {session_id}")
