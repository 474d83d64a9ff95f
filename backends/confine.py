"""File access confined to one directory tree: the session worktree an agent works in.

Every path an agent names is resolved with all symlinks followed (a dangling final link too)
*before* it is compared with the root, so ``../x``, an absolute path elsewhere and a link inside
the worktree that points out of it are all refused the same way. Writes are also refused inside
the git metadata (``.git`` at any depth, in any case, for case-insensitive filesystems): a
rewritten ``.git`` file or hook would run code or redirect git outside the worktree.

Reading and writing open the checked path without following a final symlink and then check the
file actually opened (``/proc/self/fd``), so a link swapped in after the check is refused too;
reads are capped at :data:`MAX_READ_BYTES`.

The functions here block (file I/O); async callers run them in ``anyio.to_thread``.
"""

from __future__ import annotations

import os
from pathlib import Path

from backends.errors import FileTooLargeError, PathEscapeError, ProtectedPathError

GIT_METADATA = ".git"
# Files are created like any editor would; the umask applies.
NEW_FILE_MODE = 0o666
# The largest file an agent may read through fs/read_text_file.
MAX_READ_BYTES = 16 * 1024 * 1024


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
    if for_write and any(part.lower() == GIT_METADATA for part in resolved.relative_to(base).parts):
        raise ProtectedPathError(f"path {text!r} is inside the git metadata of the worktree")
    return resolved


def read_text(
    root: Path, requested: str, line: int | None = None, limit: int | None = None, max_bytes: int = MAX_READ_BYTES
) -> str:
    """The text of a file inside ``root``; ``line`` (1-based) and ``limit`` (lines) select a range.

    Raises :class:`FileTooLargeError` for a file of more than ``max_bytes``.
    """
    path = confine(root, requested)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        _check_opened(root, requested, fd)
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileTooLargeError(f"{requested!r} is larger than {max_bytes} bytes; read it in parts with a tool")
    text = data.decode("utf-8", errors="replace")
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
    # O_NOFOLLOW: a symlink swapped in after the check is refused instead of followed out. No
    # O_TRUNC: a file opened through a directory swapped for a link is refused before it changes.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, NEW_FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        _check_opened(root, requested, fd, for_write=True)
        os.ftruncate(fd, 0)
        fh.write(content)
    return path


def _check_opened(root: Path, requested: str, fd: int, *, for_write: bool = False) -> None:
    """Refuse the open file unless it is really inside ``root`` (a directory may have been swapped)."""
    confine(root, os.readlink(f"/proc/self/fd/{fd}"), for_write=for_write)
