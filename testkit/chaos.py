"""The chaos soak: many turns while processes die, PostgreSQL restarts and the network breaks.

``bench/chaos.py`` runs it at full size and prints its :class:`Report` as JSON; the test suite runs
a smaller one (tests/e2e/test_chaos.py). One PostgreSQL (a temporary cluster), dispatcher and
gateway processes (``switchyard dispatcher`` / ``switchyard gateway``), each reaching the database
through a pausable proxy of its own (testkit.proxy), the fake model, and WebSocket clients. Tasks
over ``sessions`` sessions mix noop turns (some held open a moment), native turns against the
fake model (some slow, some answered 500 first) and warm opencode turns (some writing a file).

While tasks are submitted, faults are injected on schedules: a random dispatcher is killed -9 and
started again (on its own data directory: the same worker id), PostgreSQL restarts, a random
``opencode serve`` is killed -9, a random proxy drops all its connections, and a dispatcher's
proxy pauses for longer than its lease (a partition: its turns must fence themselves). Clients
disconnect at random and resume with ``since_seq``.

At the end every process is stopped gracefully and the soak counts what must never happen;
every count must be 0: tasks lost (not terminal) or stuck running, tasks completed twice,
sessions whose attempts overlapped, writes of an attempt after the next one began, messages
left streaming, processes left behind, clients whose frames differ from the log.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import anyio
import asyncpg
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import WebSocketException

from backends.opencode_pool import marked_processes
from kernel import DATABASE_ERRORS, connect, free_port
from orchestrator.db import EmbeddedPostgres, migrate
from testkit import SWITCHYARD
from testkit.cluster import reachable_tmp_dir
from testkit.fake_model import FakeModel, HttpError, RecordedRequest, Reply, Scripted, keyword_reply
from testkit.proxy import PausableProxy
from testkit.repos import sample_repo
from ws_gateway import create_token

T = TypeVar("T")

START_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0
DRAIN_TIMEOUT = 300.0
CLIENT_CATCH_UP_TIMEOUT = 120.0
DB_RETRY = 0.2


@dataclass(frozen=True)
class ChaosConfig:
    turns: int = 1000
    sessions: int = 100
    # Shares of the sessions by track; the rest are noop sessions.
    native_share: float = 0.3
    opencode_share: float = 0.1
    dispatchers: int = 3
    gateways: int = 2
    clients: int = 50
    # Tasks are submitted at about this rate (per second).
    submit_rate: float = 20.0
    # Faults: every this many seconds (0: never), while tasks are submitted.
    kill_every: float = 4.0
    restart_delay: float = 0.5
    postgres_restarts: int = 3
    opencode_kill_every: float = 12.0
    drop_every: float = 5.0
    partitions: int = 2
    client_drop_every: float = 3.0
    # Short, so partitions (lease + 3 s) outlast it; the margin covers an opencode abort (up to
    # 5 s); what is left (10 s) outlasts a PostgreSQL restart on a busy machine.
    lease_seconds: float = 16.0
    lease_margin: float = 6.0
    max_attempts: int = 6
    seed: int = 16


@dataclass
class Faults:
    dispatcher_kills: int = 0
    postgres_restarts: int = 0
    opencode_kills: int = 0
    connection_drops: int = 0
    partitions: int = 0
    client_reconnects: int = 0


@dataclass
class Report:
    config: dict[str, Any]
    faults: Faults
    # What must be 0.
    counts: dict[str, int]
    turns: int
    completed: int
    failed_by_reason: dict[str, int]
    attempts: dict[str, int]
    chaos_seconds: float
    total_seconds: float
    throughput_turns_per_s: float
    latency_ms: dict[str, float]
    latency_ms_by_track: dict[str, dict[str, float]]
    details: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(self.counts.values())

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "ok": self.ok}, indent=2, default=str)


# ---------------------------------------------------------------------------- the model


class ChaosModel:
    """The fake model's policy: ``SLOW`` streams for about a second, ``FLAKY`` fails once with 500."""

    def __init__(self) -> None:
        self._failed: set[str] = set()

    def __call__(self, request: RecordedRequest) -> Scripted:
        prompt = request.last_user_text
        if "FLAKY" in prompt and prompt not in self._failed and not request.is_title:
            self._failed.add(prompt)
            return HttpError(500, "fake internal error (FLAKY, once)")
        if "SLOW" in prompt and not request.is_title and request.last_role == "user":
            return Reply(text=[f"slow-{i} " for i in range(8)], chunk_delay=0.12)
        return keyword_reply(request)


