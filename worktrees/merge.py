"""A session's work merged onto another commit (rebase), in the repository's object store only.

``merge_onto(repo, base, work, onto)`` is the 3-way merge of ``base → work`` (the session's
snapshot) into ``onto`` (the checkout's HEAD) by ``git merge-tree --write-tree`` (git ≥ 2.38):
a tree, with conflict markers in the files that conflict, plus the conflicted paths and git's
messages. merge-tree takes the merge base from history, and the session's base is usually not
in the checkout's history, so ``onto``'s tree is first committed with ``base`` as its parent:
then ``base`` is exactly the merge base. Nothing outside the object store is written; the
caller puts the tree into the worktree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from worktrees import git
from worktrees.errors import GitCommandFailed

MARKER = b"<<<<<<< "


@dataclass(frozen=True)
class Merge:
    tree: str
    conflicts: tuple[str, ...]
    messages: tuple[str, ...]


def merge_onto(repo: Path, base: str, work: str, onto: str) -> Merge:
    target = git.commit_tree(repo, f"{onto}^{{tree}}", base, "switchyard: rebase target", fixed_date=True)
    args = ["merge-tree", "--write-tree", "--name-only", "--messages", "-z", target, work]
    result = git.run(repo, args, check=False)
    if result.returncode not in (0, 1):
        raise GitCommandFailed(args, result.returncode, result.stderr.decode(errors="replace"))
    return parse_merge_tree(result.stdout)


def parse_merge_tree(out: bytes) -> Merge:
    """``merge-tree --write-tree --name-only --messages -z``: the tree, the conflicted paths up
    to an empty field, then messages as (path count, paths, type, text) records."""
    fields = out.split(b"\0")
    tree = fields[0].decode()
    i = 1
    conflicts: list[str] = []
    while i < len(fields) and fields[i]:
        name = os.fsdecode(fields[i])
        if name not in conflicts:
            conflicts.append(name)
        i += 1
    i += 1
    messages: list[str] = []
    while i + 1 < len(fields) and fields[i].isdigit():
        count = int(fields[i])
        text_at = i + 1 + count + 1
        if text_at >= len(fields):
            break
        messages.append(fields[text_at].decode(errors="replace").strip())
        i = text_at + 1
    return Merge(tree, tuple(conflicts), tuple(messages))


def still_conflicted(repo: Path, commit: str, paths: tuple[str, ...]) -> tuple[str, ...]:
    """Which of ``paths`` still hold a conflict marker line in ``commit``."""
    if not paths:
        return ()
    args = ["grep", "-l", "-z", "-I", "-e", f"^{MARKER.decode()}", commit, "--", *paths]
    result = git.run(repo, args, check=False)
    if result.returncode not in (0, 1):
        raise GitCommandFailed(args, result.returncode, result.stderr.decode(errors="replace"))
    prefix = f"{commit}:"
    found = {os.fsdecode(name).removeprefix(prefix) for name in result.stdout.split(b"\0") if name}
    return tuple(p for p in paths if p in found)
