"""The ``switchyard`` command line.

Each command is an async handler ``(ctx, args) -> exit code`` registered in
:func:`build_parser`. Handlers get the database through ``ctx.connect()``, which starts the
embedded cluster for the duration of the command when no service is running. Every error
Switchyard raises on purpose ends as one line on stderr and a non-zero exit, never a
traceback.
"""

from __future__ import annotations

import argparse
import getpass
import json
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from backends import POOL_DIR, list_models, read_pool_status
from kernel import SwitchyardError, configure_logging, connect, on_scrape
from orchestrator.app.config import Config, load_config
from orchestrator.app.service import announce_gateway, run_dispatcher_only, run_service
from orchestrator.app.status import print_status, read_status
from orchestrator.app.wiring import open_pool
from orchestrator.db import NodeRow, database_url, get_node, list_nodes, migrate, migrate_url, schema_version, set_drain
from orchestrator.dispatch import refresh_tasks
from orchestrator.errors import NotFound, UsageError
from orchestrator.services import (
    OrchestratorActions,
    ReviewService,
    add_project,
    cancel_task,
    change_json,
    list_projects,
    list_tasks,
    probe_agents,
    resolution_json,
    resolve_project,
    submit_task,
)
from worktrees import Resolution, read_spare_status
from ws_gateway import Gateway, TaskSubmission, create_token, list_tokens, revoke_token


