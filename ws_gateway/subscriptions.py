"""Per-process fan-out of ``session_events`` to subscribed clients.

One LISTEN connection per gateway process. A notification ``'<session_id>:<seq>'`` only says
"the session has reached seq"; notifications are collected into batches, and each batch is
read with ONE query for all its sessions, from the lowest seq any live subscriber of the
session has, and every frame is encoded once and offered to every subscriber.

Each subscription keeps its own cursor (``last_seq``, the last frame queued for its client),
so delivery is exactly once and in order:

- *live*: it takes a frame only when ``seq == last_seq + 1``; an older one is dropped as seen,
  a newer one (a gap) turns it into catching up.
- *catching up*: the client's own task reads the log (``eventlog.read_events``) page by page at
  the client's pace, and turns live only when it has reached the highest seq the hub has
  seen for the session, with no await between that check and the switch.

A new subscription starts catching up, which is also how replay from ``since_seq`` works.
After (re)connecting the LISTEN connection, and every ``poll_interval`` as a safety net, the
hub reads the sessions' heads, so a lost notification delays frames but never drops them.

A client's send queue is bounded, in frames and in bytes. Live frames that do not fit end the
connection (the server closes it with 1013 and the client resumes from its seq); replays and
replies wait until the queue is at most half full (in both), leaving the other half to live
frames. A live frame
for a client whose queue is empty and whose socket keeps up is written straight to the
socket by the hub, without waking the client's sender task: with hundreds of clients on one
session that is most of the cost of a frame.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable

import anyio
import asyncpg
from anyio.abc import TaskStatus
from websockets.asyncio.connection import Connection, broadcast
from websockets.protocol import State

from kernel import Connect, Listener, get_logger, read_events
from ws_gateway import metrics
from ws_gateway import queries as q
from ws_gateway.frames import session_frame
from ws_gateway.protocol import encode_frame
from ws_gateway.settings import GatewaySettings

log = get_logger("gateway.subscriptions")

CHANNEL = "session_events"
# Bytes waiting in a client's socket buffer above which live frames go through its queue
# (websockets' own write limit, where its sender starts waiting for the socket).
DIRECT_WRITE_LIMIT = 2**15


class Outbox:
    """Frames waiting to be written to one client; one reader, bounded in frames and in bytes.

    A frame larger than the byte bound still goes through an empty queue (a big reply, a long
    delta), so the bound limits what piles up, not what can be sent.
    """

    def __init__(self, capacity: int, capacity_bytes: int = sys.maxsize) -> None:
        self._frames: deque[bytes] = deque()
        self._capacity = capacity
        self._half = capacity // 2
        self._capacity_bytes = capacity_bytes
        self._half_bytes = capacity_bytes // 2
        self.bytes = 0
        self._readable = anyio.Event()
        self._room = anyio.Event()

    def __len__(self) -> int:
        return len(self._frames)

    def offer(self, frame: bytes) -> bool:
        """Queue a frame unless the queue is full."""
        full = len(self._frames) >= self._capacity or self.bytes + len(frame) > self._capacity_bytes
        if full and self._frames:
            return False
        self._append(frame)
        return True

    def _roomy(self) -> bool:
        return len(self._frames) < self._half and self.bytes < self._half_bytes

    async def wait_for_room(self) -> None:
        """Wait until the queue is at most half full, in frames and in bytes."""
        while not self._roomy():
            if self._room.is_set():
                self._room = anyio.Event()
            await self._room.wait()

    async def put(self, frame: bytes) -> None:
        await self.wait_for_room()
        self._append(frame)

    def _append(self, frame: bytes) -> None:
        self._frames.append(frame)
        self.bytes += len(frame)
        self._readable.set()

    async def get(self) -> bytes:
        while not self._frames:
            self._readable = anyio.Event()
            await self._readable.wait()
        frame = self._frames.popleft()
        self.bytes -= len(frame)
        if self._roomy():
            self._room.set()
        return frame


class Subscription:
    """One client's cursor in one session."""

    __slots__ = ("active", "feed", "head", "last_seq", "live", "session_id")

    def __init__(self, feed: ClientFeed, session_id: int, last_seq: int) -> None:
        self.feed = feed
        self.session_id = session_id
        self.last_seq = last_seq
        # The highest seq known to exist in the session.
        self.head = last_seq
        self.live = False
        self.active = True

    def note_head(self, head: int) -> None:
        if head > self.head:
            self.head = head

    def fall_behind(self) -> None:
        if self.live:
            self.live = False
            self.feed.schedule(self)

    def offer(self, seq: int, frame: bytes) -> None:
        if seq <= self.last_seq or not self.active:
            return
        self.note_head(seq)
        if not self.live:
            return  # the catch-up reads it
        if seq != self.last_seq + 1:
            self.fall_behind()
            return
        if not self.feed.push(frame):
            self.feed.overflow()
            return
        self.last_seq = seq


