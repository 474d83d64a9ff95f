"""Locks on the data directory: one service per directory, and who owns its embedded cluster.

- ``<data_dir>/switchyard.lock``: held (``flock``) by ``switchyard up`` for its whole life, with
  its pid inside. A second ``up`` on the same directory refuses at once, before it touches the
  cluster or anything else: "already running, pid N". The kernel drops the lock when the
  process dies, however it dies, so a stale file never blocks a restart.
- ``<data_dir>/postgres.lock``: held briefly around every decision to start or stop the embedded
  cluster, so two processes never race ``pg_ctl``.
- ``<data_dir>/postgres.owner``: the process that started the embedded cluster (its
  kernel.procs key). Only that process stops it — or a service that adopted it because its
  starter is gone — and a one-off command that started it leaves it running when a service on
  the directory now uses it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from kernel import process_gone, process_key
from orchestrator.errors import AlreadyRunning

SERVICE_LOCK = "switchyard.lock"
CLUSTER_LOCK = "postgres.lock"
OWNER_FILE = "postgres.owner"


class ServiceLock:
    """The data directory's service lock (blocking file I/O: call from a thread or at start-up)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / SERVICE_LOCK
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = self.path.open("a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            pid = file.read().strip() or "?"
            file.close()
            raise AlreadyRunning(
                f"already running, pid {pid} (data directory {self.path.parent}); stop it first, or give this "
                "one another data_dir"
            ) from None
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
        self._file = file

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None


def service_running_elsewhere(data_dir: Path) -> bool:
    """Whether another process holds the data directory's service lock (a running ``up``)."""
    path = data_dir / SERVICE_LOCK
    if not path.exists():
        return False
    with path.open("a+") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(file, fcntl.LOCK_UN)
    return False


@contextlib.contextmanager
def cluster_decision(data_dir: Path) -> Iterator[None]:
    """Hold the cluster lock while deciding to start or stop the embedded cluster."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / CLUSTER_LOCK).open("a+") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


class ClusterOwner:
    """``postgres.owner``: which process may stop the embedded cluster (call under cluster_decision)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / OWNER_FILE
        self._me = process_key()

    def _owner(self) -> str | None:
        try:
            owner = json.loads(self.path.read_text()).get("process")
        except (OSError, ValueError, AttributeError):
            return None
        return owner if isinstance(owner, str) else None

    def claim(self) -> None:
        self.path.write_text(json.dumps({"pid": os.getpid(), "process": self._me}) + "\n")

    def is_mine(self) -> bool:
        return self._owner() == self._me

    def orphaned(self) -> bool:
        """Nobody owns it: no owner recorded, or the recorded one is certainly gone."""
        owner = self._owner()
        return owner is None or process_gone(owner)

    def release(self) -> None:
        """Give up ownership, leaving the cluster to whoever uses it next."""
        if self.is_mine():
            self.forget()

    def forget(self) -> None:
        """The cluster was stopped: nobody owns it."""
        self.path.unlink(missing_ok=True)
