"""Small helpers shared by tests."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from orchestrator.embedded_pg import EmbeddedPostgres, free_port


@contextmanager
def reachable_tmp_dir() -> Iterator[Path]:
    """A temporary directory the `postgres` user can enter (pytest's tmp_path is 0700 root)."""
    root = Path(tempfile.mkdtemp(prefix="switchyard-test-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def embedded_cluster() -> Iterator[EmbeddedPostgres]:
    """A new PostgreSQL cluster on a free port (the module `switchyard up` uses), removed after."""
    with reachable_tmp_dir() as root:
        cluster = EmbeddedPostgres.create(root / "cluster", free_port())
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop("immediate")


def git_repo(path: Path) -> Path:
    """A git repository with one commit holding README.md ("# demo")."""
    path.mkdir(parents=True)
    identity = ["-c", "user.name=Test", "-c", "user.email=test@example.invalid"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    (path / "README.md").write_text("# demo\n")
    subprocess.run(["git", "-C", str(path), *identity, "add", "."], check=True)
    subprocess.run(["git", "-C", str(path), *identity, "commit", "-qm", "init"], check=True)
    return path


def tree_digest(root: Path, *, skip: Iterable[Path] = ()) -> str:
    """A sha256 of everything under ``root`` (names, modes, contents, link targets), ``skip`` left out.

    Two equal digests mean nothing under ``root`` was created, changed or removed.
    """
    skipped = [Path(os.path.realpath(p)) for p in skip]
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if Path(os.path.realpath(here / d)) not in skipped)
        for name in sorted([*filenames, *(d for d in dirnames if (here / d).is_symlink())]):
            path = here / name
            info = path.lstat()
            digest.update(f"{path.relative_to(root)}\0{info.st_mode:o}\0".encode())
            if path.is_symlink():
                digest.update(os.readlink(path).encode())
            elif path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()
