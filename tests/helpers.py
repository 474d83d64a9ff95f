"""Small helpers shared by tests."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
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
