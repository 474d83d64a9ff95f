"""Prometheus metrics of a process: each package defines its own, this module renders them all.

Metrics live in prometheus_client's default registry, so one ``GET /metrics`` of a process
(the gateway's port, a dispatcher's health port) shows everything that process runs. Values
that must be read at scrape time from the database (tasks by state) come from refreshers
registered with :func:`on_scrape`; each gets ``REFRESH_TIMEOUT`` seconds, and one that fails
leaves its metrics as they were (and is logged), so a scrape never fails on its account.
Every :class:`kernel.db.BoundedPool` reports its connections.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

import anyio
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kernel.db import live_pools, report
from kernel.logs import get_logger

log = get_logger("metrics")

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
REFRESH_TIMEOUT = 2.0
METRIC_PREFIX = "switchyard_"

Refresh = Callable[[], Awaitable[None]]
_refreshers: list[Refresh] = []


def on_scrape(refresh: Refresh) -> Callable[[], None]:
    """Run ``refresh`` before every render; returns the function that unregisters it."""
    _refreshers.append(refresh)

    def unregister() -> None:
        if refresh in _refreshers:
            _refreshers.remove(refresh)

    return unregister


async def render_metrics() -> bytes:
    """The process's metrics in the Prometheus text format."""
    for refresh in list(_refreshers):
        try:
            with anyio.fail_after(REFRESH_TIMEOUT):
                await refresh()
        except Exception as exc:
            report(log, "metrics.refresh_failed", exc)
    return bytes(generate_latest(REGISTRY))


class _PoolCollector(Collector):
    """Connections of every live database pool, by pool name: in use, idle, the maximum."""

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            METRIC_PREFIX + "db_pool_connections", "Connections of a database pool", labels=["pool", "state"]
        )
        for pool in live_pools():
            size, idle = pool.get_size(), pool.get_idle_size()
            family.add_metric([pool.name, "in_use"], size - idle)
            family.add_metric([pool.name, "idle"], idle)
            family.add_metric([pool.name, "max"], pool.get_max_size())
        yield family


REGISTRY.register(_PoolCollector())
