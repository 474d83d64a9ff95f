"""A pool of warm ``opencode serve`` processes, shared by every turn of the ``opencode_server`` track.

Each server listens on 127.0.0.1 (a free port), requires HTTP Basic auth with a random password,
and keeps its state in a private HOME (and XDG directories, see
:func:`backends.opencode_env.opencode_env`) that is deleted when it stops, except its data
directory (opencode's sessions): that belongs to a *slot* of its project
(``<root>/data/<project>/slot-N``, locked while a server uses it) and outlives the server, so after
a restart of the server or of Switchyard a Switchyard session finds its opencode session again.
Its opencode config says ``"permission": "ask"``: every tool use, a subagent's too, waits for the
turn to answer it with Switchyard's policy.

A server belongs to one project and never serves another (:class:`ProjectPlace`): it runs in the
bubblewrap sandbox (:mod:`backends.sandbox`) with only that project's worktrees, its own HOME and
its data slot writable, everything else of the data directory hidden. Its password is in its
environment, which its bash tool's commands inherit; with it an agent reaches only its own
project's server, which can touch nothing the agent could not touch anyway. One server hosts many
worktrees of its project: every request names its directory. A Switchyard session sticks to one
slot (the ``server_key`` persisted in ``agent_sessions``) so its opencode session stays warm.

The pool is a long-lived resource: ``async with OpencodePool(...) as pool:`` once per service.
A project's first turn starts its first server; the pool then keeps ``min_servers`` running for
each project it has served and starts more when all of a project's servers are busy. ``servers``
caps the total: a project that needs a server when the pool is full takes the place of another
project's least recently used idle server, and if none is idle the pool runs over the cap until one
is. It restarts a server that crashed, recycles one that fails its health checks, grew too old or
too large (RSS of its whole process tree), stops servers idle for ``idle_shrink`` seconds, and on
exit kills everything it started (:class:`~backends.processes.ProcessTree`: the server's group
plus descendants such as the bash tool's commands, which opencode starts in sessions of their own).
When a server dies first, its children are reparented and no longer in its tree; every process
a server starts therefore inherits an environment marker (:data:`MARKER_ENV`) by which they are
found and killed, also when a previous service process died without cleaning up. The pool
publishes its state in a small JSON file that ``switchyard pool`` reads (:func:`read_pool_status`).

A server keeps an instance loaded for every directory it served: the maintenance pass disposes
those no turn used for ``instance_idle`` seconds (the sessions stay; their next turn loads it
again). opencode does not give their memory back, so a server that grew by ``idle_growth_mb``
since it settled and had no turn for ``idle_restart_after`` is restarted on the same data slot,
the instances it still had loaded again. :meth:`OpencodePool.warm` loads a spare worktree's
instance before any session has it, as far as a first prompt would (:data:`WARM_REQUESTS`);
spares are never disposed as idle.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import httpx
from anyio.streams.buffered import BufferedByteReceiveStream
from httpx_sse import EventSource, aconnect_sse

from backends.errors import BackendError, OpencodeServerError
from backends.modes import Mode
from backends.opencode_env import OpencodeSettings, find_opencode, opencode_env
from backends.processes import ProcessTree
from backends.sandbox import Sandbox
from kernel import free_port, get_logger, owner_gone, read_status, remove_stale, write_status

log = get_logger("backends.opencode_pool")

DEFAULT_SERVERS = 2
DEFAULT_MIN_SERVERS = 1
DEFAULT_MAX_AGE = 6 * 3600.0
DEFAULT_MAX_RSS_MB = 2048
DEFAULT_IDLE_SHRINK = 900.0
DEFAULT_HEALTH_INTERVAL = 15.0
DEFAULT_STARTUP_TIMEOUT = 60.0
DEFAULT_STOP_GRACE = 5.0
DEFAULT_WATCHDOG = 180.0
DEFAULT_RETRY_CAP = 3
DEFAULT_INSTANCE_IDLE = 600.0
DEFAULT_IDLE_GROWTH_MB = 150
DEFAULT_IDLE_RESTART_AFTER = 60.0

# What bootstraps a directory's instance as far as its first prompt would (opencode loads the
# rest lazily): listing a file boots the instance's location services (tools, skills, file watcher)
# and the provider list loads the model provider. Measured on the pinned 1.18.33: a new session's
# first delta in a directory warmed so is as quick as a follow-up's (~0.15 s instead of ~1.5 s).
WARM_REQUESTS: tuple[tuple[str, dict[str, str]], ...] = (("/file", {"path": "."}), ("/config/providers", {}))
# Consecutive failed health checks before a server is recycled.
UNHEALTHY_AFTER = 3
HEALTH_TIMEOUT = 5.0
REQUEST_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
# opencode sends a heartbeat every ~10 s, so a stream silent for this long is dead.
SSE_TIMEOUT = httpx.Timeout(5.0, read=45.0)
# Attempts at a free port (another process may take the one we picked before opencode binds it).
PORT_ATTEMPTS = 3
STDERR_TAIL_LINES = 20
MAX_LINE = 64 * 1024

USERNAME = "opencode"
ASK = "ask"
# Every process a server starts inherits this variable: ``<owner pid>.<pool nonce>/<server number>``.
MARKER_ENV = "SWITCHYARD_OPENCODE_SERVER"
_LISTENING = re.compile(r"listening on (https?://\S+)")
_BIND_FAILURE = re.compile(r"ServeError|EADDRINUSE|address already in use", re.IGNORECASE)
STATUS_PREFIX = "pool-"
# The pool's directory under the service's data_dir (sandboxes, data slots and status files).
POOL_DIR = "opencode-pool"
SLOT_PREFIX = "slot-"
SLOT_LOCK = ".lock"


@dataclass(frozen=True)
class OpencodePoolSettings:
    """``[opencode_pool]``: how many warm servers, when to recycle them, and per-turn limits."""

    # At most this many servers; more start only when every running one is busy.
    servers: int = DEFAULT_SERVERS
    # Kept running even when idle (0: start on the first turn).
    min_servers: int = DEFAULT_MIN_SERVERS
    # Recycled (after their running turns) when older than this (seconds) ...
    max_age: float = DEFAULT_MAX_AGE
    # ... or when the server and everything it started use more memory than this.
    max_rss_mb: int = DEFAULT_MAX_RSS_MB
    # A server without turns for this long is stopped, down to min_servers.
    idle_shrink: float = DEFAULT_IDLE_SHRINK
    health_interval: float = DEFAULT_HEALTH_INTERVAL
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT
    stop_grace: float = DEFAULT_STOP_GRACE
    # A turn whose session shows no event for this long is aborted.
    watchdog: float = DEFAULT_WATCHDOG
    # opencode retries a failing model forever; abort the turn after this many retries.
    retry_cap: int = DEFAULT_RETRY_CAP
    # A directory's instance (~20-90 MB) no turn used for this long is disposed; its opencode
    # sessions stay, and its next turn loads it again (0: never).
    instance_idle: float = DEFAULT_INSTANCE_IDLE
    # A disposed instance does not give its memory back to the system: a server without turns
    # for idle_restart_after seconds whose memory grew by more than idle_growth_mb since it
    # settled is restarted on the same data slot, its loaded instances loaded again (0: never).
    idle_growth_mb: int = DEFAULT_IDLE_GROWTH_MB
    idle_restart_after: float = DEFAULT_IDLE_RESTART_AFTER

    def __post_init__(self) -> None:
        if self.servers < 1:
            raise ValueError("opencode_pool.servers must be at least 1")
        if not 0 <= self.min_servers <= self.servers:
            raise ValueError("opencode_pool.min_servers must be between 0 and opencode_pool.servers")
        if self.retry_cap < 0 or self.max_rss_mb < 1:
            raise ValueError("opencode_pool.retry_cap must be >= 0 and max_rss_mb >= 1")
        if self.idle_growth_mb < 0 or self.idle_restart_after < 0:
            raise ValueError("opencode_pool.idle_growth_mb and idle_restart_after must be >= 0")
        if self.watchdog <= 0 or self.health_interval <= 0 or self.startup_timeout <= 0:
            raise ValueError("opencode_pool.watchdog, health_interval and startup_timeout must be positive")


class ServerState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    # Recycling: no new sessions; stopped once its running turns end.
    DRAINING = "draining"
    STOPPING = "stopping"
    EXITED = "exited"


@dataclass(frozen=True)
class ProjectPlace:
    """Where one project's sessions live: what its servers may write and read (servers are keyed by it)."""

    project_id: int
    # The project's worktrees (<worktrees root>/<project_id>): writable for its servers.
    worktrees: Path
    # The project repository's git directory: readable for its servers.
    git_dir: Path | None = None


