"""A pausable TCP proxy on 127.0.0.1, for partitions and dropped connections in tests and the soak.

Put it in front of PostgreSQL (``proxy.url(database_url)``) and:

- :meth:`PausableProxy.pause` is a partition: nothing flows either way (bytes already read wait
  in the proxy, later ones in the sockets' buffers) and new connections are accepted but not
  forwarded, so clients see silence, not an error, as on a real network that stopped answering;
- :meth:`PausableProxy.resume` heals it: what waited is delivered, in order;
- :meth:`PausableProxy.drop` closes every current connection at once (both sides), as a
  restarted router or a killed connection would.

Run it in a task group: ``port = await tg.start(proxy.run)``.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import anyio
from anyio.abc import SocketStream, TaskStatus

from kernel.net import LOOPBACK

CHUNK = 65536


class _Link:
    """One proxied connection: its cancel scope ends both directions."""

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()


class PausableProxy:
    def __init__(self, target_port: int, target_host: str = LOOPBACK) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._flowing = anyio.Event()
        self._flowing.set()
        self._links: set[_Link] = set()
        # Counters a test can check.
        self.connections = 0
        self.dropped = 0

    @property
    def paused(self) -> bool:
        return not self._flowing.is_set()

    def url(self, database_url: str) -> str:
        """``database_url`` pointed at the proxy (same credentials and database)."""
        parts = urlsplit(database_url)
        credentials, _, _ = parts.netloc.rpartition("@")
        netloc = f"{credentials}@{LOOPBACK}:{self.port}" if credentials else f"{LOOPBACK}:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def pause(self) -> None:
        if not self.paused:
            self._flowing = anyio.Event()

    def resume(self) -> None:
        self._flowing.set()

    def drop(self) -> None:
        for link in list(self._links):
            link.scope.cancel()
        self.dropped += len(self._links)

    async def run(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host=LOOPBACK, local_port=self.port)
        self.port = int(listener.extra(anyio.abc.SocketAttribute.local_port))  # noqa: S610 - not Django
        task_status.started(self.port)
        async with listener:
            await listener.serve(self._serve)

    async def _serve(self, client: SocketStream) -> None:
        link = _Link()
        self._links.add(link)
        self.connections += 1
        try:
            with link.scope:
                async with client:
                    await self._flowing.wait()
                    try:
                        upstream = await anyio.connect_tcp(*self.target)
                    except OSError:
                        return
                    async with upstream, anyio.create_task_group() as tg:
                        tg.start_soon(self._pump, client, upstream, tg.cancel_scope)
                        tg.start_soon(self._pump, upstream, client, tg.cancel_scope)
        finally:
            self._links.discard(link)

    async def _pump(self, source: SocketStream, sink: SocketStream, both: anyio.CancelScope) -> None:
        try:
            while True:
                data = await source.receive(CHUNK)
                await self._flowing.wait()
                await sink.send(data)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            both.cancel()