# ---------------------------------------------------------------------------- processes


class Child:
    """A ``switchyard`` child process whose first stdout line says it is ready."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_dir = log_dir
        self.proc: subprocess.Popen[str] | None = None
        self.ready_line = ""
        self.pids: list[int] = []
        self.starts = 0
        self._stderr: IO[bytes] | None = None

    async def start(self) -> None:
        self.starts += 1
        self._stderr = (self.log_dir / f"{self.name}.{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once; its output is read from a thread
            [*SWITCHYARD, *self.args], env=self.env, stdout=subprocess.PIPE, stderr=self._stderr, text=True
        )
        self.pids.append(self.proc.pid)
        assert self.proc.stdout is not None
        with anyio.fail_after(START_TIMEOUT):
            # Abandoned on cancellation (the process is left running, and seen alive).
            self.ready_line = await anyio.to_thread.run_sync(self.proc.stdout.readline, abandon_on_cancel=True)
        if not self.ready_line:
            raise RuntimeError(f"{self.name} did not start: {self.stderr_tail()}")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    async def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await anyio.to_thread.run_sync(self.proc.wait, STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def exit_summary(self) -> str:
        code = self.proc.returncode if self.proc is not None else None
        return f"{self.name} (exit status {code}): {self.stderr_tail(2)}"

    def stderr_tail(self, lines: int = 5) -> str:
        path = self.log_dir / f"{self.name}.{self.starts}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def base_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD")}
    env["SWITCHYARD_LOG_LEVEL"] = "warning"
    env["SWITCHYARD__WORKTREES__ROOT"] = str(root / "worktrees")
    return env


# ---------------------------------------------------------------------------- the soak


class Soak:
    def __init__(self, config: ChaosConfig, root: Path, cluster: EmbeddedPostgres, model: FakeModel) -> None:
        self.config = config
        self.root = root
        self.cluster = cluster
        self.model = model
        self.rng = random.Random(config.seed)
        self.url = cluster.url("chaos")
        self.faults = Faults()
        self.dispatchers: list[Child] = []
        self.gateways: list[Child] = []
        self.proxies: dict[str, PausableProxy] = {}
        self.gateway_urls: list[str] = []
        self.submitted = 0
        self.submitting_done = anyio.Event()
        self.chaos_done = anyio.Event()
        self.session_ids: list[int] = []
        self.session_kind: dict[int, str] = {}
        self.token = ""
        self.project = 0
        # Dispatchers that exited without being killed (started again by the next kill or the drain).
        self.unexpected_exits: list[str] = []
        # (client, session) -> seqs received in order, with their frame types.
        self.received: dict[tuple[int, int], list[tuple[int, str]]] = {}
        self.killer_lock = anyio.Lock()
        self.log_dir = root / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ database helpers

    async def db(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``work`` on a fresh connection, retrying across restarts and drops."""
        while True:
            try:
                conn = await connect(self.url)
            except DATABASE_ERRORS:
                await anyio.sleep(DB_RETRY)
                continue
            try:
                return await work(conn)
            except DATABASE_ERRORS:
                await anyio.sleep(DB_RETRY)
            finally:
                conn.terminate()

    async def setup_database(self) -> None:
        admin = await connect(self.cluster.url("postgres"))
        try:
            await admin.execute("CREATE DATABASE chaos")
        finally:
            await admin.close()
        conn = await connect(self.url)
        try:
            await migrate(conn)
            repo = sample_repo(self.root / "project")
            project = await conn.fetchval(
                "INSERT INTO projects (name, repo_path) VALUES ('chaos', $1) RETURNING id", str(repo)
            )
            c = self.config
            native = round(c.sessions * c.native_share)
            opencode = round(c.sessions * c.opencode_share)
            kinds = ["opencode"] * opencode + ["native"] * native + ["noop"] * (c.sessions - native - opencode)
            for kind in kinds:
                session = await conn.fetchval(
                    "INSERT INTO sessions (project_id, title) VALUES ($1, $2) RETURNING id", project, f"chaos {kind}"
                )
                self.session_ids.append(session)
                self.session_kind[session] = kind
            self.project = project
            self.token = await create_token(conn, "chaos", None)
        finally:
            await conn.close()

    # ------------------------------------------------------------------ processes

    async def start_processes(self, tg: anyio.abc.TaskGroup) -> None:
        c = self.config
        pg_port = self.cluster.port
        for i in range(c.dispatchers + c.gateways):
            name = f"d{i}" if i < c.dispatchers else f"g{i - c.dispatchers}"
            proxy = PausableProxy(pg_port)
            await tg.start(proxy.run)
            self.proxies[name] = proxy
        for i in range(c.dispatchers):
            env = base_env(self.root)
            env.update(
                {
                    "SWITCHYARD_DATABASE_URL": self.proxies[f"d{i}"].url(self.url),
                    "SWITCHYARD_DATA_DIR": str(self.root / f"d{i}"),
                    "SWITCHYARD__NATIVE__BASE_URL": self.model.base_url,
                    "SWITCHYARD__NATIVE__MODEL": "fake-model",
                    "SWITCHYARD__OPENCODE__BASE_URL": self.model.base_url,
                    "SWITCHYARD__OPENCODE__MODELS": '["fake-model"]',
                    "SWITCHYARD__OPENCODE_POOL__SERVERS": "1",
                    "SWITCHYARD__OPENCODE_POOL__MIN_SERVERS": "1",
                    "SWITCHYARD__DISPATCHER__LEASE_SECONDS": str(c.lease_seconds),
                    "SWITCHYARD__DISPATCHER__LEASE_MARGIN": str(c.lease_margin),
                    "SWITCHYARD__DISPATCHER__POLL_INTERVAL": "0.5",
                    "SWITCHYARD__DISPATCHER__RETRY_BACKOFF": "0.2",
                    "SWITCHYARD__DISPATCHER__RETRY_BACKOFF_MAX": "2",
                    "SWITCHYARD__DISPATCHER__SHUTDOWN_GRACE": "10",
                    "SWITCHYARD__DISPATCHER__HEALTH_PORT": "0",
                }
            )
            self.dispatchers.append(Child(f"d{i}", ["dispatcher"], env, self.log_dir))
        for i in range(c.gateways):
            env = base_env(self.root)
            env["SWITCHYARD_DATABASE_URL"] = self.proxies[f"g{i}"].url(self.url)
            env["SWITCHYARD_DATA_DIR"] = str(self.root / f"g{i}")
            self.gateways.append(Child(f"g{i}", ["gateway", "--port", str(free_port())], env, self.log_dir))
        async with anyio.create_task_group() as starting:
            for child in [*self.dispatchers, *self.gateways]:
                starting.start_soon(child.start)
        self.gateway_urls = [g.ready_line.removeprefix("gateway: ").strip() for g in self.gateways]

    async def restart_dead_dispatchers(self) -> None:
        for child in self.dispatchers:
            if not child.alive:
                self.unexpected_exits.append(child.exit_summary())
                await child.start()

    # ------------------------------------------------------------------ submitting

    def task_input(self, n: int, kind: str) -> tuple[str, str]:
        """(agent, input) of task ``n`` of a session of ``kind``."""
        roll = self.rng.random()
        if kind == "native":
            word = "SLOW " if roll < 0.2 else "FLAKY " if roll < 0.3 else ""
            return "native", f"{word}native turn {n}"
        if kind == "opencode":
            if roll < 0.3:
                return "opencode", f"WRITE_FILE notes/turn-{n}.txt TOKEN-{n}"
            return "opencode", f"opencode turn {n}"
        # noop's "sleep:<seconds>" holds the turn open (so kills and partitions catch turns running).
        return "noop", "sleep:0.3" if roll < 0.1 else f"noop turn {n}"

    async def submit(self) -> None:
        c = self.config
        sessions = itertools.cycle(self.session_ids)
        started = anyio.current_time()
        for n in range(c.turns):
            session = next(sessions)
            agent, text = self.task_input(n, self.session_kind[session])
            key = f"chaos-{n}"

            async def insert(
                conn: asyncpg.Connection, s: int = session, a: str = agent, t: str = text, key: str = key
            ) -> None:
                await conn.execute(
                    """INSERT INTO tasks (project_id, session_id, input, agent, max_attempts, dispatch_key)
                       VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (project_id, dispatch_key) DO NOTHING""",
                    self.project,
                    s,
                    t,
                    a,
                    c.max_attempts,
                    key,
                )

            await self.db(insert)
            self.submitted += 1
            due = started + (n + 1) / c.submit_rate
            await anyio.sleep(max(0.0, due - anyio.current_time()))
        self.submitting_done.set()

    # ------------------------------------------------------------------ faults

    async def chaos(self) -> None:
        c = self.config
        async with anyio.create_task_group() as tg:
            if c.kill_every:
                tg.start_soon(self._every, c.kill_every, self.kill_a_dispatcher)
            if c.opencode_kill_every:
                tg.start_soon(self._every, c.opencode_kill_every, self.kill_an_opencode_server)
            if c.drop_every:
                tg.start_soon(self._every, c.drop_every, self.drop_connections)
            tg.start_soon(self._postgres_restarts)
            tg.start_soon(self._partitions)
            await self.submitting_done.wait()
            tg.cancel_scope.cancel()
        for proxy in self.proxies.values():
            proxy.resume()
        self.chaos_done.set()

    async def _every(self, period: float, fault: Callable[[], Awaitable[None]]) -> None:
        while True:
            await anyio.sleep(period * (0.5 + self.rng.random()))
            await fault()

    def _window(self) -> float:
        """Seconds the submission takes: faults that happen a fixed number of times spread over it."""
        return self.config.turns / self.config.submit_rate

    async def _postgres_restarts(self) -> None:
        count = self.config.postgres_restarts
        for i in range(count):
            await anyio.sleep(self._window() / (count + 1))
            # One immediate stop (a crash), the others fast (an operator's restart).
            mode = "immediate" if i == 1 else "fast"
            await anyio.to_thread.run_sync(self._restart_postgres, mode)
            self.faults.postgres_restarts += 1

    def _restart_postgres(self, mode: str) -> None:
        self.cluster.stop(mode)
        self.cluster.start()

    async def _partitions(self) -> None:
        count = self.config.partitions
        for _ in range(count):
            await anyio.sleep(self._window() / (count + 1))
            name = f"d{self.rng.randrange(self.config.dispatchers)}"
            proxy = self.proxies[name]
            proxy.pause()
            self.faults.partitions += 1
            try:
                # Longer than the lease: the dispatcher's turns fence themselves, others recover them.
                await anyio.sleep(self.config.lease_seconds + 3)
            finally:
                proxy.resume()

    async def kill_a_dispatcher(self) -> None:
        async with self.killer_lock:
            for child in self.dispatchers:
                if not child.alive:
                    await self._start_again(child)
            live = [d for d in self.dispatchers if d.alive]
            if not live:
                return
            victim = self.rng.choice(live)
            # Shielded: the end of the chaos must not cancel the restart of a victim just killed
            # (the drain would then count it as a dispatcher that exited on its own).
            with anyio.CancelScope(shield=True):
                victim.kill()
                self.faults.dispatcher_kills += 1
                await anyio.sleep(self.config.restart_delay)
                await self._start_again(victim)

    async def _start_again(self, child: Child) -> None:
        """Start a dispatcher again; one that exits on its own is counted (it must not)."""
        try:
            await child.start()
        except RuntimeError:
            self.unexpected_exits.append(child.exit_summary())

    async def kill_an_opencode_server(self) -> None:
        pids = {str(pid) for child in self.dispatchers for pid in child.pids}
        servers = await anyio.to_thread.run_sync(_opencode_servers, pids)
        if servers:
            with suppress(ProcessLookupError):
                os.kill(self.rng.choice(servers), signal.SIGKILL)
                self.faults.opencode_kills += 1

    async def drop_connections(self) -> None:
        proxy = self.proxies[self.rng.choice(sorted(self.proxies))]
        if not proxy.paused:
            proxy.drop()
            self.faults.connection_drops += 1

    # ------------------------------------------------------------------ clients

    async def client(self, number: int, sessions: list[int]) -> None:
        """Subscribe, read, drop the connection at random, resume with since_seq; until the end."""
        last = dict.fromkeys(sessions, 0)
        for session in sessions:
            self.received[(number, session)] = []
        rng = random.Random(self.config.seed * 1000 + number)
        while not self.chaos_done.is_set():
            url = rng.choice(self.gateway_urls)
            with anyio.move_on_after(self.config.client_drop_every * (0.3 + rng.random() * 1.4)):
                await self._follow(number, url, last, until=None)
            self.faults.client_reconnects += 1
            await anyio.sleep(rng.random() * 0.2)

    async def _follow(self, number: int, url: str, last: dict[int, int], until: dict[int, int] | None) -> bool:
        """One connection; with ``until``, returns True once every session reached its head."""
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            async with ws_connect(url, additional_headers=headers, open_timeout=10, max_size=2**24) as ws:
                await ws.send(json.dumps({"type": "subscribe", "id": 1, "session_ids": list(last), "since_seq": last}))
                async for message in ws:
                    frame = json.loads(message)
                    seq, session = frame.get("seq"), frame.get("session_id")
                    if frame.get("type") == "error":
                        return False
                    if seq is None or session not in last:
                        continue
                    self.received[(number, session)].append((seq, frame["type"]))
                    last[session] = max(last[session], seq)
                    if until is not None and all(last[s] >= head for s, head in until.items()):
                        return True
        except (OSError, WebSocketException, TimeoutError):
            await anyio.sleep(0.2)
        return False

    async def catch_up(self, number: int, sessions: list[int], heads: dict[int, int]) -> None:
        last = {s: max([seq for seq, _ in self.received[(number, s)]] or [0]) for s in sessions}
        wanted = {s: heads[s] for s in sessions}
        rng = random.Random(number)
        with anyio.fail_after(CLIENT_CATCH_UP_TIMEOUT):
            while not all(last[s] >= wanted[s] for s in sessions):
                if await self._follow(number, rng.choice(self.gateway_urls), last, wanted):
                    return

    # ------------------------------------------------------------------ the end

    async def drain(self) -> None:
        """Wait until every submitted task is terminal (dispatchers restarted if need be)."""
        await self.restart_dead_dispatchers()

        async def open_tasks(conn: asyncpg.Connection) -> int:
            n: int = await conn.fetchval(
                "SELECT count(*) FROM tasks WHERE state NOT IN ('completed', 'failed', 'cancelled')"
            )
            return n

        with anyio.move_on_after(DRAIN_TIMEOUT):
            while await self.db(open_tasks):  # noqa: ASYNC110 - the database is what changes
                await anyio.sleep(0.5)

    async def stop_all(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        async with anyio.create_task_group() as tg:

            async def stop(child: Child) -> None:
                codes[child.name] = await child.stop()

            for child in [*self.gateways, *self.dispatchers]:
                tg.start_soon(stop, child)
        return codes

    def kill_children(self) -> None:
        """However the soak ended, none of its processes outlives it (after a clean stop: none left)."""
        for child in [*self.gateways, *self.dispatchers]:
            child.kill()

    def kill_leftovers(self) -> None:
        for pid in self.leftovers():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def leftovers(self) -> list[int]:
        """opencode servers and what they started, of any dispatcher incarnation, still alive."""
        pids = {str(pid) for child in self.dispatchers for pid in child.pids}
        return sorted(marked_processes(lambda m: m.split(".", 1)[0] in pids))


def _opencode_servers(owners: set[str]) -> list[int]:
    """``opencode serve`` processes of pools whose owning dispatcher pid is in ``owners``."""
    servers = []
    for pid in marked_processes(lambda m: m.split(".", 1)[0] in owners):
        with suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"serve" in cmdline and any(b"opencode" in part for part in cmdline[:2]):
                servers.append(pid)
    return sorted(servers)


# ---------------------------------------------------------------------------- checks

CHECKS = {
    "tasks_lost": """
        SELECT count(*) FROM tasks WHERE state NOT IN ('completed', 'failed', 'cancelled')""",
    "tasks_missing": """
        SELECT $1::int - count(*) FROM tasks WHERE dispatch_key LIKE 'chaos-%'""",
    "tasks_stuck_running": """
        SELECT count(*) FROM tasks WHERE state = 'running'""",
    "tasks_completed_twice": """
        SELECT count(*) FROM (
            SELECT task_id FROM task_attempts WHERE outcome = 'completed' GROUP BY task_id HAVING count(*) > 1
            UNION
            SELECT (payload->>'task_id')::bigint FROM session_events
             WHERE type = 'task_state' AND payload->>'state' = 'completed'
             GROUP BY 1 HAVING count(*) > 1
            UNION
            SELECT task_id FROM messages WHERE role = 'assistant' AND status = 'complete'
             GROUP BY task_id HAVING count(*) > 1
        ) twice""",
    "sessions_with_overlapping_attempts": """
        SELECT count(DISTINCT session_id) FROM (
            SELECT t.session_id, a.ended_at,
                   lead(a.started_at) OVER (PARTITION BY t.session_id ORDER BY a.started_at) AS next_start
              FROM task_attempts a JOIN tasks t ON t.id = a.task_id
        ) s
         WHERE next_start IS NOT NULL AND (ended_at IS NULL OR ended_at > next_start)""",
    "writes_after_the_next_attempt_began": """
        WITH starts AS (
            SELECT session_id, seq, (payload->>'message_id')::bigint AS message_id,
                   lead(seq) OVER (PARTITION BY payload->>'task_id' ORDER BY seq) AS next_start
              FROM session_events WHERE type = 'message_started'
        ),
        running AS (
            SELECT session_id, seq, (payload->>'task_id')::bigint AS task_id, (payload->>'attempt')::int AS attempt
              FROM session_events WHERE type = 'task_state' AND payload->>'state' = 'running'
        )
        SELECT (SELECT count(*) FROM session_events e JOIN starts s
                    ON s.session_id = e.session_id AND (e.payload->>'message_id')::bigint = s.message_id
                 WHERE s.next_start IS NOT NULL AND e.seq > s.next_start)
             + (SELECT count(*) FROM session_events e JOIN running r
                    ON r.session_id = e.session_id AND (e.payload->>'task_id')::bigint = r.task_id
                 WHERE e.type = 'task_state' AND (e.payload->>'attempt')::int < r.attempt AND e.seq > r.seq)""",
    "messages_stuck_streaming": """
        SELECT count(*) FROM messages WHERE status = 'streaming'""",
}


async def _counts(conn: asyncpg.Connection, turns: int) -> dict[str, int]:
    counts = {}
    for name, sql in CHECKS.items():
        counts[name] = int(await conn.fetchval(sql, turns) if "$1" in sql else await conn.fetchval(sql))
    return counts


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 1)

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": round(ordered[-1], 1), "n": len(ordered)}


