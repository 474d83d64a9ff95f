"""The database itself enforces the design's invariants (DESIGN.md, "Data model")."""

from __future__ import annotations

import hashlib
import json
import uuid

import asyncpg
import pytest

from kernel.errors import SchemaError
from orchestrator.db.migrate import SCHEMA_VERSION, migrate

pytestmark = pytest.mark.anyio


async def _project_and_session(conn: asyncpg.Connection) -> tuple[int, int]:
    project = await conn.fetchval("INSERT INTO projects (name, repo_path) VALUES ('p', '/srv/p') RETURNING id")
    session = await conn.fetchval("INSERT INTO sessions (project_id) VALUES ($1) RETURNING id", project)
    return project, session


async def _running_task(conn: asyncpg.Connection, project: int, session: int) -> None:
    await conn.execute(
        """INSERT INTO tasks (project_id, session_id, input, state, claim_token, lease_expires_at, started_at)
           VALUES ($1, $2, 'x', 'running', $3, now() + interval '30 s', now())""",
        project,
        session,
        uuid.uuid4(),
    )


async def test_second_running_task_in_a_session_is_refused(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        project, session = await _project_and_session(conn)
        await _running_task(conn, project, session)
        with pytest.raises(asyncpg.UniqueViolationError, match="tasks_one_running_per_session"):
            await _running_task(conn, project, session)
        # Another session may run at the same time.
        other = await conn.fetchval("INSERT INTO sessions (project_id) VALUES ($1) RETURNING id", project)
        await _running_task(conn, project, other)


async def test_second_pending_change_in_a_session_is_refused(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        _, session = await _project_and_session(conn)
        insert = "INSERT INTO pending_changes (session_id, base_commit, diff) VALUES ($1, $2, 'd')"
        await conn.execute(insert, session, "a" * 40)
        with pytest.raises(asyncpg.UniqueViolationError, match="pending_changes_one_pending_per_session"):
            await conn.execute(insert, session, "b" * 40)


async def test_duplicate_dispatch_key_in_a_project_is_refused_and_on_conflict_is_a_no_op(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        project, _ = await _project_and_session(conn)
        other = await conn.fetchval("INSERT INTO projects (name, repo_path) VALUES ('q', '/srv/q') RETURNING id")
        insert = "INSERT INTO tasks (project_id, input, dispatch_key) VALUES ($1, 'x', 'k1')"
        await conn.execute(insert, project)
        with pytest.raises(asyncpg.UniqueViolationError, match="tasks_project_dispatch_key"):
            await conn.execute(insert, project)
        status = await conn.execute(insert + " ON CONFLICT (project_id, dispatch_key) DO NOTHING", project)
        assert status == "INSERT 0 0"
        # The same key in another project is another task.
        assert await conn.execute(insert + " ON CONFLICT (project_id, dispatch_key) DO NOTHING", other) == "INSERT 0 1"
        assert await conn.fetchval("SELECT count(*) FROM tasks") == 2


def reference_dispatch_key(agent: str, dag_task_id: str, prompt: str, parent_session_id: int | None) -> str:
    """The key as a submitter in any language computes it (DESIGN.md, "Idempotent submission")."""
    parts = [agent, dag_task_id, hashlib.sha256(prompt.encode()).hexdigest(), str(parent_session_id or "")]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


async def test_the_sql_dispatch_key_is_the_seed_formula_and_makes_a_repeat_idempotent(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        project, session = await _project_and_session(conn)
        for args in (("opencode", "step-3", "fix the bug ✓", 42), ("noop", "", "", None)):
            key = await conn.fetchval("SELECT switchyard_dispatch_key($1, $2, $3, $4)", *args)
            assert key == reference_dispatch_key(*args)
        dispatch = """
            INSERT INTO tasks (project_id, input, agent, dispatch_key)
            VALUES ($1, 'fix it', 'opencode', switchyard_dispatch_key('opencode', 'step-3', 'fix it', $2))
            ON CONFLICT (project_id, dispatch_key) DO NOTHING RETURNING id"""
        first = await conn.fetchval(dispatch, project, session)
        assert first is not None and await conn.fetchval(dispatch, project, session) is None
        assert await conn.fetchval(dispatch, project, session + 1) not in (None, first)


@pytest.mark.parametrize(
    ("table", "column"),
    [
        ("tasks", "state"),
        ("tasks", "execution_path"),
        ("sessions", "status"),
        ("messages", "status"),
        ("pending_changes", "status"),
        ("session_worktrees", "status"),
        ("message_parts", "status"),
        ("available_agents", "transport"),
        ("review_comments", "state"),
        ("review_comments", "side"),
    ],
)
async def test_unknown_state_values_are_refused(pool: asyncpg.Pool, table: str, column: str) -> None:
    check = await pool.fetchval(
        """SELECT count(*) FROM pg_constraint
            WHERE conrelid = $1::regclass AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%' || $2 || '%'""",
        table,
        column,
    )
    assert check >= 1, f"{table}.{column} has no CHECK constraint"


async def test_unknown_task_state_is_refused(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        project, _ = await _project_and_session(conn)
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("INSERT INTO tasks (project_id, input, state) VALUES ($1, 'x', 'exploded')", project)
        task = await conn.fetchval("INSERT INTO tasks (project_id, input) VALUES ($1, 'x') RETURNING id", project)
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE tasks SET state = 'done' WHERE id = $1", task)
        assert await conn.fetchval("SELECT state FROM tasks WHERE id = $1", task) == "pending"


async def test_schema_is_idempotent_and_versioned(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        project, _ = await _project_and_session(conn)
        await conn.execute("INSERT INTO tasks (project_id, input) VALUES ($1, 'keep me')", project)
        assert await migrate(conn) == SCHEMA_VERSION
        assert await migrate(conn) == SCHEMA_VERSION
        assert await conn.fetchval("SELECT input FROM tasks") == "keep me"
        # Versions are assigned to parallel work, so a branch may skip one.
        assert await conn.fetchval("SELECT max(version) FROM schema_version") == SCHEMA_VERSION
        assert await conn.fetchval("SELECT count(*) FROM schema_version WHERE version > $1", SCHEMA_VERSION) == 0


async def as_version_2(conn: asyncpg.Connection) -> None:
    """Make this database look like one created by schema version 2."""
    await conn.execute("DROP INDEX tasks_project_dispatch_key")
    await conn.execute("ALTER TABLE tasks ADD CONSTRAINT tasks_dispatch_key_key UNIQUE (dispatch_key)")
    await conn.execute("DROP FUNCTION switchyard_dispatch_key")
    await conn.execute("DELETE FROM schema_version WHERE version > 2")


async def test_a_version_1_database_is_upgraded_without_losing_rows(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        # Make this database look like one created by schema version 1.
        await as_version_2(conn)
        await conn.execute("ALTER TABLE pending_changes DROP COLUMN snapshot_commit")
        await conn.execute("DELETE FROM schema_version WHERE version > 1")
        _, session = await _project_and_session(conn)
        await conn.execute(
            "INSERT INTO pending_changes (session_id, base_commit, diff) VALUES ($1, $2, 'old')", session, "a" * 40
        )
        assert await migrate(conn) == SCHEMA_VERSION
        assert await conn.fetchval("SELECT diff FROM pending_changes") == "old"
        assert await conn.fetchval("SELECT snapshot_commit FROM pending_changes") is None


PROJECT_FEED_TRIGGERS = "SELECT count(*) FROM pg_trigger WHERE tgname LIKE '%project_feed%'"


async def test_a_version_2_database_gets_the_project_feed_without_losing_rows(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        for table in ("sessions", "tasks", "pending_changes"):
            for op in ("insert", "update"):
                await conn.execute(f"DROP TRIGGER {table}_project_feed_{op} ON {table}")
        await conn.execute("DROP FUNCTION switchyard_notify_project_feed()")
        await conn.execute("DELETE FROM schema_version WHERE version > 2")
        project, session = await _project_and_session(conn)
        await conn.execute("INSERT INTO tasks (project_id, session_id, input) VALUES ($1, $2, 'old')", project, session)
        assert await conn.fetchval(PROJECT_FEED_TRIGGERS) == 0
        assert await migrate(conn) == SCHEMA_VERSION
        assert await conn.fetchval(PROJECT_FEED_TRIGGERS) == 6
        assert await conn.fetchval("SELECT input FROM tasks") == "old"


async def test_a_version_4_database_gets_approvals_and_task_options_keeping_rows(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        # Make this database look like one created by schema version 4.
        await conn.execute("DROP TABLE permission_grants, permission_requests")
        await conn.execute("DROP FUNCTION switchyard_notify_permission_reply()")
        await conn.execute("ALTER TABLE tasks DROP COLUMN agent_options, DROP COLUMN fresh_context")
        for column in ("models", "modes", "config_options", "advertised_at"):
            await conn.execute(f"ALTER TABLE available_agents DROP COLUMN {column}")
        await conn.execute("DELETE FROM schema_version WHERE version > 4")
        project, session = await _project_and_session(conn)
        await conn.execute("INSERT INTO tasks (project_id, session_id, input) VALUES ($1, $2, 'old')", project, session)
        await conn.execute(
            "INSERT INTO available_agents (name, transport, command) VALUES ('kept', 'acp', ARRAY['kept'])"
        )
        assert await migrate(conn) == SCHEMA_VERSION
        task = await conn.fetchrow("SELECT input, agent_options, fresh_context FROM tasks")
        assert (task["input"], task["agent_options"], task["fresh_context"]) == ("old", {}, False)
        agent = await conn.fetchrow("SELECT name, models, config_options FROM available_agents")
        assert (agent["name"], agent["models"], agent["config_options"]) == ("kept", [], [])
        assert await conn.fetchval("SELECT count(*) FROM permission_requests") == 0


async def test_a_decided_request_notifies_on_commit(pool: asyncpg.Pool) -> None:
    received: list[str] = []

    def collect(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        received.append(payload)

    async with pool.acquire() as listener, pool.acquire() as conn:
        await listener.add_listener("permission_replies", collect)
        project, session = await _project_and_session(conn)
        task = await conn.fetchval(
            """INSERT INTO tasks (project_id, session_id, input, state, claim_token, lease_expires_at)
               VALUES ($1, $2, 'x', 'running', gen_random_uuid(), now()) RETURNING id""",
            project,
            session,
        )
        request = await conn.fetchval(
            """INSERT INTO permission_requests (task_id, claim_token, session_id, project_id, expires_at)
               SELECT id, claim_token, session_id, project_id, now() FROM tasks WHERE id = $1 RETURNING id""",
            task,
        )
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE permission_requests SET state = 'allowed' WHERE id = $1", request)
        await conn.execute(
            "UPDATE permission_requests SET state = 'allowed', decided_at = now() WHERE id = $1", request
        )
        await conn.execute("UPDATE permission_requests SET reason = 'again' WHERE id = $1", request)
        await listener.execute("SELECT 1")
        # The decision itself, so the waiting turn need not read the row again.
        [payload] = [json.loads(p) for p in received]
        assert (payload["id"], payload["state"], payload["option_id"]) == (request, "allowed", None)
        await listener.remove_listener("permission_replies", collect)


async def test_project_feed_notifies_on_commit(pool: asyncpg.Pool) -> None:
    received: list[str] = []

    def collect(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        received.append(payload)

    async with pool.acquire() as listener, pool.acquire() as conn:
        await listener.add_listener("project_feed", collect)
        project, session = await _project_and_session(conn)
        task = await conn.fetchval(
            "INSERT INTO tasks (project_id, session_id, input) VALUES ($1, $2, 'x') RETURNING id", project, session
        )
        await conn.execute("UPDATE tasks SET cancel_requested_at = now() WHERE id = $1", task)  # not a state change
        await conn.execute("INSERT INTO tasks (project_id, input) VALUES ($1, 'no session yet')", project)
        await listener.execute("SELECT 1")
        assert received == [f"{project}:{session}:created", f"{project}:{session}:updated"]
        await listener.remove_listener("project_feed", collect)


async def test_a_version_2_database_gets_per_project_dispatch_keys_keeping_every_task(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await as_version_2(conn)
        project, session = await _project_and_session(conn)
        other = await conn.fetchval("INSERT INTO projects (name, repo_path) VALUES ('q', '/srv/q') RETURNING id")
        insert = "INSERT INTO tasks (project_id, input, dispatch_key) VALUES ($1, $2, 'k1')"
        await conn.execute(insert, project, "kept")
        with pytest.raises(asyncpg.UniqueViolationError, match="tasks_dispatch_key_key"):
            await conn.execute(insert, other, "refused before the upgrade")
        await conn.execute(
            "INSERT INTO tasks (project_id, session_id, input) VALUES ($1, $2, 'no key')", project, session
        )

        assert await migrate(conn) == SCHEMA_VERSION
        assert [r["input"] for r in await conn.fetch("SELECT input FROM tasks ORDER BY id")] == ["kept", "no key"]
        await conn.execute(insert, other, "another project, another task")
        assert await conn.fetchval("SELECT count(*) FROM tasks WHERE dispatch_key = 'k1'") == 2
        assert await migrate(conn) == SCHEMA_VERSION  # and again: nothing changes


async def test_newer_database_schema_is_refused(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO schema_version (version) VALUES (999)")
        with pytest.raises(SchemaError, match="newer"):
            await migrate(conn)


async def test_notifications_fire_on_commit(pool: asyncpg.Pool) -> None:
    received: list[tuple[str, str]] = []

    def collect(_conn: object, _pid: int, channel: str, payload: str) -> None:
        received.append((channel, payload))

    channels = ("tasks_new", "task_cancel", "session_events")
    async with pool.acquire() as listener, pool.acquire() as conn:
        for channel in channels:
            await listener.add_listener(channel, collect)
        project, session = await _project_and_session(conn)
        task = await conn.fetchval("INSERT INTO tasks (project_id, input) VALUES ($1, 'x') RETURNING id", project)
        await conn.execute("UPDATE tasks SET cancel_requested_at = now() WHERE id = $1", task)
        await conn.execute("INSERT INTO session_events (session_id, seq, type) VALUES ($1, 1, 'delta')", session)
        await listener.execute("SELECT 1")  # a round trip delivers queued notifications
        assert ("tasks_new", str(task)) in received
        assert ("task_cancel", str(task)) in received
        assert ("session_events", f"{session}:1") in received
        for channel in channels:
            await listener.remove_listener(channel, collect)


async def test_a_version_4_database_gets_the_review_loop_without_losing_rows(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        # Make this database look like one created by schema version 4.
        await conn.execute("DROP TABLE review_comments")
        for column in ("supersedes", "conflicts", "accepted_commit", "accepted_branch"):
            await conn.execute(f"ALTER TABLE pending_changes DROP COLUMN {column}")
        await conn.execute("ALTER TABLE tasks DROP COLUMN review_change_id")
        await conn.execute("DELETE FROM schema_version WHERE version > 4")
        project, session = await _project_and_session(conn)
        task = await conn.fetchval(
            "INSERT INTO tasks (project_id, session_id, input) VALUES ($1, $2, 'old') RETURNING id", project, session
        )
        change = await conn.fetchval(
            "INSERT INTO pending_changes (session_id, task_id, base_commit, diff) VALUES ($1, $2, $3, 'old diff')"
            " RETURNING id",
            session,
            task,
            "a" * 40,
        )
        assert await migrate(conn) == SCHEMA_VERSION
        row = await conn.fetchrow("SELECT * FROM pending_changes WHERE id = $1", change)
        assert (row["diff"], row["supersedes"], row["conflicts"], row["accepted_commit"]) == (
            "old diff",
            None,
            None,
            None,
        )
        assert await conn.fetchval("SELECT review_change_id FROM tasks WHERE id = $1", task) is None
        comment = await conn.fetchval(
            "INSERT INTO review_comments (change_id, session_id, written_on, body, author)"
            " VALUES ($1, $2, $1, 'looks good', 'cli:me') RETURNING id",
            change,
            session,
        )
        assert await conn.fetchval("SELECT state FROM review_comments WHERE id = $1", comment) == "open"
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO review_comments (change_id, session_id, written_on, path, body, author)"
                " VALUES ($1, $2, $1, 'a.py', 'no line', 'cli:me')",
                change,
                session,
            )


async def test_a_database_at_the_highest_version_missing_a_lower_block_gets_it(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        # A database made by a build that had versions 5 and 7 but not 6 (they merged apart).
        await conn.execute("DROP TABLE review_comments")
        await conn.execute("ALTER TABLE pending_changes DROP COLUMN supersedes, DROP COLUMN conflicts")
        await conn.execute("ALTER TABLE pending_changes DROP COLUMN accepted_commit, DROP COLUMN accepted_branch")
        await conn.execute("ALTER TABLE tasks DROP COLUMN review_change_id")
        await conn.execute("DELETE FROM schema_version WHERE version = 6")
        project, session = await _project_and_session(conn)
        await conn.execute("INSERT INTO tasks (project_id, session_id, input) VALUES ($1, $2, 'old')", project, session)
        assert await conn.fetchval("SELECT max(version) FROM schema_version") == SCHEMA_VERSION
        assert await migrate(conn) == SCHEMA_VERSION
        assert await conn.fetchval("SELECT 6 = ANY(array_agg(version)) FROM schema_version")
        assert await conn.fetchval("SELECT count(*) FROM review_comments") == 0
        assert await conn.fetchval("SELECT input FROM tasks WHERE review_change_id IS NULL") == "old"


async def test_a_version_4_database_gets_the_workers_table_without_losing_rows(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute("DROP TABLE workers")
        await conn.execute("DELETE FROM schema_version WHERE version > 4")
        project, session = await _project_and_session(conn)
        await _running_task(conn, project, session)
        assert await migrate(conn) == SCHEMA_VERSION
        assert await conn.fetchval("SELECT count(*) FROM workers") == 0
        assert await conn.fetchval("SELECT count(*) FROM tasks WHERE state = 'running'") == 1
        assert await conn.fetchval("SELECT 7 = ANY(array_agg(version)) FROM schema_version")


async def test_a_version_7_database_gets_nodes_and_remotes_without_losing_rows(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute("DROP TABLE nodes")
        await conn.execute("DROP FUNCTION switchyard_node_holds")
        await conn.execute("ALTER TABLE projects DROP CONSTRAINT projects_repo_or_remote")
        for table, column in [
            ("workers", "node_id"),
            ("session_worktrees", "node_id"),
            ("projects", "remote_url"),
            ("tasks", "waiting_for"),
        ]:
            await conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        await conn.execute("DELETE FROM projects")
        await conn.execute("ALTER TABLE projects ALTER COLUMN repo_path SET NOT NULL")
        await conn.execute("DELETE FROM schema_version WHERE version > 7")
        project, session = await _project_and_session(conn)
        await _running_task(conn, project, session)
        assert await migrate(conn) == SCHEMA_VERSION
        assert await conn.fetchval("SELECT count(*) FROM tasks WHERE state = 'running' AND waiting_for IS NULL") == 1
        assert await conn.fetchval("SELECT repo_path FROM projects WHERE id = $1", project) == "/srv/p"
        assert await conn.fetchval("SELECT count(*) FROM nodes") == 0
        assert await conn.fetchval("SELECT 8 = ANY(array_agg(version)) FROM schema_version")
        # A project needs a checkout or a remote; a remote alone is enough.
        with pytest.raises(asyncpg.CheckViolationError, match="projects_repo_or_remote"):
            await conn.execute("INSERT INTO projects (name) VALUES ('nothing')")
        await conn.execute("INSERT INTO projects (name, remote_url) VALUES ('remote', '/srv/remote.git')")
        # A session pinned to an unknown, a live, a dead and a drained node.
        await conn.execute(
            """INSERT INTO nodes (id, host, dead_after, seen_at, drain_requested_at) VALUES
               ('live', 'h', 30, now(), NULL), ('dead', 'h', 30, now() - interval '31 s', NULL),
               ('drained', 'h', 30, now(), now())"""
        )
        holds = await conn.fetch(
            "SELECT n, switchyard_node_holds(n) AS holds FROM unnest(ARRAY['live', 'dead', 'drained', 'none']) n"
        )
        assert {r["n"]: r["holds"] for r in holds} == {"live": True, "dead": False, "drained": False, "none": False}