@dataclass(frozen=True)
class ServerStatus:
    """One server as ``switchyard pool`` shows it."""

    key: str
    project_id: int
    state: str
    pid: int | None
    url: str
    version: str
    age_seconds: float
    rss_mb: float
    active_turns: int
    sessions: tuple[int, ...]
    # Directories whose opencode instance is loaded, and how many of them are spare worktrees.
    instances: int
    spares: int


class OpencodeServer:
    """One ``opencode serve`` process; created and owned by :class:`OpencodePool`."""

    def __init__(self, key: str, home: Path, place: ProjectPlace, replaces: OpencodeServer | None = None) -> None:
        self.key = key
        self.home = home
        self.place = place
        # Restarted in place of this one (same data slot): starts once it has exited.
        self.replaces = replaces
        # The data slot: opencode's database lives in data_dir and outlives the process, so the
        # slot (``agent_sessions.server_key``) is what a session sticks to.
        self.slot = key
        self.data_dir: Path | None = None
        self.slot_lock: int | None = None
        self.state = ServerState.STARTING
        self.url = ""
        self.version = ""
        self.pid: int | None = None
        self.tree: ProcessTree | None = None
        self.returncode: int | None = None
        # Why it failed to start or exited, for the turn that has to explain it.
        self.error = ""
        self.active_turns = 0
        # Switchyard session id -> its worktree, for the sessions that stick to this server.
        self.sessions: dict[int, str] = {}
        # Directories whose instance is loaded -> when a turn last used it (time.monotonic()).
        self.directories: dict[str, float] = {}
        # Turns running per directory; such an instance is never disposed.
        self.busy: Counter[str] = Counter()
        # Loaded for spare worktrees no session has taken yet: kept until one does.
        self.spares: set[str] = set()
        # Directories being disposed: a turn there waits until the disposal is done.
        self.disposing: dict[str, anyio.Event] = {}
        self.rss_bytes = 0
        # Its RSS once settled (the first maintenance pass after it was ready): what it grows from.
        self.settled_rss = 0
        self.health_failures = 0
        self.started_at = time.monotonic()
        self.last_used = time.monotonic()
        # Its opencode agents a task may select as mode_id (fetched on first need).
        self.modes: tuple[Mode, ...] | None = None
        self.ready = anyio.Event()  # set once it is ready or failed to start
        self.exited = anyio.Event()
        self._password = secrets.token_urlsafe(24)
        self._stderr: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._client: httpx.AsyncClient | None = None

    @property
    def marker(self) -> str:
        return self.key

    @property
    def usable(self) -> bool:
        return self.state in (ServerState.STARTING, ServerState.READY)

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise OpencodeServerError(f"opencode server {self.key} is not running")
        return self._client

    def describe_exit(self) -> str:
        """A one-line account of why the process is gone."""
        if self.error:
            return self.error
        code = self.returncode
        how = f"was killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exited ({code})"
        tail = " | ".join(self._stderr)
        return f"opencode server {self.key} {how}" + (f": {tail}" if tail else "")

    async def request(
        self,
        method: str,
        path: str,
        *,
        directory: str | None = None,
        json_body: Any = None,
        params: Mapping[str, str | int] | None = None,
        http_timeout: httpx.Timeout | float = REQUEST_TIMEOUT,
    ) -> Any:
        """One API call (scoped to ``directory``); the decoded JSON body, or None for 204."""
        query = {**(params or {}), **({"directory": directory} if directory else {})}
        response = await self.client.request(method, path, params=query, json=json_body, timeout=http_timeout)
        if response.status_code >= 400:
            raise OpencodeServerError(
                f"opencode {method} {path} answered {response.status_code}: {response.text[:300]}",
                response.status_code,
            )
        return response.json() if response.content else None

    @contextlib.asynccontextmanager
    async def events(self, directory: str) -> AsyncIterator[EventSource]:
        """The SSE stream of one directory's instance (``GET /event?directory=``)."""
        async with aconnect_sse(
            self.client, "GET", "/event", params={"directory": directory}, timeout=SSE_TIMEOUT
        ) as source:
            if source.response.status_code != 200:
                raise OpencodeServerError(f"opencode /event answered {source.response.status_code}")
            yield source

    def status(self) -> ServerStatus:
        return ServerStatus(
            key=self.key,
            project_id=self.place.project_id,
            state=self.state.value,
            pid=self.pid,
            url=self.url,
            version=self.version,
            age_seconds=round(time.monotonic() - self.started_at, 1),
            rss_mb=round(self.rss_bytes / 2**20, 1),
            active_turns=self.active_turns,
            sessions=tuple(sorted(self.sessions)),
            instances=len(self.directories),
            spares=len(self.spares),
        )


