"""File access confined to one directory tree: the session worktree an agent works in.

Every path an agent names is resolved with all symlinks followed (a dangling final link too)
*before* it is compared with the root, so ``../x``, an absolute path elsewhere and a link inside
the worktree that points out of it are all refused the same way. Writes are also refused inside
the git metadata (``.git`` at any depth): a rewritten ``.git`` file or hook would run code or
redirect git outside the worktree.

The functions here block (file I/O); async callers run them in ``anyio.to_thread``.
"""

from __future__ import annotations

import os
from pathlib import Path

from backends.errors import PathEscapeError, ProtectedPathError

GIT_METADATA = ".git"
# Files are created like any editor would; the umask applies.
NEW_FILE_MODE = 0o666


def confine(root: Path, requested: str | os.PathLike[str], *, for_write: bool = False) -> Path:
    """The real path of ``requested`` (relative paths are taken from ``root``) if it lies in ``root``.

    Raises :class:`PathEscapeError` when it resolves outside ``root``, and for writes
    :class:`ProtectedPathError` when it lies inside git metadata.
    """
    base = Path(os.path.realpath(root))
    text = os.fspath(requested)
    if not text or "\0" in text:
        raise PathEscapeError(text, str(base))
    candidate = Path(text)
    if not candidate.is_absolute():
        candidate = base / candidate
    resolved = Path(os.path.realpath(candidate))
    if resolved != base and base not in resolved.parents:
        raise PathEscapeError(text, str(base))
    if for_write and GIT_METADATA in resolved.relative_to(base).parts:
        raise ProtectedPathError(f"path {text!r} is inside the git metadata of the worktree")
    return resolved


def read_text(root: Path, requested: str, line: int | None = None, limit: int | None = None) -> str:
    """The text of a file inside ``root``; ``line`` (1-based) and ``limit`` (lines) select a range."""
    path = confine(root, requested)
    text = path.read_text(encoding="utf-8", errors="replace")
    if line is None and limit is None:
        return text
    lines = text.splitlines(keepends=True)
    start = max((line or 1) - 1, 0)
    end = len(lines) if limit is None else start + max(limit, 0)
    return "".join(lines[start:end])


def write_text(root: Path, requested: str, content: str) -> Path:
    """Create or replace a file inside ``root`` (parent directories created); returns its real path."""
    path = confine(root, requested, for_write=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_NOFOLLOW: a symlink swapped in after the check is refused instead of followed out.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, NEW_FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(content)
    return path
