"""Discovery: the projects and sessions a token sees, and a live feed of a project's sessions.

``list_projects``, ``list_sessions`` (newest activity first, paged by a cursor) and
``list_tasks`` answer from the database in one query each. ``subscribe_project`` adds the
client to the process's :class:`ProjectHub`, which holds one ``LISTEN project_feed``
connection: the schema's triggers notify ``'<project_id>:<session_id>:created|updated'``
when a session is created (also the one the dispatcher creates when it claims a task that
had none), when one of its tasks is queued or changes state, and when one of its changes is
opened or resolved. Notifications are batched; each batch's sessions are read with one
query, encoded once and sent as ``session_created`` / ``session_updated`` frames carrying the
session's current summary (the same shape ``list_sessions`` returns), so a client keeps a
live session list without subscribing to every session.

The feed is live, not a log: frames carry the state at the time they are read, so a repeated
or late one never shows something stale. After the LISTEN connection was lost, the hub sends
the summaries of every session of the subscribed projects that changed meanwhile (active or
created since shortly before the loss, or with queued tasks).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import anyio
import asyncpg
from anyio.abc import TaskStatus

from kernel import Connect, Listener, get_logger
from ws_gateway import queries as q
from ws_gateway.auth import TokenAccess, session_project
from ws_gateway.errors import ActionRejected
from ws_gateway.protocol import (
    DiscoveryFrame,
    ListProjects,
    ListSessions,
    ListTasks,
    SubscribeProject,
    UnsubscribeProject,
    encode_frame,
)
from ws_gateway.settings import GatewaySettings
from ws_gateway.snapshot import jsonable

log = get_logger("gateway.discovery")

CHANNEL = "project_feed"
SESSION_CREATED = "session_created"
SESSION_UPDATED = "session_updated"
# A session changed up to this long before the last moment the LISTEN connection was known to
# be alive is sent again after a reconnect (its transaction may have started before, committed after).
RESYNC_MARGIN = timedelta(seconds=5)


def session_summary(row: asyncpg.Record) -> dict[str, Any]:
    summary = jsonable(row)
    del summary["cursor_us"]
    return summary


def _cursor(row: asyncpg.Record) -> str:
    return f"{row['cursor_us']}:{row['id']}"


class ProjectSubscriber:
    """One client's project subscriptions; ``push`` sends a frame live (or ends the client)."""

    def __init__(self, hub: ProjectHub, push: Callable[[bytes], None]) -> None:
        self.hub = hub
        self.push = push
        self.project_ids: set[int] = set()

    def subscribe(self, project_ids: tuple[int, ...]) -> None:
        self.project_ids.update(project_ids)
        self.hub.add(self, project_ids)

    def unsubscribe(self, project_ids: tuple[int, ...]) -> None:
        self.project_ids.difference_update(project_ids)
        self.hub.remove(self, project_ids)

    def close(self) -> None:
        self.unsubscribe(tuple(self.project_ids))


