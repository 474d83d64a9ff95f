"""Diffs between two commits: the per-file summary and the size-capped patch text.

The patch text is for people (CLI, IDE); accept and reject never apply it but regenerate the
exact patch from the change's snapshot commit, so a truncated text loses nothing.

Caps: a file whose patch is larger than ``max_file_bytes`` keeps its header and a note; once
the text would pass ``max_total_bytes``, further files keep only a note. Either way the file
is in ``files`` with ``truncated: true`` and the change's ``truncated`` flag is set. Binary
files larger than ``max_file_bytes`` are not even rendered (a base85 literal would be bigger).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from worktrees import git
from worktrees.errors import WorktreeError

STATUS_NAMES = {"A": "added", "M": "modified", "D": "deleted", "R": "renamed", "C": "copied", "T": "type_changed"}
SECTION_START = re.compile(rb"^diff --git ", re.MULTILINE)
HUNKS_START = re.compile(rb"^(@@ |GIT binary patch|Binary files )", re.MULTILINE)


@dataclass(frozen=True)
class FileChange:
    """One file of a diff. Paths are as git stores them (undecodable bytes kept as surrogates)."""

    path: str
    status: str
    additions: int
    deletions: int
    binary: bool
    old_path: str | None = None
    truncated: bool = False
    blobs: tuple[str, str] = (git.EMPTY_SHA, git.EMPTY_SHA)  # old and new blob ids

    @property
    def paths(self) -> tuple[str, ...]:
        return (self.path,) if self.old_path is None else (self.old_path, self.path)

    def names(self) -> set[str]:
        """Every spelling a reviewer may use for this file (raw and displayed, new and old)."""
        return {*self.paths, *(display(p) for p in self.paths)}

    def to_json(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "path": display(self.path),
            "status": self.status,
            "additions": self.additions,
            "deletions": self.deletions,
            "binary": self.binary,
            "truncated": self.truncated,
        }
        if self.old_path is not None:
            item["old_path"] = display(self.old_path)
        return item


@dataclass(frozen=True)
class Diff:
    text: str
    files: tuple[FileChange, ...]
    truncated: bool

    @property
    def empty(self) -> bool:
        return not self.files

    def files_json(self) -> list[dict[str, Any]]:
        return [f.to_json() for f in self.files]


@dataclass(frozen=True)
class Caps:
    max_file_bytes: int
    max_total_bytes: int


def display(path: str) -> str:
    """A path as valid Unicode for JSON and terminals."""
    return os.fsencode(path).decode("utf-8", errors="replace")


def parse_changes(data: bytes) -> list[FileChange]:
    """Parse ``diff-tree -z --raw --numstat`` (all raw records, then all numstat records)."""
    tokens = data.split(b"\0")
    raw: list[tuple[str, str, str | None, tuple[str, str]]] = []
    stats: list[tuple[bytes, bytes]] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token:
            i += 1
        elif token.startswith(b":"):
            fields = token[1:].split(b" ")
            status = fields[4][:1].decode()
            if status in ("R", "C"):
                old: str | None = os.fsdecode(tokens[i + 1])
                new = os.fsdecode(tokens[i + 2])
                i += 3
            else:
                old, new = None, os.fsdecode(tokens[i + 1])
                i += 2
            raw.append((status, new, old, (fields[2].decode(), fields[3].decode())))
        else:
            added, deleted, path = token.split(b"\t", 2)
            stats.append((added, deleted))
            i += 3 if path == b"" else 1
    if len(raw) != len(stats):
        raise WorktreeError(f"git diff-tree gave {len(raw)} files but {len(stats)} line counts")
    return [
        FileChange(
            path=new,
            status=STATUS_NAMES.get(status, status),
            additions=0 if added == b"-" else int(added),
            deletions=0 if deleted == b"-" else int(deleted),
            binary=added == b"-",
            old_path=old,
            blobs=blobs,
        )
        for (status, new, old, blobs), (added, deleted) in zip(raw, stats, strict=True)
    ]


def changes(repo: Path, old: str, new: str, paths: tuple[str, ...] = ()) -> list[FileChange]:
    return parse_changes(git.raw_changes(repo, old, new, paths))


def compute(repo: Path, old: str, new: str, caps: Caps, paths: tuple[str, ...] = ()) -> Diff:
    """The capped diff from ``old`` to ``new`` (commits), optionally limited to ``paths``."""
    files = changes(repo, old, new, paths)
    if not files:
        return Diff("", (), False)
    too_big = _oversized_binaries(repo, files, caps.max_file_bytes)
    rendered = [f for f in files if f.path not in too_big]
    sections: list[bytes] = []
    if rendered:
        patch_paths = tuple(p for f in rendered for p in f.paths)
        sections = split_patch(git.patch(repo, old, new, patch_paths))
        if len(sections) != len(rendered):
            raise WorktreeError(f"git diff-tree gave {len(sections)} patches for {len(rendered)} files")
    by_path = dict(zip((f.path for f in rendered), sections, strict=True))

    out: list[bytes] = []
    total = 0
    result: list[FileChange] = []
    left_out = 0
    for f in files:
        section = by_path.get(f.path)
        truncated = section is None or len(section) > caps.max_file_bytes
        if section is None:
            section = _note(f, f"binary file larger than {caps.max_file_bytes} bytes; patch not shown")
        elif truncated:
            section = _header(section) + _note(
                f, f"patch of {len(section)} bytes is over the {caps.max_file_bytes}-byte per-file cap"
            )
        if total + len(section) > caps.max_total_bytes:
            left_out += 1
            truncated = True
        else:
            out.append(section)
            total += len(section)
        result.append(replace(f, truncated=truncated) if truncated else f)
    if left_out:
        out.append(
            f"# switchyard: {left_out} more file(s) left out: the diff is over the "
            f"{caps.max_total_bytes}-byte cap; see the files list\n".encode()
        )
    text = b"".join(out).decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    return Diff(text, tuple(result), any(f.truncated for f in result))


def split_patch(data: bytes) -> list[bytes]:
    starts = [m.start() for m in SECTION_START.finditer(data)]
    return [data[a:b] for a, b in zip(starts, [*starts[1:], len(data)], strict=True)]


def _header(section: bytes) -> bytes:
    match = HUNKS_START.search(section)
    return section[: match.start()] if match else section


def _note(f: FileChange, text: str) -> bytes:
    return f"# switchyard: {display(f.path)}: {text}\n".encode()


def _oversized_binaries(repo: Path, files: list[FileChange], limit: int) -> set[str]:
    # A binary patch carries the old and the new content, so either side may make it big.
    binaries = [f for f in files if f.binary]
    if not binaries:
        return set()
    sizes = git.blob_sizes(repo, {b for f in binaries for b in f.blobs if b != git.EMPTY_SHA})
    return {f.path for f in binaries if max(sizes.get(b, 0) for b in f.blobs) > limit}
