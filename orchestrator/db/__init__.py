"""The database layer: which database (a URL, or the embedded cluster), and its schema."""

from __future__ import annotations

from orchestrator.db.embedded import EmbeddedPostgres
from orchestrator.db.instance import ServiceLock
from orchestrator.db.migrate import SCHEMA_VERSION, migrate, migrate_url, schema_version
from orchestrator.db.nodes import NodeBeat, NodeRow, get_node, list_nodes, set_drain
from orchestrator.db.settings import DatabaseSettings, NodeSettings
from orchestrator.db.url import data_dir_cluster, database_url, keep_cluster
from orchestrator.db.workers import Held, WorkerLock, WorkerRow, default_base, derived_ids, list_workers

__all__ = [
    "SCHEMA_VERSION",
    "DatabaseSettings",
    "EmbeddedPostgres",
    "Held",
    "NodeBeat",
    "NodeRow",
    "NodeSettings",
    "ServiceLock",
    "WorkerLock",
    "WorkerRow",
    "data_dir_cluster",
    "database_url",
    "default_base",
    "derived_ids",
    "get_node",
    "keep_cluster",
    "list_nodes",
    "list_workers",
    "migrate",
    "migrate_url",
    "schema_version",
    "set_drain",
]