class ProjectHub:
    """The process's ``LISTEN project_feed`` connection and the fan-out of session summaries."""

    def __init__(self, pool: asyncpg.Pool, settings: GatewaySettings, connect: Connect) -> None:
        self._pool = pool
        self._settings = settings
        self._subs: dict[int, set[ProjectSubscriber]] = {}
        # Session id → whether it was created since the last batch.
        self._pending: dict[int, bool] = {}
        self._wake = anyio.Event()
        # The database's clock when the LISTEN connection was last known to be alive.
        self._alive_at: datetime | None = None
        self.listener = Listener(
            connect,
            {CHANNEL: self._on_notify},
            name="project_feed",
            health_interval=settings.poll_interval,
            while_subscribed=self._subscribed,
        )

    @property
    def listen_pid(self) -> int | None:
        return self.listener.backend_pid

    def add(self, sub: ProjectSubscriber, project_ids: tuple[int, ...]) -> None:
        for project_id in project_ids:
            self._subs.setdefault(project_id, set()).add(sub)

    def remove(self, sub: ProjectSubscriber, project_ids: tuple[int, ...]) -> None:
        for project_id in project_ids:
            subs = self._subs.get(project_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[project_id]

    def subscriber_count(self) -> int:
        return sum(len(subs) for subs in self._subs.values())

    def _on_notify(self, payload: str) -> None:
        project_text, _, rest = payload.partition(":")
        session_text, _, kind = rest.partition(":")
        try:
            project_id, session_id = int(project_text), int(session_text)
        except ValueError:
            log.warning("gateway.bad_notification", channel=CHANNEL, payload=payload)
            return
        if project_id in self._subs:
            self._pending[session_id] = self._pending.get(session_id, False) or kind == "created"
            self._wake.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen and fan out forever, reconnecting with backoff; started once listening."""
        await self.listener.run(task_status=task_status)

    async def _subscribed(self, conn: asyncpg.Connection) -> None:
        """While subscribed: after a loss, send what changed meanwhile; then deliver batches, and
        every ``poll_interval`` prove the connection alive (a dead one raises: reconnect)."""
        lost_after = self._alive_at
        self._alive_at = await conn.fetchval(q.DATABASE_NOW)
        if lost_after is not None:
            await self._resync(conn, lost_after - RESYNC_MARGIN)
        next_check = anyio.current_time() + self._settings.poll_interval
        while True:
            with anyio.move_on_at(next_check):
                await self._wake.wait()
            if anyio.current_time() >= next_check:
                self._alive_at = await conn.fetchval(q.DATABASE_NOW)
                next_check = anyio.current_time() + self._settings.poll_interval
            self._wake = anyio.Event()
            batch, self._pending = self._pending, {}
            if batch and self._subs:
                rows = await conn.fetch(q.SESSION_SUMMARIES, list(self._subs), list(batch), None, None, None, None)
                self._fan_out(rows, created=batch)

    async def _resync(self, conn: asyncpg.Connection, since: datetime) -> None:
        if self._subs:
            rows = await conn.fetch(q.SESSION_SUMMARIES, list(self._subs), None, since, None, None, None)
            self._fan_out(rows, created={})

    def _fan_out(self, rows: list[asyncpg.Record], created: dict[int, bool]) -> None:
        for row in rows:
            type_ = SESSION_CREATED if created.get(row["id"]) else SESSION_UPDATED
            frame = encode_frame({"type": type_, "project_id": row["project_id"], "session": session_summary(row)})
            for sub in tuple(self._subs.get(row["project_id"], ())):
                sub.push(frame)


class Discovery:
    """Answers one client's discovery frames; the results are the ``ack`` payloads."""

    def __init__(self, pool: asyncpg.Pool, access: TokenAccess, subscriber: ProjectSubscriber, limit: int) -> None:
        self._pool = pool
        self._access = access
        self._subscriber = subscriber
        self._limit = limit

    async def handle(self, frame: DiscoveryFrame) -> tuple[str, dict[str, Any]]:
        """The ack's ``action`` and payload for ``frame``."""
        match frame:
            case ListProjects():
                ids = None if self._access.project_ids is None else sorted(self._access.project_ids)
                rows = await self._pool.fetch(q.LIST_PROJECTS, ids)
                return "list_projects", {"projects": [jsonable(row) for row in rows]}
            case ListSessions():
                return "list_sessions", await self._list_sessions(frame)
            case ListTasks():
                project_id = await session_project(self._pool, frame.session_id)
                await self._authorize(project_id, f"session {frame.session_id}")
                if frame.task_ids is None:
                    rows = await self._pool.fetch(q.SNAPSHOT_OPEN_TASKS, frame.session_id)
                else:
                    rows = await self._pool.fetch(q.TASKS_BY_ID, frame.session_id, list(frame.task_ids))
                return "list_tasks", {"session_id": frame.session_id, "tasks": [jsonable(row) for row in rows]}
            case SubscribeProject():
                await self._check_projects(frame.project_ids)
                if len(self._subscriber.project_ids | set(frame.project_ids)) > self._limit:
                    raise ActionRejected("too_many_subscriptions", f"at most {self._limit} projects per connection")
                self._subscriber.subscribe(frame.project_ids)
                return "subscribe_project", {"project_ids": list(frame.project_ids)}
            case UnsubscribeProject():
                self._subscriber.unsubscribe(frame.project_ids)
                return "unsubscribe_project", {"project_ids": list(frame.project_ids)}

    async def _authorize(self, project_id: int | None, what: str) -> None:
        if not self._access.sees(project_id):
            raise ActionRejected("forbidden", f"{what} does not exist or belongs to a project this token cannot see")

    async def _check_projects(self, project_ids: tuple[int, ...]) -> None:
        """All or nothing: every project must exist and be visible."""
        existing = {row["id"] for row in await self._pool.fetch(q.PROJECTS_EXISTING, list(project_ids))}
        for project_id in project_ids:
            await self._authorize(project_id if project_id in existing else None, f"project {project_id}")

    async def _list_sessions(self, frame: ListSessions) -> dict[str, Any]:
        await self._check_projects((frame.project_id,))
        before_us, before_id = (None, None)
        if frame.cursor is not None:
            us, _, session_id = frame.cursor.partition(":")
            before_us, before_id = int(us), int(session_id)
        rows = await self._pool.fetch(
            q.SESSION_SUMMARIES, [frame.project_id], None, None, before_us, before_id, frame.limit + 1
        )
        page = rows[: frame.limit]
        return {
            "project_id": frame.project_id,
            "sessions": [session_summary(row) for row in page],
            "next_cursor": _cursor(page[-1]) if len(rows) > frame.limit else None,
        }