async def _statistics(conn: asyncpg.Connection) -> dict[str, Any]:
    rows = await conn.fetch(
        """SELECT agent, state, failure_reason, attempt,
                  extract(epoch FROM ended_at - created_at) * 1000 AS latency_ms,
                  extract(epoch FROM created_at) AS created, extract(epoch FROM ended_at) AS ended
             FROM tasks WHERE dispatch_key LIKE 'chaos-%'"""
    )
    completed = [r for r in rows if r["state"] == "completed"]
    by_track: dict[str, list[float]] = {}
    for r in completed:
        by_track.setdefault(r["agent"], []).append(float(r["latency_ms"]))
    span = 0.0
    if completed:
        span = max(float(r["ended"]) for r in completed) - min(float(r["created"]) for r in rows)
    return {
        "completed": len(completed),
        "failed_by_reason": dict(Counter(r["failure_reason"] for r in rows if r["state"] == "failed")),
        "attempts": {str(k): v for k, v in sorted(Counter(r["attempt"] for r in rows).items())},
        "latency": _percentiles([float(r["latency_ms"]) for r in completed]),
        "by_track": {track: _percentiles(values) for track, values in sorted(by_track.items())},
        "throughput": round(len(completed) / span, 1) if span else 0.0,
    }


def _client_mismatches(soak: Soak, logs: dict[int, list[tuple[int, str]]]) -> list[dict[str, Any]]:
    wrong = []
    for (client, session), got in sorted(soak.received.items()):
        expected = logs.get(session, [])
        if got != expected:
            seqs = [s for s, _ in got]
            wrong.append(
                {
                    "client": client,
                    "session": session,
                    "received": len(got),
                    "log": len(expected),
                    "duplicated": len(seqs) - len(set(seqs)),
                    "missing": len({s for s, _ in expected} - set(seqs)),
                    "out_of_order": sum(1 for a, b in itertools.pairwise(seqs) if b < a),
                }
            )
    return wrong


