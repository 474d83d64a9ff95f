"""Review comments: where they may go, the lines around them, and carrying them to the next change.

A comment is on a line of one side of a file of a change (``new``: the change's content, its
snapshot; ``old``: its base), or on the change as a whole. When a change is replaced — by the
next turn's diff, by what stays pending after a partial review, by a rebase — its comments are
carried over as rows of the new change: the line is followed through the diff between the two
changes' snapshots (the base for the old side) with zero context; a line that moved or was
changed makes the comment ``outdated`` (it keeps where it was written, ``current_line`` says
where it is now, None once it is gone).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import anyio
import asyncpg

from worktrees import diff, git, hunks
from worktrees import queries as q
from worktrees.diff import FileChange
from worktrees.errors import InvalidComment

Side = Literal["new", "old"]
SIDES: tuple[Side, ...] = ("new", "old")
# Lines quoted around a comment's line in the task request_changes makes.
CONTEXT_LINES = 2
MAX_QUOTED_CHARS = 300
MAX_BODY_CHARS = 20_000


@dataclass(frozen=True)
class Comment:
    id: int
    change_id: int
    session_id: int
    written_on: int
    carried_from: int | None
    path: str | None
    side: str | None
    line: int | None
    current_line: int | None
    outdated: bool
    body: str
    author: str
    state: str
    task_id: int | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Comment:
        return cls(**dict(row))

    def to_json(self) -> dict[str, Any]:
        return {
            "comment_id": self.id,
            "change_id": self.change_id,
            "written_on": self.written_on,
            "path": self.path,
            "side": self.side,
            "line": self.line,
            "current_line": self.current_line,
            "outdated": self.outdated,
            "body": self.body,
            "author": self.author,
            "state": self.state,
            "task_id": self.task_id,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class Transition:
    """A change replaced by another: what its comments' lines are followed through."""

    old_base: str
    old_snapshot: str
    new_base: str
    new_snapshot: str
    new_paths: frozenset[str]


def _entry(entries: Sequence[FileChange], path: str) -> FileChange | None:
    return next((e for e in entries if path in e.names()), None)


def file_lines(repo: Path, commit: str, path: str) -> list[bytes] | None:
    """The lines of ``path`` in ``commit`` (None if it has no such file)."""
    listing = git.run(repo, ["ls-tree", "-z", commit, "--", path]).stdout.split(b"\0")[0]
    if not listing:
        return None
    meta = listing.partition(b"\t")[0].split(b" ")
    if meta[1] != b"blob":
        return None
    return git.run(repo, ["cat-file", "blob", meta[2].decode()]).stdout.splitlines()


def side_of(repo: Path, base: str, snapshot: str, entry: FileChange, side: str) -> tuple[str, str]:
    """The commit and path holding ``side`` of a changed file."""
    return (snapshot, entry.path) if side == "new" else (base, entry.old_path or entry.path)


def check_place(repo: Path, base: str, snapshot: str, path: str, side: str, line: int) -> str:
    """The file's path as the change lists it, if ``line`` exists on that side of it."""
    entries = diff.changes(repo, base, snapshot)
    entry = _entry(entries, path)
    if entry is None:
        known = ", ".join(diff.display(e.path) for e in entries)
        raise InvalidComment(f"the change has no file {path} (its files: {known})")
    if entry.binary:
        raise InvalidComment(f"{path} is a binary file; comment on the change as a whole")
    commit, real = side_of(repo, base, snapshot, entry, side)
    lines = file_lines(repo, commit, real)
    if not lines:
        what = "deleted" if side == "new" else "new"
        raise InvalidComment(f"{path} has no {side} side (the file is {what} in this change)")
    if line > len(lines):
        raise InvalidComment(f"{path} has {len(lines)} lines on its {side} side, not {line}")
    return diff.display(entry.path)


def quote(repo: Path, base: str, snapshot: str, comment: Comment) -> list[str]:
    """The comment's line and the lines around it, numbered, the line itself marked."""
    line = comment.current_line or comment.line
    if comment.path is None or line is None:
        return []
    entry = _entry(diff.changes(repo, base, snapshot), comment.path)
    if entry is None or entry.binary:
        return []
    commit, real = side_of(repo, base, snapshot, entry, comment.side or "new")
    lines = file_lines(repo, commit, real) or []
    first, last = max(1, line - CONTEXT_LINES), min(len(lines), line + CONTEXT_LINES)
    width = len(str(last))
    out = []
    for n in range(first, last + 1):
        text = lines[n - 1].decode("utf-8", errors="replace")[:MAX_QUOTED_CHARS]
        out.append(f"{'>' if n == line else ' '} {n:>{width}} | {text}")
    return out


def place(repo: Path, transition: Transition, comments: Sequence[Comment]) -> list[tuple[Comment, int | None, bool]]:
    """Each comment's line in the new change and whether it moved (or vanished) on the way."""
    mapped: dict[tuple[str, str], list[hunks.Hunk]] = {}
    out: list[tuple[Comment, int | None, bool]] = []
    for comment in comments:
        if comment.path is None or comment.side is None:
            out.append((comment, None, False))
            continue
        if comment.path not in transition.new_paths or comment.current_line is None:
            out.append((comment, None, True))
            continue
        key = (comment.side, comment.path)
        if key not in mapped:
            if comment.side == "new":
                mapped[key] = _moves(repo, transition.old_snapshot, transition.new_snapshot, comment.path)
            else:
                mapped[key] = _moves(repo, transition.old_base, transition.new_base, comment.path)
        now = hunks.map_line(mapped[key], comment.current_line)
        out.append((comment, now, now != comment.current_line))
    return out


def _moves(repo: Path, old: str, new: str, path: str) -> list[hunks.Hunk]:
    if old == new:
        return []
    args = ["diff-tree", "-p", "-U0", "--no-color", "--no-renames", old, new, "--", path]
    section = git.run(repo, args).stdout
    return list(hunks.parse_section(section).hunks) if section else []


async def carry_over(
    conn: asyncpg.Connection, repo: Path, old_id: int, new_id: int, transition: Transition, *, keep_gone: bool
) -> None:
    """Copy the comments of change ``old_id`` onto ``new_id``. Comments on a file the new change
    does not have are carried (as outdated) only with ``keep_gone``: after a new turn they
    vanished, after a partial review they stay with the part that was resolved."""
    comments = [Comment.from_row(r) for r in await conn.fetch(q.CHANGE_COMMENTS, old_id)]
    if not comments:
        return
    placed = await anyio.to_thread.run_sync(place, repo, transition, comments)
    rows = [
        (c.id, new_id, line, moved)
        for c, line, moved in placed
        if keep_gone or c.path is None or c.path in transition.new_paths
    ]
    await conn.executemany(q.CARRY_COMMENT, rows)


def display_paths(files: Sequence[dict[str, Any]]) -> frozenset[str]:
    return frozenset(str(f["path"]) for f in files)


def check_body(body: str) -> str:
    body = body.strip()
    if not body:
        raise InvalidComment("a comment needs a body")
    if len(body) > MAX_BODY_CHARS or "\x00" in body:
        raise InvalidComment(f"a comment's body is text of at most {MAX_BODY_CHARS} characters")
    return body
