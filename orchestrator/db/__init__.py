"""The database layer: which database (a URL, or the embedded cluster), and its schema."""

from __future__ import annotations

from orchestrator.db.embedded import EmbeddedPostgres
from orchestrator.db.migrate import SCHEMA_VERSION, migrate, migrate_url, schema_version
from orchestrator.db.settings import DatabaseSettings
from orchestrator.db.url import data_dir_cluster, database_url

__all__ = [
    "SCHEMA_VERSION",
    "DatabaseSettings",
    "EmbeddedPostgres",
    "data_dir_cluster",
    "database_url",
    "migrate",
    "migrate_url",
    "schema_version",
]