# ---------------------------------------------------------------------------- the run


@asynccontextmanager
async def _environment(config: ChaosConfig) -> AsyncIterator[Soak]:
    if shutil.which("opencode") is None and config.opencode_share:
        raise RuntimeError("the chaos soak needs `opencode` on PATH (make tools; PATH=.tools/node_modules/.bin)")
    with reachable_tmp_dir() as root, FakeModel(default=ChaosModel()) as model:
        cluster = EmbeddedPostgres.create(root / "postgres", free_port())
        await anyio.to_thread.run_sync(cluster.start)
        try:
            yield Soak(config, root, cluster, model)
        finally:
            await anyio.to_thread.run_sync(cluster.stop, "immediate")


async def _run(soak: Soak, tg: anyio.abc.TaskGroup) -> tuple[float, dict[str, int | None]]:
    """Start everything, submit under faults, drain, let every client catch up, stop everything."""
    config = soak.config
    await soak.start_processes(tg)
    clients = [
        (n, [s for i, s in enumerate(soak.session_ids) if i % config.clients == n]) for n in range(config.clients)
    ]
    clients = [(n, sessions) for n, sessions in clients if sessions]
    chaos_began = time.monotonic()
    async with anyio.create_task_group() as run:
        run.start_soon(soak.submit)
        run.start_soon(soak.chaos)
        for number, sessions in clients:
            run.start_soon(soak.client, number, sessions)
    chaos_seconds = time.monotonic() - chaos_began
    await soak.drain()

    async def heads(conn: asyncpg.Connection) -> dict[int, int]:
        rows = await conn.fetch("SELECT id, last_seq FROM sessions")
        return {r["id"]: r["last_seq"] for r in rows}

    session_heads = await soak.db(heads)
    async with anyio.create_task_group() as catching_up:
        for number, sessions in clients:
            catching_up.start_soon(soak.catch_up, number, sessions, session_heads)
    return chaos_seconds, await soak.stop_all()