@dataclass
class CliContext:
    config: Config

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection to a migrated database."""
        async with database_url(self.config.database, self.config.data_dir) as url:
            conn = await connect(url)
            try:
                await migrate(conn)
                yield conn
            finally:
                await conn.close()


Handler = Callable[[CliContext, argparse.Namespace], Awaitable[int]]

# The table view of `switchyard tasks` shortens inputs to this many characters (--json: whole rows).
TABLE_INPUT_CHARS = 60
# `switchyard node drain --wait` looks this often.
DRAIN_POLL = 0.5


# ---------------------------------------------------------------------------- commands


async def cmd_up(ctx: CliContext, args: argparse.Namespace) -> int:
    await run_service(ctx.config, out=sys.stdout)
    return 0


async def cmd_migrate(ctx: CliContext, args: argparse.Namespace) -> int:
    async with ctx.connect() as conn:
        version = await schema_version(conn)
    print(f"schema version {version}")
    return 0


async def cmd_project_add(ctx: CliContext, args: argparse.Namespace) -> int:
    async with ctx.connect() as conn:
        project_id = await add_project(conn, Path(args.path) if args.path else None, args.name, remote=args.remote)
    print(project_id)
    return 0


async def cmd_project_list(ctx: CliContext, args: argparse.Namespace) -> int:
    async with ctx.connect() as conn:
        rows = await list_projects(conn)
    print_table(rows, ("id", "name", "repo_path", "remote_url", "default_branch"), as_json=args.json)
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
                agent_options=dict(args.option or ()),
                fresh_context=args.fresh_context,
            ),
        )
    print(submitted.task_id if submitted.created else f"{submitted.task_id} (dispatch_key seen before; nothing added)")
    return 0


async def cmd_tasks(ctx: CliContext, args: argparse.Namespace) -> int:
    async with ctx.connect() as conn:
        rows = await list_tasks(conn, session_id=args.session, state=args.state, limit=args.limit)
    if args.json:
        print(json.dumps([dict(row) for row in rows], default=str, indent=2))
        return 0
    columns = ("id", "project_id", "session_id", "state", "agent", "attempt", "failure_reason", "waiting_for", "input")
    print_table([{**row, "input": _shorten(row["input"])} for row in rows], columns)
    return 0


def _shorten(text: str, width: int = TABLE_INPUT_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


async def cmd_cancel(ctx: CliContext, args: argparse.Namespace) -> int:
    async with ctx.connect() as conn:
        state = await cancel_task(conn, args.task_id)
    if state == "running":
        print(f"task {args.task_id}: cancel requested; its dispatcher is aborting the turn")
    else:
        print(f"task {args.task_id}: {state}")
    return 0


NODE_COLUMNS = ("id", "state", "host", "sessions", "running", "capacity", "agents", "unreachable", "seen")


def _node_json(node: NodeRow) -> dict[str, Any]:
    return {
        "id": node.id,
        "state": node.state,
        "host": node.host,
        "sessions": node.sessions,
        "running": node.running,
        "capacity": node.capacity,
        "agents": node.agents,
        # Projects (ids) it cannot reach now: their tasks go to other nodes.
        "unreachable": node.unreachable_projects,
        "dead_after": node.dead_after,
        "seen": f"{node.silent_for:.0f}s ago",
        "started_at": node.started_at.isoformat(timespec="seconds"),
        "drain_requested_at": node.drain_requested_at.isoformat(timespec="seconds")
        if node.drain_requested_at
        else None,
    }


async def cmd_nodes(ctx: CliContext, args: argparse.Namespace) -> int:
    async with ctx.connect() as conn:
        nodes = [_node_json(n) for n in await list_nodes(conn)]
    if args.json:
        print(json.dumps(nodes, indent=2))
    else:
        rows = [
            {**n, "agents": ",".join(n["agents"]), "unreachable": ",".join(map(str, n["unreachable"])) or "-"}
            for n in nodes
        ]
        print_table(rows, NODE_COLUMNS)
    return 0


async def cmd_node_drain(ctx: CliContext, args: argparse.Namespace) -> int:
    """Drain (or resume) a node; with --wait, until its running turns have ended."""
    async with ctx.connect() as conn:
        node = await set_drain(conn, args.node_id, not args.resume)
        while args.wait and node.alive and node.running:
            await anyio.sleep(DRAIN_POLL)
            node = await get_node(conn, args.node_id)
    if args.resume:
        print(f"node {node.id}: claiming again")
    else:
        print(f"node {node.id}: {node.state}; {node.running} turns running, its idle sessions move to other nodes")
    return 0


async def cmd_dispatcher(ctx: CliContext, args: argparse.Namespace) -> int:
    await run_dispatcher_only(ctx.config, out=sys.stdout)
    return 0


async def cmd_changes(ctx: CliContext, args: argparse.Namespace) -> int:
    status = None if args.status == "all" else args.status
    async with ctx.connect() as conn:
        changes = await ReviewService(conn, ctx.config.worktrees, node_id=ctx.config.node_id).list_changes(
            session_id=args.session, status=status, limit=args.limit
        )
    if args.json:
        print(json.dumps([change_json(c) for c in changes], indent=2))
        return 0
    rows = [{**change_json(c), "files": len(c.files), "id": c.id, "comments": c.comments} for c in changes]
    columns = ("id", "session_id", "task_id", "status", "files", "comments", "truncated", "created_at", "error")
    print_table(rows, columns)
    return 0


async def cmd_diff(ctx: CliContext, args: argparse.Namespace) -> int:
    if (args.change_id is None) == (args.live is None) or (args.since is not None and args.change_id is None):
        raise UsageError("give a change ID (and maybe --since OLD_ID), or --live SESSION")
    async with ctx.connect() as conn:
        review = ReviewService(conn, ctx.config.worktrees, node_id=ctx.config.node_id)
        if args.live is not None:
            live = await review.live_diff_info(args.live)
            text, files = live["diff"], live["diff_files"]
        else:
            info = await review.diff_info(args.change_id, since=args.since)
            text, files = info["diff"], info["diff_files"]
    if args.hunks:
        for entry in files:
            for hunk in entry["hunks"] or []:
                print(f"{entry['path']}:{hunk['id']}\t{hunk['header']}")
            if entry["hunks"] is None:
                print(f"{entry['path']}\t(no hunks shown: review it as a file)")
        return 0
    sys.stdout.write(text)
    return 0


def parse_hunks(specs: Sequence[str] | None) -> dict[str, list[int]] | None:
    """``PATH:N`` (repeatable; N as ``switchyard diff ID --hunks`` lists them) by path."""
    if not specs:
        return None
    hunks: dict[str, list[int]] = {}
    for spec in specs:
        path, _, number = spec.rpartition(":")
        if not path or not number.isdigit() or int(number) < 1:
            raise UsageError(f"--hunk takes PATH:N (see `switchyard diff ID --hunks`), not {spec!r}")
        hunks.setdefault(path, []).append(int(number))
    return hunks


async def cmd_accept(ctx: CliContext, args: argparse.Namespace) -> int:
    async with ctx.connect() as conn:
        resolution = await ReviewService(conn, ctx.config.worktrees, node_id=ctx.config.node_id).accept(
            args.change_id,
            files=args.file,
            hunks=parse_hunks(args.hunk),
            mode=args.mode,
            message=args.message,
            branch=args.branch,
            by=args.by,
        )
    return _print_resolution(resolution, as_json=args.json)


async def cmd_reject(ctx: CliContext, args: argparse.Namespace) -> int:
    async with ctx.connect() as conn:
        resolution = await ReviewService(conn, ctx.config.worktrees, node_id=ctx.config.node_id).reject(
            args.change_id, files=args.file, hunks=parse_hunks(args.hunk), by=args.by
        )
    return _print_resolution(resolution, as_json=args.json)


async def cmd_rebase(ctx: CliContext, args: argparse.Namespace) -> int:
    async with ctx.connect() as conn:
        resolution = await ReviewService(conn, ctx.config.worktrees, node_id=ctx.config.node_id).rebase(
            args.change_id, by=args.by
        )
    if args.json:
        print(json.dumps(resolution_json(resolution), indent=2))
        return 0
    new = resolution.remainder
    if new is None:
        print(f"change {args.change_id}: the session is on the checkout's HEAD now, with nothing left to review")
    elif new.conflicts:
        print(f"change {args.change_id} rebased as change {new.id}, with conflicts in: {', '.join(new.conflicts)}")
        print(f"the worktree holds the conflict markers; `switchyard resolve-with-agent {new.id}` asks the agent")
    else:
        print(f"change {args.change_id} rebased cleanly as change {new.id}")
    return 0


async def cmd_comment(ctx: CliContext, args: argparse.Namespace) -> int:
    if (args.file is None) != (args.line is None):
        raise UsageError("--file and --line go together (neither: a comment on the whole change)")
    async with ctx.connect() as conn:
        comment = await ReviewService(conn, ctx.config.worktrees, node_id=ctx.config.node_id).comment(
            args.change_id, args.body, path=args.file, line=args.line, side=args.side, by=args.by
        )
    where = f"{comment.path}:{comment.line} ({comment.side})" if comment.path else "the change"
    print(f"comment {comment.id} on {where} of change {comment.change_id}")
    return 0


async def cmd_comments(ctx: CliContext, args: argparse.Namespace) -> int:
    async with ctx.connect() as conn:
        comments = await ReviewService(conn, ctx.config.worktrees, node_id=ctx.config.node_id).comments(args.change_id)
    rows = [
        {**c.to_json(), "id": c.id, "where": f"{c.path}:{c.current_line or c.line}" if c.path else "-"}
        for c in comments
    ]
    print_table(rows, ("id", "where", "side", "outdated", "state", "task_id", "author", "body"), as_json=args.json)
    return 0


async def cmd_request_changes(ctx: CliContext, args: argparse.Namespace) -> int:
    async with ctx.connect() as conn:
        queued = await ReviewService(conn, ctx.config.worktrees, node_id=ctx.config.node_id).request_changes(
            args.change_id, message=args.message, by=args.by
        )
    count = len(queued.comment_ids)
    print(f"task {queued.submitted.task_id} queued in session {queued.change.session_id} with {count} comment(s)")
    return 0


async def cmd_resolve_with_agent(ctx: CliContext, args: argparse.Namespace) -> int:
    async with ctx.connect() as conn:
        queued = await ReviewService(conn, ctx.config.worktrees, node_id=ctx.config.node_id).resolve_with_agent(
            args.change_id, message=args.message, by=args.by
        )
    seen = "" if queued.submitted.created else " (asked before; nothing added)"
    print(f"task {queued.submitted.task_id} asks the agent to resolve: {', '.join(queued.change.conflicts)}{seen}")
    return 0


def _print_resolution(resolution: Resolution, *, as_json: bool) -> int:
    change = resolution.change
    if as_json:
        print(json.dumps(resolution_json(resolution), indent=2))
    elif change.status == "conflict":
        print(f"change {change.id}: conflict, the project was not changed: {change.error}", file=sys.stderr)
        if resolution.remainder is not None:
            print(f"the files you did not name stay pending as change {resolution.remainder.id}", file=sys.stderr)
    else:
        print(f"change {change.id} {change.status}: {', '.join(f['path'] for f in change.files)}")
        if change.accepted_commit is not None:
            print(f"committed as {change.accepted_commit} on {change.accepted_branch}")
        if resolution.remainder is not None:
            print(f"the rest stays pending as change {resolution.remainder.id}")
        if resolution.kept_at is not None:
            print(f"the discarded content is kept at {resolution.kept_at}")
    return 1 if change.status == "conflict" else 0


async def cmd_models(ctx: CliContext, args: argparse.Namespace) -> int:
    models = await list_models(ctx.config.native)
    if args.json:
        print(json.dumps(models))
        return 0
    for model in models:
        print(f"{model}  (default)" if model == ctx.config.native.model else model)
    return 0


async def cmd_agents(ctx: CliContext, args: argparse.Namespace) -> int:
    specs = ctx.config.agent_specs()
    probes = await probe_agents(specs, opencode_binary=ctx.config.opencode.binary)
    rows = [
        {
            "name": p.name,
            "transport": specs[p.name].transport,
            "available": p.available,
            "version": p.version,
            "command": " ".join(specs[p.name].command),
            "detail": p.detail,
        }
        for p in probes
    ]
    print_table(rows, ("name", "transport", "available", "version", "command", "detail"), as_json=args.json)
    return 0


SERVER_COLUMNS = (
    "pool_pid",
    "key",
    "project_id",
    "state",
    "pid",
    "url",
    "age_seconds",
    "rss_mb",
    "active_turns",
    "sessions",
    "instances",
    "spares",
)
SPARE_COLUMNS = ("owner_pid", "project_id", "path", "base", "warmed")


async def cmd_pool(ctx: CliContext, args: argparse.Namespace) -> int:
    root = ctx.config.data_dir / POOL_DIR
    pools = await anyio.to_thread.run_sync(read_pool_status, root)
    servers = [{**server, "pool_pid": pool["owner_pid"]} for pool in pools for server in pool["servers"]]
    kept = await anyio.to_thread.run_sync(read_spare_status, root)
    spares = [{**spare, "owner_pid": owner["owner_pid"]} for owner in kept for spare in owner["spares"]]
    if args.json:
        listing = {
            "servers": [{c: row.get(c) for c in SERVER_COLUMNS} for row in servers],
            "spare_worktrees": [{c: row.get(c) for c in SPARE_COLUMNS} for row in spares],
        }
        print(json.dumps(listing, default=str, indent=2))
        return 0
    if servers:
        print_table(servers, SERVER_COLUMNS)
    else:
        print("no opencode server is running (the pool lives in `switchyard up` / `switchyard dispatcher`)")
    if spares:
        print(f"\nspare worktrees ({len(spares)}):")
        print_table(spares, SPARE_COLUMNS)
    return 0


async def cmd_gateway(ctx: CliContext, args: argparse.Namespace) -> int:
    config = ctx.config
    settings = config.gateway if args.port is None else replace(config.gateway, port=args.port)
    async with database_url(config.database, config.data_dir) as url:
        await migrate_url(url, wait=True)
        async with AsyncExitStack() as stack:
            pool = await open_pool(config, url, "gateway")
            stack.push_async_callback(pool.close)
            review_pool = await open_pool(config, url, "review")
            stack.push_async_callback(review_pool.close)
            stack.callback(on_scrape(partial(refresh_tasks, pool)))
            async with anyio.create_task_group() as tg:
                actions = OrchestratorActions(
                    pool, ReviewService(review_pool, config.worktrees, node_id=config.node_id), config.native
                )
                ws_url = await tg.start(Gateway(settings, pool, actions, url).serve)
                await tg.start(announce_gateway, url, ws_url)
                print(f"gateway: {ws_url}", flush=True)
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        break
                tg.cancel_scope.cancel()
    return 0


async def cmd_status(ctx: CliContext, args: argparse.Namespace) -> int:
    async with ctx.connect() as conn:
        state = await read_status(conn, ctx.config.data_dir)
    if args.json:
        print(json.dumps(state, default=str, indent=2))
    else:
        print_status(state)
    return 0


async def cmd_token_create(ctx: CliContext, args: argparse.Namespace) -> int:
    async with ctx.connect() as conn:
        projects = [await resolve_project(conn, ref) for ref in args.project] if args.project else None
        token = await create_token(conn, args.name, projects)
    print(token)
    return 0


async def cmd_token_list(ctx: CliContext, args: argparse.Namespace) -> int:
    async with ctx.connect() as conn:
        rows = await list_tokens(conn)
    print_table(rows, ("id", "name", "project_ids", "created_at", "revoked_at"), as_json=args.json)
    return 0


async def cmd_token_revoke(ctx: CliContext, args: argparse.Namespace) -> int:
    async with ctx.connect() as conn:
        revoked = await revoke_token(conn, args.token_id)
    if not revoked:
        raise NotFound(f"no active token with id {args.token_id}")
    print(f"token {args.token_id} revoked; connections using it are closed")
    return 0


def _first_leaf(group: BaseExceptionGroup[SwitchyardError]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


# ---------------------------------------------------------------------------- output


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value).replace("\n", " ")


def print_table(
    rows: Sequence[asyncpg.Record | dict[str, Any]], columns: Sequence[str], *, as_json: bool = False
) -> None:
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


def _agent_option(text: str) -> tuple[str, str | bool]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, {"true": True, "false": False}.get(value, value)


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
    add.add_argument("path", nargs="?", help="path inside the repository (a checkout; optional with --remote)")
    add.add_argument("--name", help="project name (default: the repository's directory name)")
    add.add_argument(
        "--remote", metavar="URL", help="the project's git remote: every node works in its own clone (several machines)"
    )
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
    submit.add_argument(
        "--option",
        action="append",
        type=_agent_option,
        metavar="KEY=VALUE",
        help="an agent option (e.g. effort=high), checked against what the agent offers; repeatable",
    )
    submit.add_argument("--fresh-context", action="store_true", help="start without the session's earlier conversation")

    tasks = _command(sub, "tasks", "list recent tasks", cmd_tasks)
    tasks.add_argument("--session", type=int, help="only this session")
    tasks.add_argument("--state", choices=("pending", "running", "completed", "failed", "cancelled"))
    tasks.add_argument("--limit", type=int, default=20)
    tasks.add_argument("--json", action="store_true", help="print JSON")

    cancel = _command(sub, "cancel", "cancel a task (pending: at once; running: its backend is aborted)", cmd_cancel)
    cancel.add_argument("task_id", type=int, metavar="TASK")

    _command(sub, "dispatcher", "run only the dispatcher (any number may share a database)", cmd_dispatcher)

    nodes = _command(sub, "nodes", "list the nodes: state, sessions, running turns, agents", cmd_nodes)
    nodes.add_argument("--json", action="store_true", help="print JSON")
    node = sub.add_parser("node", help="manage a node", description="manage a node")
    node_sub = node.add_subparsers(dest="node_command", metavar="ACTION", required=True)
    drain = _command(
        node_sub, "drain", "stop a node claiming; its running turns finish, its idle sessions move", cmd_node_drain
    )
    drain.add_argument("node_id", metavar="ID", help="the node's id (see `switchyard nodes`)")
    drain.add_argument("--wait", action="store_true", help="return once its running turns have ended")
    drain.add_argument("--resume", action="store_true", help="let the node claim again")

    changes = _command(sub, "changes", "list pending changes (newest first)", cmd_changes)
    changes.add_argument("--session", type=int, help="only this session")
    changes.add_argument(
        "--status",
        choices=("pending", "superseded", "accepted", "rejected", "conflict", "all"),
        default="pending",
        help="only changes with this status (default: pending; all: every status)",
    )
    changes.add_argument("--limit", type=int, default=20)
    changes.add_argument("--json", action="store_true", help="print JSON")

    diff = _command(sub, "diff", "print a change's diff, the interdiff since another one, or a live worktree", cmd_diff)
    diff.add_argument("change_id", type=int, metavar="ID", nargs="?")
    diff.add_argument("--since", type=int, metavar="OLD_ID", help="only what changed since change OLD_ID's snapshot")
    diff.add_argument("--live", type=int, metavar="SESSION", help="the session's worktree as it is now")
    diff.add_argument("--hunks", action="store_true", help="list the hunks (PATH:N, as accept --hunk takes them)")

    by = f"cli:{getpass.getuser()}"
    for name, handler, what in (
        ("accept", cmd_accept, "apply a pending change to the project checkout (3-way; conflicts change nothing)"),
        (
            "reject",
            cmd_reject,
            "put the session's worktree back to its base for a pending change's files; what it discards "
            "is kept at refs/switchyard/<session>/rejected/<change> for good (the reaper keeps it too)",
        ),
    ):
        review = _command(sub, name, what, handler)
        review.add_argument("change_id", type=int, metavar="ID")
        review.add_argument("--file", action="append", metavar="PATH", help="only this file (repeatable)")
        review.add_argument(
            "--hunk", action="append", metavar="PATH:N", help="only hunk N of PATH (repeatable; see diff --hunks)"
        )
        review.add_argument("--by", default=by, help="who resolved it (default: cli:$USER)")
        review.add_argument("--json", action="store_true", help="print JSON")
        if name == "accept":
            review.add_argument(
                "--mode",
                choices=("apply", "commit", "branch"),
                default="apply",
                help="apply: into the checkout's files (default); commit: a commit on its current branch; "
                "branch: a commit on --branch, the checkout untouched",
            )
            review.add_argument("-m", "--message", help="the commit message (default: one naming session and task)")
            review.add_argument("--branch", help="the branch for --mode branch (created at HEAD if missing)")

    rebase = _command(sub, "rebase", "move a session onto the checkout's HEAD, merging its work 3-way", cmd_rebase)
    rebase.add_argument("change_id", type=int, metavar="ID")
    rebase.add_argument("--by", default=by, help="who asked (default: cli:$USER)")
    rebase.add_argument("--json", action="store_true", help="print JSON")

    comment = _command(sub, "comment", "comment on a line of a change's file, or on the whole change", cmd_comment)
    comment.add_argument("change_id", type=int, metavar="ID")
    comment.add_argument("body", help="the comment")
    comment.add_argument("--file", metavar="PATH", help="the file (with --line)")
    comment.add_argument("--line", type=int, help="the line (of the new side unless --side old)")
    comment.add_argument("--side", choices=("new", "old"), default="new", help="new: the change's; old: its base")
    comment.add_argument("--by", default=by, help="the author (default: cli:$USER)")

    comments = _command(sub, "comments", "list a change's review comments (carried-over ones too)", cmd_comments)
    comments.add_argument("change_id", type=int, metavar="ID")
    comments.add_argument("--json", action="store_true", help="print JSON")

    for name, handler, what in (
        ("request-changes", cmd_request_changes, "send a change's open comments to the agent as its next task"),
        ("resolve-with-agent", cmd_resolve_with_agent, "ask the agent to resolve the conflicts a rebase left"),
    ):
        asked = _command(sub, name, what, handler)
        asked.add_argument("change_id", type=int, metavar="ID")
        asked.add_argument("-m", "--message", help="more for the agent, after the comments / the conflicts")
        asked.add_argument("--by", default=by, help="who asked (default: cli:$USER)")

    gateway = _command(sub, "gateway", "run only the WebSocket gateway (any number may share a database)", cmd_gateway)
    gateway.add_argument("--port", type=int, help="listen on this port (default: gateway.port)")

    token = sub.add_parser("token", help="manage API tokens", description="manage API tokens")
    token_sub = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    token_create = _command(token_sub, "create", "create a WebSocket API token; it is printed once", cmd_token_create)
    token_create.add_argument("--project", action="append", help="a project id or name it may see (repeatable)")
    token_create.add_argument("--name", default="cli", help="a label for the token")
    token_list = _command(token_sub, "list", "list tokens (their text is never stored)", cmd_token_list)
    token_list.add_argument("--json", action="store_true", help="print JSON")
    revoke = _command(token_sub, "revoke", "revoke a token; open connections using it are closed", cmd_token_revoke)
    revoke.add_argument("token_id", type=int, help="the token's id (see `token list`)")

    models = _command(sub, "models", "list the models the native endpoint offers (GET {base_url}/models)", cmd_models)
    models.add_argument("--json", action="store_true", help="print JSON")

    agents = _command(sub, "agents", "list the external agents: transport, command, installed?, version", cmd_agents)
    agents.add_argument("--json", action="store_true", help="print JSON")

    pool = _command(sub, "pool", "show the warm opencode servers: sessions, age, memory", cmd_pool)
    pool.add_argument("--json", action="store_true", help="print JSON")

    status = _command(
        sub, "status", "the service at a glance: queue, dispatchers and their turns, gateways, pool", cmd_status
    )
    status.add_argument("--json", action="store_true", help="print JSON")

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        configure_logging(config.log_level)
        handler: Handler = args.handler
        return anyio.run(handler, CliContext(config), args)
    except SwitchyardError as exc:
        print(f"switchyard: error: {exc}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:
        # A task group ended with errors raised on purpose (a port in use, a lost worker id):
        # the first one, in one line, rather than the group's traceback.
        matched, _rest = group.split(SwitchyardError)
        if matched is None:
            raise
        print(f"switchyard: error: {_first_leaf(matched)}", file=sys.stderr)
        return 1
    except asyncpg.PostgresError as exc:
        print(f"switchyard: database error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
