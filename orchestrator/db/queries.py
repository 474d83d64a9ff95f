"""SQL of the database layer: migrations and the embedded cluster's bootstrap."""

from __future__ import annotations

LOCK_MIGRATION = "SELECT pg_advisory_xact_lock($1)"
SCHEMA_VERSION_TABLE_EXISTS = "SELECT to_regclass('schema_version') IS NOT NULL"
SCHEMA_VERSION = "SELECT coalesce(max(version), 0) FROM schema_version"

# Run through psql by the embedded cluster (a fixed database name, no parameters).
DATABASE_EXISTS = "SELECT 1 FROM pg_database WHERE datname = 'switchyard'"
CREATE_DATABASE = "CREATE DATABASE switchyard"
