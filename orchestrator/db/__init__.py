"""The database layer: which database (a URL, or the embedded cluster), and its schema."""

from __future__ import annotations

from orchestrator.db.embedded import EmbeddedPostgres
from orchestrator.db.instance import ServiceLock
from orchestrator.db.migrate import SCHEMA_VERSION, migrate, migrate_url, schema_version
from orchestrator.db.settings import DatabaseSettings
from orchestrator.db.url import data_dir_cluster, database_url, keep_cluster
from orchestrator.db.workers import Held, WorkerLock, WorkerRow, default_base, derived_ids, list_workers

__all__ = [
    "SCHEMA_VERSION",
    "DatabaseSettings",
    "EmbeddedPostgres",
    "Held",
    "ServiceLock",
    "WorkerLock",
    "WorkerRow",
    "data_dir_cluster",
    "database_url",
    "default_base",
    "derived_ids",
    "keep_cluster",
    "list_workers",
    "migrate",
    "migrate_url",
    "schema_version",
]
