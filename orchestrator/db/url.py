"""Which database to use: the configured URL, else the embedded cluster under data_dir.

The embedded cluster is started by whoever needs it first and stopped only by the process that
started it (orchestrator.db.instance): a one-off command that started it stops it on exit,
unless a service (``up``) on the data directory uses it by then, which then owns it; the service
also adopts a cluster whose starter is gone (a killed earlier run) and stops it on exit. A
running service checks its cluster every ``CLUSTER_CHECK`` seconds (:func:`keep_cluster`): one
that stopped under it is started again, or the service exits saying why.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from kernel import get_logger
from orchestrator.db.embedded import EmbeddedPostgres
from orchestrator.db.instance import ClusterOwner, cluster_decision, service_running_elsewhere
from orchestrator.db.settings import DatabaseSettings
from orchestrator.errors import EmbeddedPostgresError

log = get_logger("database")

CLUSTER_DIR = "postgres"
CLUSTER_CHECK = 2.0


def data_dir_cluster(settings: DatabaseSettings, data_dir: Path) -> EmbeddedPostgres:
    """The embedded cluster of a data directory (``<data_dir>/postgres``); blocking."""
    return EmbeddedPostgres.create(data_dir / CLUSTER_DIR, settings.embedded_port, settings.pg_bindir)


def _start_or_adopt(cluster: EmbeddedPostgres, data_dir: Path, service: bool) -> bool:
    """Start the cluster if it is not running; True when this process owns it now."""
    with cluster_decision(data_dir):
        owner = ClusterOwner(data_dir)
        if not cluster.is_running():
            cluster.start()
            owner.claim()
            log.info("embedded_postgres.started", directory=cluster.directory, port=cluster.port)
            return True
        cluster.port = cluster.running_port() or cluster.port
        if service and owner.orphaned():
            owner.claim()
            log.info("embedded_postgres.adopted", directory=cluster.directory, port=cluster.port)
            return True
        return False


def _stop_if_mine(cluster: EmbeddedPostgres, data_dir: Path, service: bool) -> None:
    with cluster_decision(data_dir):
        owner = ClusterOwner(data_dir)
        # The service also stops one whose starter left it to it (or is gone).
        if not (owner.is_mine() or (service and owner.orphaned())):
            return
        if not service and service_running_elsewhere(data_dir):
            # A service started on this directory meanwhile and uses the cluster: it is its now.
            owner.release()
            return
        cluster.stop()
        owner.forget()
        log.info("embedded_postgres.stopped", directory=cluster.directory)


@asynccontextmanager
async def database_url(settings: DatabaseSettings, data_dir: Path, *, service: bool = False) -> AsyncIterator[str]:
    """Yield a database URL, starting the embedded cluster when none is configured (see the
    module docstring for who stops it)."""
    if settings.url:
        yield settings.url
        return
    cluster = await anyio.to_thread.run_sync(data_dir_cluster, settings, data_dir)
    mine = await anyio.to_thread.run_sync(_start_or_adopt, cluster, data_dir, service)
    try:
        yield cluster.url()
    finally:
        if mine or service:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_stop_if_mine, cluster, data_dir, service)


def _restart_if_stopped(cluster: EmbeddedPostgres, data_dir: Path) -> bool:
    """Start the cluster again if it stopped; True if it had to."""
    if cluster.postmaster_alive():
        return False
    with cluster_decision(data_dir):
        if cluster.is_running():
            return False
        log.warning("embedded_postgres.gone", directory=cluster.directory)
        try:
            cluster.start()
        except EmbeddedPostgresError as exc:
            raise EmbeddedPostgresError(
                f"the embedded PostgreSQL in {cluster.directory} stopped and could not be started again: {exc}"
            ) from exc
        ClusterOwner(data_dir).claim()
    log.warning("embedded_postgres.restarted", directory=cluster.directory, port=cluster.port)
    return True


async def keep_cluster(settings: DatabaseSettings, data_dir: Path) -> None:
    """The service's watch over its embedded cluster (nothing to do for a configured URL)."""
    if settings.url:
        return
    cluster = await anyio.to_thread.run_sync(data_dir_cluster, settings, data_dir)
    running = await anyio.to_thread.run_sync(cluster.running_port)
    cluster.port = running or cluster.port
    while True:
        await anyio.sleep(CLUSTER_CHECK)
        await anyio.to_thread.run_sync(_restart_if_stopped, cluster, data_dir)
