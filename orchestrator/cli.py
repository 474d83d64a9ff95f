"""The ``switchyard`` command line.

Each command is an async handler ``(ctx, args) -> exit code`` registered in
:func:`build_parser`. Handlers get the database through ``ctx.connect()``, which starts the
embedded cluster for the duration of the command when no service is running. Every error
Switchyard raises on purpose ends as one line on stderr and a non-zero exit, never a
traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from backends.errors import BackendError
from orchestrator import db, logs
from orchestrator.config import Config, load_config
from orchestrator.database import database_url
from orchestrator.errors import SwitchyardError
from orchestrator.projects import LIST_PROJECTS, add_project, resolve_project
from orchestrator.tasks import TaskSubmission, list_tasks, submit_task

# Errors of the lower packages end as one line too.
EXPECTED_ERRORS: tuple[type[Exception], ...] = (SwitchyardError, BackendError)


@dataclass
class CliContext:
    config: Config

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection to a migrated database."""
        async with database_url(self.config) as url:
            conn = await db.connect(url)
            try:
                await db.migrate(conn)
                yield conn
            finally:
                await conn.close()


Handler = Callable[[CliContext, argparse.Namespace], Awaitable[int]]


# ---------------------------------------------------------------------------- commands


async def cmd_up(ctx: CliContext, args: argparse.Namespace) -> int:
    from orchestrator.service import run_service

    await run_service(ctx.config, out=sys.stdout)
    return 0


async def cmd_migrate(ctx: CliContext, args: argparse.Namespace) -> int:
    async with ctx.connect() as conn:
        version = await conn.fetchval(db.SQL_SCHEMA_VERSION)
    print(f"schema version {version}")
    return 0


async def cmd_project_add(ctx: CliContext, args: argparse.Namespace) -> int:
    async with ctx.connect() as conn:
        project_id = await add_project(conn, Path(args.path), args.name)
    print(project_id)
    return 0


async def cmd_project_list(ctx: CliContext, args: argparse.Namespace) -> int:
    async with ctx.connect() as conn:
        rows = await conn.fetch(LIST_PROJECTS)
    print_table(rows, ("id", "name", "repo_path", "default_branch"), as_json=args.json)
    return 0


async def cmd_submit(ctx: CliContext, args: argparse.Namespace) -> int:
    async with ctx.connect() as conn:
        project_id = await resolve_project(conn, args.project)
        submitted = await submit_task(
            conn,
            TaskSubmission(
                project_id=project_id,
                input=args.input,
                session_id=args.session,
                agent=args.agent,
                model=args.model,
                mode_id=args.mode,
                priority=args.priority,
                max_attempts=args.max_attempts,
                dispatch_key=args.dispatch_key,
            ),
        )
    print(submitted.task_id if submitted.created else f"{submitted.task_id} (dispatch_key seen before; nothing added)")
    return 0


async def cmd_tasks(ctx: CliContext, args: argparse.Namespace) -> int:
    async with ctx.connect() as conn:
        rows = await list_tasks(conn, session_id=args.session, state=args.state, limit=args.limit)
    columns = ("id", "project_id", "session_id", "state", "agent", "attempt", "failure_reason", "input")
    print_table(rows, columns, as_json=args.json)
    return 0


# ---------------------------------------------------------------------------- output


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value).replace("\n", " ")


def print_table(rows: Sequence[asyncpg.Record], columns: Sequence[str], *, as_json: bool = False) -> None:
    if as_json:
        print(json.dumps([{c: row[c] for c in columns} for row in rows], default=str, indent=2))
        return
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


# ---------------------------------------------------------------------------- parser


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_: str, handler: Handler
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_, description=help_)
    parser.set_defaults(handler=handler)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="switchyard",
        description="Runs coding agents for web IDEs: tasks in PostgreSQL, frames over WebSocket, reviewable diffs.",
    )
    parser.add_argument("--config", help="TOML configuration file (default: $SWITCHYARD_CONFIG)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    _command(sub, "up", "start the service (embedded PostgreSQL when no database URL is set)", cmd_up)
    _command(sub, "migrate", "apply schema.sql to the database", cmd_migrate)

    project = sub.add_parser("project", help="manage projects", description="manage projects")
    project_sub = project.add_subparsers(dest="project_command", metavar="ACTION", required=True)
    add = _command(project_sub, "add", "register a git repository as a project", cmd_project_add)
    add.add_argument("path", help="path inside the repository")
    add.add_argument("--name", help="project name (default: the repository's directory name)")
    plist = _command(project_sub, "list", "list projects", cmd_project_list)
    plist.add_argument("--json", action="store_true", help="print JSON")

    submit = _command(sub, "submit", "queue a task (the same INSERT an SQL submitter makes)", cmd_submit)
    submit.add_argument("input", help="the prompt")
    submit.add_argument("--project", required=True, help="project id or name")
    submit.add_argument("--session", type=int, help="continue this session (default: a new session)")
    submit.add_argument("--agent", help="agent name (default: native inference)")
    submit.add_argument("--model", help="model override")
    submit.add_argument("--mode", help="agent mode id")
    submit.add_argument("--priority", type=int, default=0, help="higher runs first across sessions")
    submit.add_argument("--max-attempts", type=int, default=3, help="attempts for transient failures")
    submit.add_argument("--dispatch-key", help="idempotency key: a repeat submits nothing")

    tasks = _command(sub, "tasks", "list recent tasks", cmd_tasks)
    tasks.add_argument("--session", type=int, help="only this session")
    tasks.add_argument("--state", choices=("pending", "running", "completed", "failed", "cancelled"))
    tasks.add_argument("--limit", type=int, default=20)
    tasks.add_argument("--json", action="store_true", help="print JSON")

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        logs.configure(config.log_level)
        handler: Handler = args.handler
        return anyio.run(handler, CliContext(config), args)
    except EXPECTED_ERRORS as exc:
        print(f"switchyard: error: {exc}", file=sys.stderr)
        return 1
    except asyncpg.PostgresError as exc:
        print(f"switchyard: database error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
