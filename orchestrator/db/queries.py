"""SQL of the database layer: migrations and the embedded cluster's bootstrap."""

from __future__ import annotations

LOCK_MIGRATION = "SELECT pg_advisory_xact_lock($1)"
SCHEMA_VERSION_TABLE_EXISTS = "SELECT to_regclass('schema_version') IS NOT NULL"
SCHEMA_VERSION = "SELECT coalesce(max(version), 0) FROM schema_version"
SCHEMA_VERSIONS = "SELECT coalesce(array_agg(version), '{}') FROM schema_version"

# Run through psql by the embedded cluster (a fixed database name, no parameters).
DATABASE_EXISTS = "SELECT 1 FROM pg_database WHERE datname = 'switchyard'"
CREATE_DATABASE = "CREATE DATABASE switchyard"

# ---------------------------------------------------------------------------- workers (orchestrator.db.workers)

# The advisory lock key of a worker id; advisory locks are per database.
_WORKER_KEY = "hashtextextended('switchyard-worker:' || {id}, 0)"
_HOLDS_WORKER_LOCK = """
       l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND l.classid = ((({key}) >> 32) & 4294967295)::oid
   AND l.objid = (({key}) & 4294967295)::oid
"""

TRY_WORKER_LOCK = "SELECT pg_try_advisory_lock(" + _WORKER_KEY.format(id="$1") + ")"

# Our row, and what it said before (the previous holder), in one statement.
RECORD_WORKER = """
WITH previous AS (SELECT host, process FROM workers WHERE id = $1)
INSERT INTO workers AS w (id, kind, host, pid, process, url, started_at, seen_at)
VALUES ($1, $2, $3, $4, $5, $6, now(), now())
ON CONFLICT (id) DO UPDATE
   SET kind = EXCLUDED.kind, host = EXCLUDED.host, pid = EXCLUDED.pid, process = EXCLUDED.process,
       url = coalesce(EXCLUDED.url, w.url),
       started_at = CASE WHEN w.process = EXCLUDED.process THEN w.started_at ELSE now() END,
       seen_at = now()
RETURNING (SELECT host FROM previous) AS host, (SELECT process FROM previous) AS process
"""

WORKER = "SELECT id, kind, host, pid, process, url, started_at, seen_at FROM workers WHERE id = $1"

WORKER_LOCK_HOLDER = (
    """
SELECT l.pid AS backend_pid, w.host, w.pid, w.process
  FROM pg_locks l LEFT JOIN workers w ON w.id = $1
 WHERE """
    + _HOLDS_WORKER_LOCK.format(key=_WORKER_KEY.format(id="$1"))
    + " LIMIT 1"
)

SET_WORKER_URL = "UPDATE workers SET url = $2, seen_at = now() WHERE id = $1"

SET_APPLICATION_NAME = "SELECT set_config('application_name', $1, false)"

TERMINATE_BACKEND = "SELECT pg_terminate_backend($1)"

# `switchyard status`: every registered process, whether it is live (holds its lock), its turns.
WORKERS = (
    """
SELECT w.id, w.kind, w.host, w.pid, w.url, w.started_at,
       EXISTS (SELECT 1 FROM pg_locks l WHERE """
    + _HOLDS_WORKER_LOCK.format(key=_WORKER_KEY.format(id="w.id"))
    + """) AS live,
       (SELECT count(*) FROM tasks t WHERE t.state = 'running' AND t.claimed_by = w.id) AS running
  FROM workers w
 ORDER BY w.kind, w.id
"""
)

# ---------------------------------------------------------------------------- nodes (orchestrator.db.nodes)

# A dispatcher's heartbeat, on its worker lock's connection: the node's row (what it can run now)
# and the worker's membership. A node back from the dead starts afresh (started_at).
# Where each project is, for the heartbeat's reachability check.
PROJECT_PLACES = "SELECT id, repo_path, remote_url FROM projects ORDER BY id"

NODE_HEARTBEAT = """
WITH member AS (UPDATE workers SET node_id = $1, seen_at = now() WHERE id = $6)
INSERT INTO nodes AS n (id, host, agents, capacity, dead_after, unreachable_projects)
VALUES ($1, $2, $3, $4, $5, $7)
ON CONFLICT (id) DO UPDATE
   SET host = EXCLUDED.host, agents = EXCLUDED.agents, capacity = EXCLUDED.capacity,
       dead_after = EXCLUDED.dead_after, unreachable_projects = EXCLUDED.unreachable_projects, seen_at = now(),
       started_at = CASE WHEN n.seen_at < now() - make_interval(secs => n.dead_after) THEN now()
                         ELSE n.started_at END
RETURNING n.drain_requested_at IS NOT NULL AS draining
"""

NODE_COLUMNS = """
n.id, n.host, n.agents, n.capacity, n.dead_after, n.started_at, n.seen_at, n.drain_requested_at,
n.unreachable_projects, n.seen_at >= now() - make_interval(secs => n.dead_after) AS alive,
extract(epoch FROM now() - n.seen_at)::float8 AS silent_for,
(SELECT count(*) FROM session_worktrees w WHERE w.node_id = n.id AND w.status = 'active') AS sessions,
(SELECT count(*) FROM tasks t JOIN workers k ON k.id = t.claimed_by
  WHERE t.state = 'running' AND k.node_id = n.id) AS running
"""

NODES = f"SELECT {NODE_COLUMNS} FROM nodes n ORDER BY n.id"

NODE = f"SELECT {NODE_COLUMNS} FROM nodes n WHERE n.id = $1"

# $2 true: drain (stop claiming, let the idle sessions move); false: claim again.
SET_NODE_DRAIN = """
UPDATE nodes SET drain_requested_at = CASE WHEN $2 THEN coalesce(drain_requested_at, now()) END
 WHERE id = $1
RETURNING id
"""