async def run_soak(config: ChaosConfig, keep_logs: Path | None = None) -> Report:
    """Run the soak; ``keep_logs``: copy every process's stderr there at the end."""
    began = time.monotonic()
    async with _environment(config) as soak, AsyncExitStack() as stack:
        if keep_logs is not None:
            stack.callback(shutil.copytree, soak.log_dir, keep_logs, dirs_exist_ok=True)
        stack.callback(soak.kill_leftovers)
        await soak.setup_database()
        try:
            # The proxies live in this task group; it ends (cancelled) once every process stopped.
            async with anyio.create_task_group() as tg:
                chaos_seconds, codes = await _run(soak, tg)
                tg.cancel_scope.cancel()
        finally:
            soak.kill_children()
        await anyio.sleep(1.0)
        leftovers = soak.leftovers()

        async def verdict(conn: asyncpg.Connection) -> tuple[dict[str, int], dict[str, Any], dict[int, Any]]:
            counts = await _counts(conn, config.turns)
            stats = await _statistics(conn)
            rows = await conn.fetch("SELECT session_id, seq, type FROM session_events ORDER BY session_id, seq")
            logs: dict[int, list[tuple[int, str]]] = {}
            for r in rows:
                logs.setdefault(r["session_id"], []).append((r["seq"], r["type"]))
            return counts, stats, logs

        counts, stats, logs = await soak.db(verdict)
        mismatched = _client_mismatches(soak, logs)
        counts["orphan_processes"] = len(leftovers)
        counts["clients_with_wrong_frames"] = len({m["client"] for m in mismatched})
        counts["unclean_exits"] = sum(1 for code in codes.values() if code != 0)
        counts["dispatchers_that_exited_on_their_own"] = len(soak.unexpected_exits)
        return Report(
            config=asdict(config),
            faults=soak.faults,
            counts=counts,
            turns=config.turns,
            completed=stats["completed"],
            failed_by_reason=stats["failed_by_reason"],
            attempts=stats["attempts"],
            chaos_seconds=round(chaos_seconds, 1),
            total_seconds=round(time.monotonic() - began, 1),
            throughput_turns_per_s=stats["throughput"],
            latency_ms=stats["latency"],
            latency_ms_by_track=stats["by_track"],
            details={
                "mismatched_clients": mismatched[:10],
                "orphans": leftovers,
                "exit_codes": sorted(codes.items()),
                "dispatcher_starts": [d.starts for d in soak.dispatchers],
                "unexpected_exits": soak.unexpected_exits,
            },
        )
