"""Which database to use: the configured URL, else the embedded cluster under data_dir."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from orchestrator.config import Config
from orchestrator.embedded_pg import EmbeddedPostgres
from orchestrator.logs import get_logger

log = get_logger("database")


def embedded_cluster(config: Config) -> EmbeddedPostgres:
    return EmbeddedPostgres.create(
        config.data_dir / "postgres", config.database.embedded_port, config.database.pg_bindir
    )


@asynccontextmanager
async def database_url(config: Config, *, own_cluster: bool = False) -> AsyncIterator[str]:
    """Yield a database URL, starting the embedded cluster when none is configured.

    A one-off command stops the cluster on exit only if it started it, so a running service
    keeps its database. The service itself (``own_cluster``) stops it on exit either way,
    including one left running by a previous run that was killed.
    """
    if config.database.url:
        yield config.database.url
        return
    cluster = await anyio.to_thread.run_sync(embedded_cluster, config)
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