class ClientFeed:
    """The subscriptions and send queue of one client connection."""

    def __init__(
        self,
        hub: Hub,
        pool: asyncpg.Pool,
        settings: GatewaySettings,
        on_overflow: Callable[[], None],
        connection: Connection | None = None,
    ) -> None:
        self.outbox = Outbox(settings.send_queue_frames, settings.send_queue_bytes)
        # The client's socket, for writing live frames directly (None: always queue).
        self._connection = connection
        self.subscriptions: dict[int, Subscription] = {}
        self.overflowed = False
        self._hub = hub
        self._pool = pool
        self._page = settings.replay_page
        self._on_overflow = on_overflow
        self._behind: dict[Subscription, None] = {}  # an ordered set
        self._wake = anyio.Event()

    def subscribe(self, session_id: int, last_seq: int) -> Subscription:
        """Register a cursor; it receives nothing until :meth:`schedule` starts its catch-up."""
        self.unsubscribe(session_id)
        sub = Subscription(self, session_id, last_seq)
        self.subscriptions[session_id] = sub
        self._hub.add(sub)
        return sub

    def unsubscribe(self, session_id: int) -> None:
        sub = self.subscriptions.pop(session_id, None)
        if sub is not None:
            sub.active = False
            self._behind.pop(sub, None)
            self._hub.remove(sub)

    def close(self) -> None:
        for session_id in list(self.subscriptions):
            self.unsubscribe(session_id)

    def push(self, frame: bytes) -> bool:
        """Send a live frame now if nothing is queued ahead of it, else queue it; False if full.

        The sender task pops a frame and writes it to the socket in one step, so an empty queue
        means every earlier frame is already in the socket's buffer, ahead of this one.
        """
        conn = self._connection
        if (
            conn is not None
            and not self.outbox
            and conn.protocol.state is State.OPEN
            and conn.transport.get_write_buffer_size() <= DIRECT_WRITE_LIMIT
        ):
            broadcast([conn], frame, text=True)
            metrics.FRAMES_SENT.inc()
            return True
        return self.outbox.offer(frame)

    def schedule(self, sub: Subscription) -> None:
        self._behind[sub] = None
        self._wake.set()

    def overflow(self) -> None:
        if not self.overflowed:
            self.overflowed = True
            self.close()
            self._on_overflow()

    async def run_catch_up(self) -> None:
        """Replay subscriptions that are behind, one at a time, at the client's pace."""
        while True:
            while not self._behind:
                self._wake = anyio.Event()
                await self._wake.wait()
            sub = next(iter(self._behind))
            await self._catch_up(sub)
            self._behind.pop(sub, None)

    def _current(self, sub: Subscription) -> bool:
        """False once the subscription was dropped or replaced."""
        return self.subscriptions.get(sub.session_id) is sub

    async def _catch_up(self, sub: Subscription) -> None:
        while self._current(sub):
            events = await read_events(self._pool, sub.session_id, sub.last_seq, self._page)
            for event in events:
                await self.outbox.wait_for_room()
                if not self._current(sub):
                    return
                self.outbox.offer(encode_frame(session_frame(event.session_id, event.seq, event.type, event.payload)))
                sub.last_seq = event.seq
                sub.note_head(event.seq)
            if len(events) < self._page and sub.last_seq >= sub.head:
                sub.live = True
                return


