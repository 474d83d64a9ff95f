"""``switchyard status``: the service at a glance, for an operator at a terminal.

The queue (tasks by state, how many may run now, the oldest pending one's age), every live
dispatcher with its running turns and its metrics URL (and gone ones that still hold running
tasks), every live gateway with its connected clients (read from its ``/metrics``), and the warm
opencode servers of this data directory. ``--json`` prints the same as one object.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
import httpx

from backends import POOL_DIR, read_pool_status
from kernel import METRIC_PREFIX
from orchestrator.db import WorkerRow, list_workers
from orchestrator.dispatch import queue_summary

SCRAPE_TIMEOUT = 1.0
CLIENTS_METRIC = METRIC_PREFIX + "ws_clients"


async def read_status(conn: asyncpg.Connection, data_dir: Path) -> dict[str, Any]:
    summary = await queue_summary(conn)
    workers = await list_workers(conn)
    dispatchers = [_worker(w) for w in workers if w.kind == "dispatcher" and (w.live or w.running)]
    gateways = [_worker(w) for w in workers if w.kind == "gateway" and w.live]
    async with httpx.AsyncClient(timeout=SCRAPE_TIMEOUT) as client:
        for gateway in gateways:
            gateway["clients"] = await _clients(client, gateway["url"])
    pools = await anyio.to_thread.run_sync(read_pool_status, data_dir / POOL_DIR)
    return {
        "queue": {
            **summary.states,
            "runnable": summary.runnable,
            "oldest_pending_seconds": summary.oldest_pending_seconds,
        },
        "dispatchers": dispatchers,
        "gateways": gateways,
        "gone": sum(1 for w in workers if not w.live),
        "pool": [{**server, "pool_pid": pool["owner_pid"]} for pool in pools for server in pool["servers"]],
    }


def _worker(row: WorkerRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "host": row.host,
        "pid": row.pid,
        "live": row.live,
        "running": row.running,
        "url": row.url,
        "since": row.started_at.isoformat(timespec="seconds"),
    }


async def _clients(client: httpx.AsyncClient, ws_url: str | None) -> int | None:
    """A gateway's connected clients from its /metrics; None when it does not answer."""
    if not ws_url:
        return None
    parts = urlsplit(ws_url)
    metrics = urlunsplit(("https" if parts.scheme == "wss" else "http", parts.netloc, "/metrics", "", ""))
    try:
        response = await client.get(metrics)
        response.raise_for_status()
    except httpx.HTTPError:
        return None
    for line in response.text.splitlines():
        if line.startswith(CLIENTS_METRIC + " "):
            return int(float(line.split()[1]))
    return None


def print_status(state: dict[str, Any]) -> None:
    queue = state["queue"]
    oldest = queue["oldest_pending_seconds"]
    age = f", oldest {oldest:.1f} s" if oldest is not None else ""
    print(
        f"queue        pending {queue['pending']:,} ({queue['runnable']:,} runnable{age})  "
        f"running {queue['running']:,}  completed {queue['completed']:,}  failed {queue['failed']:,}  "
        f"cancelled {queue['cancelled']:,}"
    )
    _section("dispatchers", state["dispatchers"], ("id", "pid", "live", "running", "url"))
    _section("gateways", state["gateways"], ("url", "pid", "clients", "since"))
    pool = [
        {"server": s["key"], "state": s["state"], "pid": s["pid"], "rss_mb": s["rss_mb"], "turns": s["active_turns"]}
        for s in state["pool"]
    ]
    _section("pool", pool, ("server", "state", "pid", "rss_mb", "turns"))


def _section(title: str, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    if not rows:
        print(f"{title:<13}none")
        return
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(f"{title:<13}" + "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in cells:
        print(" " * 13 + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
