"""WebSocket fan-out: many clients on one session, delay from the session_events insert to receipt.

A private PostgreSQL cluster, one `switchyard gateway` process, CLIENTS WebSocket clients in
this process subscribed to one session, and a writer appending one event at a time at several
rates. The clients run websockets' protocol straight from the socket callbacks (no task per
client), so that the client side — all clients in one process, on the same machine — adds as
little as it can to the delay measured.

Each event carries the wall-clock time just before its INSERT; each client records when it
received the frame. Prints JSON, per rate: frames per second delivered in total, the p50/p99/max
delay over all frames, and per event the delay to its first and to its last receiving client
(the spread is the time to fan one frame out to every client), the INSERT's own duration, and
whether every client got every frame exactly once, in order.

    .venv/bin/python bench/ws_fanout.py [--clients 500] [--seconds 10] [--rates 4,20,40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import anyio
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from kernel.db import connect
from kernel.eventlog import SessionFrame, append_event
from kernel.net import free_port
from testkit import SWITCHYARD
from testkit.cluster import temporary_cluster
from ws_gateway import create_token

CONNECT_CONCURRENCY = 50
START_TIMEOUT_S = 60
DRAIN_TIMEOUT_S = 30


@dataclass
class Tally:
    """Frames received by all clients; ``done`` once every client has every frame."""

    expected: int
    received: int = 0
    done: anyio.Event = field(default_factory=anyio.Event)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


class BenchClient(asyncio.Protocol):
    """A WebSocket client that subscribes to one session and records each delta's delay."""

    def __init__(self, url: str, token: str, session_id: int, since: int, tally: Tally) -> None:
        self.protocol = ClientProtocol(parse_uri(url))
        self.request = self.protocol.connect()
        self.request.headers["Authorization"] = f"Bearer {token}"
        self.subscribe = {"type": "subscribe", "id": 1, "session_ids": [session_id], "since_seq": since}
        self.tally = tally
        self.subscribed = anyio.Event()
        self.delays: list[float] = []
        self.seqs: list[int] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.protocol.send_request(self.request)
        self.flush()

    def data_received(self, data: bytes) -> None:
        received = time.time()
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                self.on_frame(json.loads(bytes(event.data)), received)
        self.flush()

    def on_frame(self, frame: dict[str, Any], received: float) -> None:
        if frame["type"] == "hello":
            self.protocol.send_text(json.dumps(self.subscribe).encode())
        elif frame["type"] == "ack":
            self.subscribed.set()
        elif frame["type"] == "delta":
            self.seqs.append(frame["seq"])
            self.delays.append(received - frame["t"])
            self.tally.received += 1
            if self.tally.received >= self.tally.expected:
                self.tally.done.set()

    def flush(self) -> None:
        assert self.transport is not None
        for data in self.protocol.data_to_send():
            if data:
                self.transport.write(data)

    def close(self) -> None:
        self.protocol.send_close(1000)
        self.flush()
        assert self.transport is not None
        self.transport.close()


async def open_subscribed(client: BenchClient, url: str, limit: anyio.Semaphore) -> None:
    address = urlsplit(url)
    async with limit:
        loop = asyncio.get_running_loop()
        assert address.hostname is not None and address.port is not None
        await loop.create_connection(lambda: client, address.hostname, address.port)
        with anyio.fail_after(START_TIMEOUT_S):
            await client.subscribed.wait()


def start_gateway(db_url: str) -> subprocess.Popen[str]:
    """`switchyard gateway` on a free port; it migrates the database and prints its URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD")}
    env.update(SWITCHYARD_DATABASE_URL=db_url, SWITCHYARD_LOG_LEVEL="warning")
    # The bench measures delay, not the slow-client cut-off.
    env["SWITCHYARD__GATEWAY__SEND_QUEUE_FRAMES"] = "10000"
    return subprocess.Popen(
        [*SWITCHYARD, "gateway", "--port", str(free_port())],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


async def run(args: argparse.Namespace, db_url: str, gateway: subprocess.Popen[str]) -> dict[str, Any]:
    assert gateway.stdout is not None
    with anyio.fail_after(START_TIMEOUT_S):
        line = await anyio.to_thread.run_sync(gateway.stdout.readline)
    url = line.removeprefix("gateway: ").strip()
    writer = await connect(db_url)
    try:
        project = await writer.fetchval(
            "INSERT INTO projects (name, repo_path) VALUES ('bench', '/bench') RETURNING id"
        )
        session = await writer.fetchval("INSERT INTO sessions (project_id) VALUES ($1) RETURNING id", project)
        token = await create_token(writer, "bench", [project])
        results = [await measure(args, url, token, session, writer, rate) for rate in args.rates]
    finally:
        await writer.close()
    return {
        "bench": "ws_fanout",
        "clients": args.clients,
        "seconds_per_rate": args.seconds,
        "cpus": os.cpu_count(),
        "note": "gateway in its own process; clients and writer share this process and the machine",
        "runs": results,
    }


async def measure(
    args: argparse.Namespace, url: str, token: str, session: int, writer: Any, rate: float
) -> dict[str, Any]:
    since = await writer.fetchval("SELECT last_seq FROM sessions WHERE id = $1", session)
    events = max(1, int(rate * args.seconds))
    tally = Tally(expected=events * args.clients)
    clients = [BenchClient(url, token, session, since, tally) for _ in range(args.clients)]
    limit = anyio.Semaphore(CONNECT_CONCURRENCY)
    async with anyio.create_task_group() as tg:
        for client in clients:
            tg.start_soon(open_subscribed, client, url, limit)
    inserts: list[float] = []
    started = time.monotonic()
    for i in range(events):
        await anyio.sleep_until(started + i / rate)
        sent = time.time()
        await append_event(writer, session, SessionFrame.DELTA, {"message_id": 1, "text": "x" * 40, "t": sent})
        inserts.append(time.time() - sent)
    elapsed = time.monotonic() - started
    with anyio.move_on_after(DRAIN_TIMEOUT_S):
        await tally.done.wait()
    for client in clients:
        client.close()
    delays = [d for c in clients for d in c.delays]
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    for client in clients:
        for seq, delay in zip(client.seqs, client.delays, strict=True):
            first[seq] = min(first.get(seq, delay), delay)
            last[seq] = max(last.get(seq, delay), delay)
    expected = list(range(since + 1, since + events + 1))
    return {
        "events_per_s": rate,
        "target_frames_per_s": rate * args.clients,
        "frames_received": len(delays),
        "frames_per_s": round(len(delays) / elapsed, 1),
        "every_client_got_every_frame_in_order": all(c.seqs == expected for c in clients),
        "p50_ms": ms(percentile(delays, 0.50)),
        "p99_ms": ms(percentile(delays, 0.99)),
        "max_ms": ms(max(delays)),
        "per_event_first_client_p50_ms": ms(percentile(list(first.values()), 0.50)),
        "per_event_last_client_p50_ms": ms(percentile(list(last.values()), 0.50)),
        "per_event_last_client_max_ms": ms(max(last.values())),
        "insert_p50_ms": ms(percentile(inserts, 0.50)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rates", default="4,20,40", help="events per second to write, comma-separated")
    args = parser.parse_args()
    args.rates = [float(r) for r in args.rates.split(",")]
    with temporary_cluster() as cluster:
        gateway = start_gateway(cluster.url())
        try:
            print(json.dumps(anyio.run(run, args, cluster.url(), gateway), indent=2))
        finally:
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(START_TIMEOUT_S)


if __name__ == "__main__":
    main()
