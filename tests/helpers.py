"""Small helpers shared by tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def reachable_tmp_dir() -> Iterator[Path]:
    """A temporary directory the `postgres` user can enter (pytest's tmp_path is 0700 root)."""
    root = Path(tempfile.mkdtemp(prefix="switchyard-test-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