class OpencodePool:
    """Warm ``opencode serve`` processes; see the module docstring."""

    def __init__(
        self,
        settings: OpencodePoolSettings,
        opencode: OpencodeSettings,
        root: Path,
        *,
        binary: Path | None = None,
        sandbox: Sandbox | None = None,
    ) -> None:
        self.settings = settings
        self.opencode = opencode
        # Servers' HOMEs live under root/servers; the status file is root/pool-<nonce>.json.
        self.root = root
        self.sandbox = sandbox or Sandbox()
        self.nonce = f"{os.getpid()}.{secrets.token_hex(4)}"
        self.status_path = root / f"{STATUS_PREFIX}{self.nonce}.json"
        self._binary = binary
        self._servers: list[OpencodeServer] = []
        self._numbers = itertools.count(1)
        self._lock = anyio.Lock()
        self._tg: anyio.abc.TaskGroup | None = None
        self._stack = contextlib.AsyncExitStack()
        self._closed = False

    # ------------------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> OpencodePool:
        if self._binary is None:
            self._binary = await anyio.to_thread.run_sync(find_opencode, self.opencode.binary)
        await anyio.to_thread.run_sync(_prepare_root, self.root)
        await anyio.to_thread.run_sync(kill_orphans)
        self._tg = await self._stack.enter_async_context(anyio.create_task_group())
        self._tg.start_soon(self._maintain)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closed = True
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for server in list(self._servers):
                    tg.start_soon(self._stop, server)
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
        # The task group waits for its (cancelled) tasks, whose cleanup is shielded.
        await self._stack.aclose()
        with anyio.CancelScope(shield=True):
            prefix = f"{self.nonce}/"
            await anyio.to_thread.run_sync(lambda: kill_marked(lambda m: m.startswith(prefix)))
            with contextlib.suppress(OSError):
                await anyio.to_thread.run_sync(self.status_path.unlink)

    # ------------------------------------------------------------------------------------ API

    @property
    def servers(self) -> list[OpencodeServer]:
        return list(self._servers)

    def snapshot(self) -> list[ServerStatus]:
        return [server.status() for server in self._servers]

    def leftover_pids(self) -> list[int]:
        """Processes any server of this pool started that are still alive (after exit: none)."""
        prefix = f"{self.nonce}/"
        return sorted(marked_processes(lambda m: m.startswith(prefix)))

    @contextlib.asynccontextmanager
    async def lease(
        self, place: ProjectPlace, session_id: int, directory: str, server_key: str | None = None
    ) -> AsyncIterator[OpencodeServer]:
        """A ready server of ``place``'s project for one turn of ``session_id`` in ``directory``.

        The session's own server (``server_key``, else the one it used last) when it is still
        running and of this project; otherwise the project's least busy one, or a new one if all
        are busy and there is room. Raises :class:`OpencodeServerError` if the server cannot start
        (:class:`~backends.sandbox.SandboxUnavailable` if its sandbox cannot be made).
        """
        await self.sandbox.check()
        server = await self._choose(place, session_id, directory, server_key)
        server.active_turns += 1
        using = False
        try:
            await server.ready.wait()
            if server.state not in (ServerState.READY, ServerState.DRAINING):
                raise OpencodeServerError(server.describe_exit())
            disposal = server.disposing.get(directory)
            if disposal is not None:
                await disposal.wait()
            server.busy[directory] += 1
            using = True
            server.directories[directory] = time.monotonic()
            server.spares.discard(directory)
            yield server
        finally:
            if using:
                server.busy[directory] -= 1
                if not server.busy[directory]:
                    del server.busy[directory]
                server.directories[directory] = time.monotonic()
            server.active_turns -= 1
            server.last_used = time.monotonic()
            if server.state is ServerState.DRAINING and not server.active_turns and self._tg is not None:
                self._tg.start_soon(self._stop, server)

    async def dispose_directory(self, path: str | os.PathLike[str]) -> None:
        """Free every server's instance of a reaped worktree or dropped spare (``POST /instance/dispose``).

        The opencode sessions stay in the servers' databases; a later turn may still reuse them.
        """
        # Normalized the way turns name it (symlinks resolved; the directory may be gone already).
        directory = await anyio.to_thread.run_sync(os.path.realpath, path)
        for server in list(self._servers):
            for session_id in [s for s, d in server.sessions.items() if d == directory]:
                del server.sessions[session_id]
            if directory in server.directories and not server.busy[directory]:
                await self._dispose(server, directory)

    async def dispose_idle(self, idle_for: float) -> int:
        """Dispose the instances no turn used for ``idle_for`` seconds (spares and busy ones kept).

        The sessions stay bound to their server; their next turn loads the instance again.
        Returns how many were disposed.
        """
        cutoff = time.monotonic() - idle_for
        disposed = 0
        for server in list(self._servers):
            idle = [
                directory
                for directory, used in server.directories.items()
                if used <= cutoff and not server.busy[directory] and directory not in server.spares
            ]
            for directory in idle:
                disposed += await self._dispose(server, directory)
        if disposed:
            log.info("opencode_pool.instances_disposed", count=disposed, idle_for=idle_for)
        return disposed

    async def warm(self, place: ProjectPlace, directory: str) -> bool:
        """Load ``directory``'s instance on a ready server of ``place``'s project, as far as a first
        prompt would (:data:`WARM_REQUESTS`), and keep it as a spare until a turn uses it.

        True when it is loaded on a ready server (already, or now, after waiting for one that is
        starting); False when the project has no server (a spare never starts one) or the server
        did not answer.
        """
        live = self._live(place)
        ready = [s for s in live if s.state is ServerState.READY]
        if not ready and live:
            await live[0].ready.wait()  # set once it is ready or failed to start
            ready = [s for s in self._live(place) if s.state is ServerState.READY]
        if any(directory in s.directories for s in ready):
            return True
        if not ready:
            return False
        server = min(ready, key=lambda s: (s.active_turns, len(s.directories)))
        # Registered first: a turn in it meanwhile goes to this server, and it is never idle.
        server.spares.add(directory)
        server.directories[directory] = time.monotonic()
        if not await _load_instance(server, directory):
            server.spares.discard(directory)
            return False
        return True

    def unpin(self, directory: str) -> None:
        """A spare's directory became a session's: its instance is disposed when idle like any other."""
        for server in self._servers:
            server.spares.discard(directory)

    async def _dispose(self, server: OpencodeServer, directory: str) -> int:
        """``POST /instance/dispose`` of one directory; 1 if the server disposed it."""
        server.directories.pop(directory, None)
        server.spares.discard(directory)
        if server.state not in (ServerState.READY, ServerState.DRAINING) or directory in server.disposing:
            return 0
        done = server.disposing[directory] = anyio.Event()
        try:
            await server.request("POST", "/instance/dispose", directory=directory)
        except (httpx.HTTPError, OpencodeServerError) as exc:
            log.warning("opencode_pool.dispose_failed", server=server.key, error=str(exc))
            return 0
        finally:
            del server.disposing[directory]
            done.set()
        return 1

    async def check(self) -> None:
        """One maintenance pass: health, memory, age, idleness; then the status file."""
        now = time.monotonic()
        for server in list(self._servers):
            if server.state not in (ServerState.READY, ServerState.DRAINING):
                continue
            await self._probe(server)
            if server.health_failures >= UNHEALTHY_AFTER:
                self._recycle(server, f"unhealthy ({server.health_failures} failed health checks)", force=True)
            elif server.state is not ServerState.READY:
                continue  # already draining
            elif now - server.started_at > self.settings.max_age:
                self._recycle(server, "too old")
            elif server.rss_bytes > self.settings.max_rss_mb * 2**20:
                self._recycle(server, f"too large ({server.rss_bytes // 2**20} MB)")
            elif (
                not server.active_turns
                and now - server.last_used > self.settings.idle_shrink
                and len(self._live(server.place)) > self.settings.min_servers
            ):
                self._recycle(server, "idle", force=True, refill=False)
        if self.settings.instance_idle > 0:
            await self.dispose_idle(self.settings.instance_idle)
        for server in list(self._servers):
            if self._bloated(server, now):
                self._restart(server)
        for place in {s.place for s in self._live()}:
            self._fill(place)
        self._make_room()
        await self._write_status()

    # ------------------------------------------------------------------------------- choosing

    def _live(self, place: ProjectPlace | None = None) -> list[OpencodeServer]:
        """Running (or starting) servers, of ``place`` only if given."""
        return [s for s in self._servers if s.usable and (place is None or s.place == place)]

    async def _choose(
        self, place: ProjectPlace, session_id: int, directory: str, server_key: str | None
    ) -> OpencodeServer:
        async with self._lock:
            if self._closed or self._tg is None:
                raise OpencodeServerError("the opencode server pool is not running")
            # Only servers of exactly this place: a server never serves two projects, nor a
            # directory its sandbox was not made for.
            live = self._live(place)
            server = next((s for s in live if s.slot == server_key), None) if server_key else None
            server = server or next((s for s in live if session_id in s.sessions), None)
            # A spare worktree's instance is already loaded there.
            server = server or next((s for s in live if directory in s.directories), None)
            if server is None:
                if not live or (len(self._live()) < self.settings.servers and all(s.active_turns for s in live)):
                    server = self._spawn(place)
                else:
                    server = min(live, key=lambda s: (s.active_turns, len(s.sessions)))
            for other in self._servers:
                other.sessions.pop(session_id, None)
            server.sessions[session_id] = directory
            self._make_room(place)
            return server

    def _make_room(self, keep: ProjectPlace | None = None) -> None:
        """Over the ``servers`` cap: stop the least recently used idle servers (not of ``keep``'s project)."""
        idle = sorted(
            (s for s in self._live() if not s.active_turns and s.place != keep),
            key=lambda s: s.last_used,
        )
        for server in idle[: max(0, len(self._live()) - self.settings.servers)]:
            self._recycle(server, "over the servers cap", force=True, refill=False)

    def _fill(self, place: ProjectPlace) -> None:
        """Start servers of ``place``'s project until min_servers are running (or starting)."""
        if self._closed or self._tg is None:
            return
        for _ in range(self.settings.min_servers - len(self._live(place))):
            self._spawn(place)

    def _recycle(self, server: OpencodeServer, reason: str, *, force: bool = False, refill: bool = True) -> None:
        log.info("opencode_pool.recycle", server=server.key, reason=reason)
        if self._tg is None:
            return
        if force or not server.active_turns:
            self._tg.start_soon(self._stop, server)
        server.state = ServerState.DRAINING if server.state is ServerState.READY else server.state
        if refill:
            self._fill(server.place)

    # -------------------------------------------------------------------------------- servers

    def _spawn(self, place: ProjectPlace, replaces: OpencodeServer | None = None) -> OpencodeServer:
        assert self._tg is not None
        number = next(self._numbers)
        home = self.root / "servers" / f"{self.nonce}-{number}"
        server = OpencodeServer(f"{self.nonce}/{number}", home, place, replaces)
        self._servers.append(server)
        self._tg.start_soon(self._run, server)
        return server

    async def _run(self, server: OpencodeServer) -> None:
        """Start one server, wait for it to exit, clean up, restart it if it crashed."""
        crashed = False
        try:
            if server.replaces is not None:
                await server.replaces.exited.wait()  # its data slot is free then
            process = await self._start(server)
            crashed = await self._serve(server, process)
        except (OSError, BackendError) as exc:
            _start_failed(server, exc)
        finally:
            with anyio.CancelScope(shield=True):
                await self._cleanup(server)
        if crashed and not self._closed:
            log.warning("opencode_pool.crashed", error=server.describe_exit())
            if server.sessions or len(self._live(server.place)) < self.settings.min_servers:
                self._spawn(server.place)

    async def _start(self, server: OpencodeServer) -> anyio.abc.Process:
        assert self._binary is not None
        binary = self._binary
        sandboxed = (await self.sandbox.check()).usable
        await anyio.to_thread.run_sync(lambda: server.home.mkdir(parents=True, exist_ok=True))
        data_root = self.root / "data" / str(server.place.project_id)
        preferred = server.replaces.slot if server.replaces is not None else None
        server.replaces = None  # no chain of every server it ever replaced
        await anyio.to_thread.run_sync(_take_slot, server, data_root, preferred)
        # Every tool use is asked of the turn, which answers with Switchyard's policy.
        env = opencode_env(replace(self.opencode, permission=ASK), server.home)
        if server.data_dir is not None:
            env["XDG_DATA_HOME"] = str(server.data_dir)
        env["OPENCODE_SERVER_PASSWORD"] = server._password
        env["OPENCODE_SERVER_USERNAME"] = USERNAME
        env[MARKER_ENV] = server.marker
        place = server.place
        for attempt in range(1, PORT_ATTEMPTS + 1):
            port = free_port()
            command = [str(binary), "serve", "--hostname", "127.0.0.1", "--port", str(port)]
            if sandboxed:
                wrap = partial(
                    self.sandbox.command,
                    command,
                    cwd=server.home,
                    writable=(place.worktrees, server.home, *([server.data_dir] if server.data_dir else [])),
                    read_only=(binary, *([place.git_dir] if place.git_dir else [])),
                    # Every other server's HOME, wherever the pool lives.
                    hidden=(self.root,),
                )
                command = await anyio.to_thread.run_sync(wrap)
            process = await anyio.open_process(
                command,
                stdin=subprocess.DEVNULL,
                cwd=server.home,
                env=env,
                start_new_session=True,
            )
            server.pid = process.pid
            server.tree = ProcessTree(process.pid, wrapped=sandboxed)
            if server.state is ServerState.STOPPING:
                process.kill()
            url = await self._await_listening(server, process)
            if url is not None:
                server.url = url
                return process
            await process.wait()
            if attempt == PORT_ATTEMPTS or not any(_BIND_FAILURE.search(line) for line in server._stderr):
                break
        raise OpencodeServerError(f"exited during startup: {' | '.join(server._stderr) or 'no output'}")

    async def _await_listening(self, server: OpencodeServer, process: anyio.abc.Process) -> str | None:
        """The URL from opencode's ``listening on`` line; None if it exited first."""
        assert process.stdout is not None
        stdout = BufferedByteReceiveStream(process.stdout)
        with anyio.fail_after(self.settings.startup_timeout):
            while True:
                try:
                    line = (await stdout.receive_until(b"\n", MAX_LINE)).decode(errors="replace")
                except (anyio.EndOfStream, anyio.IncompleteRead, anyio.DelimiterNotFound):
                    server._stderr.extend(await _read_all(process.stderr))
                    return None
                match = _LISTENING.search(line)
                if match:
                    return match.group(1)

    async def _serve(self, server: OpencodeServer, process: anyio.abc.Process) -> bool:
        """Health-check the new server, mark it ready, and wait for it to exit; True on a crash."""
        server._client = httpx.AsyncClient(
            base_url=server.url, auth=httpx.BasicAuth(USERNAME, server._password), timeout=REQUEST_TIMEOUT
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(_drain, process.stdout, None)
            tg.start_soon(_drain, process.stderr, server._stderr)
            try:
                health = await self._healthy(server, process)
            except (OSError, OpencodeServerError) as exc:
                # Handled here: out of the task group it would come wrapped in an ExceptionGroup.
                _start_failed(server, exc)
                tg.cancel_scope.cancel()
                return False
            server.version = str(health.get("version", ""))
            if server.state is ServerState.STARTING:
                server.state = ServerState.READY
            server.started_at = server.last_used = time.monotonic()
            server.ready.set()
            log.info("opencode_pool.ready", server=server.key, url=server.url)
            await self._write_status()
            await process.wait()
        server.returncode = process.returncode
        return server.state not in (ServerState.STOPPING,)

    async def _healthy(self, server: OpencodeServer, process: anyio.abc.Process) -> dict[str, Any]:
        """The first good ``/global/health`` answer of a starting server."""
        with anyio.fail_after(self.settings.startup_timeout):
            while True:
                health = await _health(server)
                if health is not None:
                    return health
                if process.returncode is not None:
                    raise OpencodeServerError(server.describe_exit())
                await anyio.sleep(0.1)

    async def _stop(self, server: OpencodeServer) -> None:
        """SIGTERM the server's process tree, SIGKILL whatever is left after the grace period."""
        if server.state is ServerState.EXITED:
            return
        server.state = ServerState.STOPPING
        if server.tree is not None:
            await server.tree.terminate(grace=self.settings.stop_grace)
        with anyio.move_on_after(self.settings.stop_grace):
            await server.exited.wait()

    async def _cleanup(self, server: OpencodeServer) -> None:
        """After the process exited (or failed to start): kill leftovers, drop sandbox and bindings."""
        crashed = server.state not in (ServerState.STOPPING, ServerState.EXITED)
        server.state = ServerState.EXITED
        await anyio.to_thread.run_sync(_kill_server, server)
        if server._client is not None:
            await server._client.aclose()
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(server.home, ignore_errors=True))
        if server.slot_lock is not None:
            os.close(server.slot_lock)  # the slot's data stays for the next server
            server.slot_lock = None
        if server in self._servers:
            self._servers.remove(server)
        server.ready.set()
        server.exited.set()
        log.info(
            "opencode_pool.exited",
            server=server.key,
            returncode=server.returncode,
            crashed=crashed,
        )
        if not self._closed:
            await self._write_status()

    async def _probe(self, server: OpencodeServer) -> None:
        health = await _health(server)
        server.health_failures = 0 if health is not None else server.health_failures + 1
        if server.tree is not None:
            server.rss_bytes = await anyio.to_thread.run_sync(tree_rss, server.tree)
            if not server.settled_rss and server.state is ServerState.READY:
                server.settled_rss = server.rss_bytes

    def _bloated(self, server: OpencodeServer, now: float) -> bool:
        """Grown by more than idle_growth_mb since it settled, and without a turn for idle_restart_after."""
        s = self.settings
        return (
            s.idle_growth_mb > 0
            and server.state is ServerState.READY
            and not server.active_turns
            and bool(server.settled_rss)
            and server.rss_bytes - server.settled_rss > s.idle_growth_mb * 2**20
            and now - server.last_used > s.idle_restart_after
        )

    def _restart(self, server: OpencodeServer) -> None:
        """Replace a server by a new process on the same data slot (its opencode sessions stay):
        the replacement takes its sessions at once (a turn waits for it to be ready) and loads
        the instances the old one still had loaded, so their next turns stay warm."""
        assert self._tg is not None
        grown = (server.rss_bytes - server.settled_rss) // 2**20
        log.info("opencode_pool.restart", server=server.key, grown_mb=grown, instances=len(server.directories))
        loaded, spares = dict(server.directories), set(server.spares)
        server.state = ServerState.DRAINING  # chosen by no turn from now on
        new = self._spawn(server.place, replaces=server)
        new.sessions, server.sessions = server.sessions, {}
        self._tg.start_soon(self._stop, server)
        self._tg.start_soon(self._reload, new, loaded, spares)

    async def _reload(self, server: OpencodeServer, loaded: Mapping[str, float], spares: set[str]) -> None:
        """Load ``loaded``'s instances on a restarted server, keeping when each was last used."""
        await server.ready.wait()
        for directory, used in loaded.items():
            if server.state is not ServerState.READY or directory in server.directories:
                continue
            server.directories[directory] = used
            if directory in spares:
                server.spares.add(directory)
            if not await _load_instance(server, directory):
                return

    async def _maintain(self) -> None:
        while True:
            await anyio.sleep(self.settings.health_interval)
            await self.check()

    async def _write_status(self) -> None:
        payload = {
            "owner_pid": os.getpid(),
            "pool": self.nonce,
            "updated_at": time.time(),
            "servers": [asdict(s) for s in self.snapshot()],
        }
        path = self.status_path
        try:
            await anyio.to_thread.run_sync(write_status, path, payload)
        except OSError as exc:  # only `switchyard pool` misses it
            log.warning("opencode_pool.status_not_written", path=str(path), error=str(exc))


