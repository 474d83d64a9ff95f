"""Which database to use: the configured URL, else the embedded cluster under data_dir."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from kernel import get_logger
from orchestrator.db.embedded import EmbeddedPostgres
from orchestrator.db.settings import DatabaseSettings

log = get_logger("database")

CLUSTER_DIR = "postgres"


def data_dir_cluster(settings: DatabaseSettings, data_dir: Path) -> EmbeddedPostgres:
    """The embedded cluster of a data directory (``<data_dir>/postgres``); blocking."""
    return EmbeddedPostgres.create(data_dir / CLUSTER_DIR, settings.embedded_port, settings.pg_bindir)


@asynccontextmanager
async def database_url(settings: DatabaseSettings, data_dir: Path, *, own_cluster: bool = False) -> AsyncIterator[str]:
    """Yield a database URL, starting the embedded cluster when none is configured.

    A one-off command stops the cluster on exit only if it started it, so a running service
    keeps its database. The service itself (``own_cluster``) stops it on exit either way,
    including one left running by a previous run that was killed.
    """
    if settings.url:
        yield settings.url
        return
    cluster = await anyio.to_thread.run_sync(data_dir_cluster, settings, data_dir)
    was_running = await anyio.to_thread.run_sync(cluster.is_running)
    if not was_running:
        await anyio.to_thread.run_sync(cluster.start)
        log.info("embedded_postgres.started", directory=cluster.directory, port=cluster.port)
    else:
        running_port = await anyio.to_thread.run_sync(cluster.running_port)
        cluster.port = running_port or cluster.port
    try:
        yield cluster.url()
    finally:
        if own_cluster or not was_running:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(cluster.stop)
            log.info("embedded_postgres.stopped", directory=cluster.directory)
