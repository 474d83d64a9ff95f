"""Temporary PostgreSQL clusters (the module `switchyard up` uses), for the suite and the benchmarks."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kernel.net import free_port
from orchestrator.db import EmbeddedPostgres


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
def temporary_cluster() -> Iterator[EmbeddedPostgres]:
    """A new PostgreSQL cluster on a free port, removed afterwards."""
    with reachable_tmp_dir() as root:
        cluster = EmbeddedPostgres.create(root / "cluster", free_port())
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop("immediate")