class Hub:
    """The process's LISTEN connection and the fan-out of new events to subscriptions."""

    def __init__(self, pool: asyncpg.Pool, settings: GatewaySettings, connect: Connect) -> None:
        self._pool = pool
        self._settings = settings
        self._subs: dict[int, set[Subscription]] = {}
        # Session id → the highest seq notified since the last batch.
        self._pending: dict[int, int] = {}
        self._resync = True
        self._wake = anyio.Event()
        self.listener = Listener(
            connect,
            {CHANNEL: self._on_notify},
            name="gateway",
            health_interval=settings.poll_interval,
            while_subscribed=self._deliver_loop,
        )

    @property
    def listen_pid(self) -> int | None:
        """The backend pid of the LISTEN connection while there is one."""
        return self.listener.backend_pid

    def add(self, sub: Subscription) -> None:
        self._subs.setdefault(sub.session_id, set()).add(sub)

    def remove(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.session_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.session_id]

    def subscriber_count(self) -> int:
        return sum(len(subs) for subs in self._subs.values())

    def _on_notify(self, payload: str) -> None:
        session_text, _, seq_text = payload.partition(":")
        try:
            session_id, seq = int(session_text), int(seq_text)
        except ValueError:
            log.warning("gateway.bad_notification", payload=payload)
            return
        if session_id in self._subs and seq > self._pending.get(session_id, 0):
            self._pending[session_id] = seq
            self._wake.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen and fan out forever, reconnecting with backoff; started once listening."""
        await self.listener.run(task_status=task_status)

    async def _deliver_loop(self, conn: asyncpg.Connection) -> None:
        """While subscribed: deliver notified events, and every ``poll_interval`` re-read the heads
        (whatever was committed while nobody listened; also proves the connection is alive)."""
        self._resync = True
        self._wake.set()
        next_resync = anyio.current_time() + self._settings.poll_interval
        while True:
            with anyio.move_on_at(next_resync):
                await self._wake.wait()
            if anyio.current_time() >= next_resync:
                self._resync = True
                next_resync = anyio.current_time() + self._settings.poll_interval
            self._wake = anyio.Event()
            batch, self._pending = self._pending, {}
            if self._resync:
                self._resync = False
                rows = await conn.fetch(q.SESSION_HEADS, list(self._subs))
                for row in rows:
                    batch[row["id"]] = max(batch.get(row["id"], 0), row["last_seq"])
            if batch:
                await self._deliver(conn, batch)

    async def _deliver(self, conn: asyncpg.Connection, batch: dict[int, int]) -> None:
        sessions: list[int] = []
        afters: list[int] = []
        heads: list[int] = []
        for session_id, head in batch.items():
            after: int | None = None
            for sub in self._subs.get(session_id, ()):
                sub.note_head(head)
                if not sub.live:
                    continue
                if head - sub.last_seq > self._settings.replay_page:
                    sub.fall_behind()  # far behind: let it page through the log itself
                    continue
                after = sub.last_seq if after is None else min(after, sub.last_seq)
            if after is not None and after < head:
                sessions.append(session_id)
                afters.append(after)
                heads.append(head)
        if not sessions:
            return
        rows = await conn.fetch(q.READ_NEW_EVENTS, sessions, afters, heads)
        frames: dict[int, list[tuple[int, bytes]]] = {}
        for row in rows:
            session_id, seq = row["session_id"], row["seq"]
            frame = encode_frame(session_frame(session_id, seq, row["type"], row["payload"]))
            frames.setdefault(session_id, []).append((seq, frame))
        for session_id, session_frames in frames.items():
            for sub in tuple(self._subs.get(session_id, ())):
                for seq, frame in session_frames:
                    sub.offer(seq, frame)