# ---------------------------------------------------------------------------- status file


def read_pool_status(root: Path) -> list[dict[str, Any]]:
    """The status files of running pools under ``root`` (those of dead processes are skipped)."""
    return read_status(root, STATUS_PREFIX)


def _take_slot(server: OpencodeServer, data_root: Path, preferred: str | None = None) -> None:
    """Give ``server`` the ``preferred`` data slot if it is free, else the lowest one no other
    server (of any process) holds: an exclusive flock on the slot, kept until the server is
    cleaned up."""
    names = [preferred] if preferred and preferred.startswith(SLOT_PREFIX) else []
    for name in itertools.chain(names, (f"{SLOT_PREFIX}{n}" for n in itertools.count(1))):
        directory = data_root / name
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / SLOT_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        server.slot, server.data_dir, server.slot_lock = directory.name, directory, fd
        return


def _prepare_root(root: Path) -> None:
    (root / "servers").mkdir(parents=True, exist_ok=True)
    # Status files and sandboxes of pools whose process is gone.
    remove_stale(root, STATUS_PREFIX)
    for home in (root / "servers").iterdir():
        if owner_gone(home.name):
            shutil.rmtree(home, ignore_errors=True)


# ---------------------------------------------------------------------------- processes


def marked_processes(match: Callable[[str], bool]) -> dict[int, str]:
    """Processes whose :data:`MARKER_ENV` value satisfies ``match``: pid -> marker."""
    needle = f"{MARKER_ENV}=".encode()
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                environ = fh.read()
        except OSError:
            continue
        for item in environ.split(b"\0"):
            if item.startswith(needle):
                marker = item[len(needle) :].decode(errors="replace")
                if match(marker):
                    found[int(entry.name)] = marker
                break
    return found


