"""What a reviewer names in a change: whole files, hunks of files, or (nothing named) all of it.

A change is ``base → snapshot``. :func:`choose` resolves the names against it (unknown files and
hunks are refused), and the result gives the patch of just that part, forward (to build the
accepted tree from the base) or reverted (to take it out of the snapshot). Whatever is not
named stays exactly as it was: its hunks keep their text, only their line numbers move.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from worktrees import diff, git, hunks
from worktrees.diff import FileChange
from worktrees.errors import UnknownFile, UnknownHunk


@dataclass(frozen=True)
class Selection:
    files: tuple[str, ...] = ()
    # (path, hunk ids) per file reviewed by hunk.
    hunks: tuple[tuple[str, tuple[int, ...]], ...] = ()

    @classmethod
    def of(cls, files: Sequence[str] | None = None, hunk_ids: Mapping[str, Sequence[int]] | None = None) -> Selection:
        return cls(tuple(files or ()), tuple((p, tuple(ids)) for p, ids in (hunk_ids or {}).items()))

    @property
    def everything(self) -> bool:
        return not self.files and not self.hunks


@dataclass(frozen=True)
class Chosen:
    whole: tuple[FileChange, ...]
    partial: tuple[tuple[FileChange, hunks.FilePatch, frozenset[int]], ...]
    everything: bool

    @property
    def entries(self) -> tuple[FileChange, ...]:
        return (*self.whole, *(entry for entry, _, _ in self.partial))

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(p for e in self.entries for p in e.paths)

    def patch(self, repo: Path, base: str, snapshot: str, *, reverse: bool = False) -> bytes:
        """The chosen part of ``base → snapshot`` (hunk numbers for applying it reverted with
        ``reverse``)."""
        out = git.patch(repo, base, snapshot, tuple(p for e in self.whole for p in e.paths)) if self.whole else b""
        return out + b"".join(fp.keep(ids, reverse=reverse) for _, fp, ids in self.partial)


def select_files(change_id: int, entries: Sequence[FileChange], names: Sequence[str] | None) -> list[FileChange]:
    """The entries a reviewer named (all when ``names`` is empty); unknown names are refused."""
    if not names:
        return list(entries)
    wanted = {n.removeprefix("./") for n in names}
    unknown = sorted(n for n in wanted if not any(n in e.names() for e in entries))
    if unknown:
        known = ", ".join(diff.display(e.path) for e in entries)
        raise UnknownFile(f"change {change_id} has no file {', '.join(unknown)} (its files: {known})")
    return [e for e in entries if wanted & e.names()]


def choose(repo: Path, change_id: int, base: str, snapshot: str, selection: Selection) -> Chosen:
    entries = diff.changes(repo, base, snapshot)
    if selection.everything:
        return Chosen(tuple(entries), (), True)
    whole = select_files(change_id, entries, selection.files) if selection.files else []
    partial: list[tuple[FileChange, hunks.FilePatch, frozenset[int]]] = []
    for name, ids in selection.hunks:
        [entry] = select_files(change_id, entries, [name])
        if entry in whole or any(entry == e for e, _, _ in partial):
            raise UnknownHunk(f"{name} is named twice (as a file or by hunks); name it once")
        file_patch = hunks.parse_section(git.patch(repo, base, snapshot, entry.paths))
        known = {h.id for h in file_patch.hunks}
        if not known:
            raise UnknownHunk(f"{name} has no hunks (a binary file, or only renamed); review it as a file")
        unknown = sorted(set(ids) - known)
        if unknown or not ids:
            named = ", ".join(map(str, unknown)) or "none"
            raise UnknownHunk(f"{name} has hunks 1 to {len(known)} in change {change_id}, not {named}")
        if set(ids) == known:
            whole.append(entry)
        else:
            partial.append((entry, file_patch, frozenset(ids)))
    everything = not partial and len(whole) == len(entries)
    return Chosen(tuple(whole), tuple(partial), everything)


def tree_paths(repo: Path, tree: str, paths: Sequence[str]) -> set[str]:
    """Which of ``paths`` ``tree`` holds (as files)."""
    if not paths:
        return set()
    listing = git.run(repo, ["ls-tree", "-r", "-z", "--name-only", tree, "--", *paths]).stdout
    return {os.fsdecode(p) for p in listing.split(b"\0") if p}


def restore_to(repo: Path, tree: str, paths: Sequence[str]) -> git.RestorePlan:
    """Put ``paths`` back as ``tree`` has them: restored where it has them, deleted elsewhere."""
    present = tree_paths(repo, tree, paths)
    unique = list(dict.fromkeys(paths))
    return git.RestorePlan(tuple(p for p in unique if p in present), tuple(p for p in unique if p not in present))