def kill_marked(match: Callable[[str], bool]) -> list[int]:
    """SIGKILL every marked process."""
    pids = list(marked_processes(match))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return pids


def kill_orphans() -> list[int]:
    """Kill what servers of pools whose owning process died left behind."""

    return kill_marked(owner_gone)


def tree_rss(tree: ProcessTree) -> int:
    """Resident memory (bytes) of a live process tree."""
    total = 0
    for pid in tree.scan():
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError):
            continue
    return total


def _kill_server(server: OpencodeServer) -> None:
    """SIGKILL what is left of a server: its tree, and marked processes that were reparented."""
    if server.tree is not None:
        server.tree.kill_now()
    marker = server.marker
    kill_marked(lambda m: m == marker)


def _start_failed(server: OpencodeServer, exc: Exception) -> None:
    server.error = f"opencode server {server.key} could not start: {exc}"
    log.warning("opencode_pool.start_failed", server=server.key, error=str(exc))


async def _load_instance(server: OpencodeServer, directory: str) -> bool:
    """Load ``directory``'s instance as far as a first prompt would (:data:`WARM_REQUESTS`)."""
    try:
        for path, params in WARM_REQUESTS:
            await server.request("GET", path, directory=directory, params=params)
    except (httpx.HTTPError, OpencodeServerError) as exc:
        log.warning("opencode_pool.warm_failed", server=server.key, directory=directory, error=str(exc))
        return False
    return True


async def _health(server: OpencodeServer) -> dict[str, Any] | None:
    try:
        body = await server.request("GET", "/global/health", http_timeout=HEALTH_TIMEOUT)
    except (httpx.HTTPError, OpencodeServerError):
        return None
    return body if isinstance(body, dict) and body.get("healthy") else None


async def _drain(stream: anyio.abc.ByteReceiveStream | None, tail: deque[str] | None) -> None:
    if stream is None:
        return
    buffered = BufferedByteReceiveStream(stream)
    while True:
        try:
            line = await buffered.receive_until(b"\n", MAX_LINE)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.DelimiterNotFound, anyio.BrokenResourceError):
            return
        if tail is not None and line.strip():
            tail.append(line.decode(errors="replace").strip())


async def _read_all(stream: anyio.abc.ByteReceiveStream | None) -> list[str]:
    lines: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
    with anyio.move_on_after(2):
        await _drain(stream, lines)
    return list(lines)
