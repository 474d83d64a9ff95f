"""No process may outlive the test that started it.

:func:`no_leftovers` watches, while a test runs, every descendant of the test process: a thread
scans /proc and remembers each one it sees, so a process that is orphaned later (reparented to
init, e.g. by ``setsid``) is still known. On exit, any of them still alive fails the test after
being killed, so one failure does not leak into the next test. Processes that existed before,
and their descendants, are not the test's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from backends.processes import descendants, process_table

SCAN_INTERVAL = 0.1
# Processes being killed at the very end of a test get this long to disappear.
SETTLE_SECONDS = 5.0


class DescendantWatch(threading.Thread):
    def __init__(self) -> None:
        super().__init__(name="descendant-watch", daemon=True)
        self.me = os.getpid()
        self.baseline = descendants([self.me], process_table())
        self.seen: set[int] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(SCAN_INTERVAL):
            self.scan()

    def scan(self) -> None:
        table = process_table()
        ours = descendants([self.me], table) - self.baseline - descendants(self.baseline, table)
        self.seen |= ours

    def alive(self) -> dict[int, str]:
        self.scan()
        table = process_table()
        return {pid: _cmdline(pid) for pid in self.seen if pid in table and not table[pid].zombie}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


@contextlib.contextmanager
def no_leftovers() -> Iterator[None]:
    """Fail (AssertionError) if a process started inside the block is still running after it."""
    watch = DescendantWatch()
    watch.start()
    try:
        yield
    finally:
        watch.stop.set()
        watch.join()
    deadline = time.monotonic() + SETTLE_SECONDS
    leftover = watch.alive()
    while leftover and time.monotonic() < deadline:
        time.sleep(SCAN_INTERVAL)
        leftover = watch.alive()
    for pid in leftover:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not leftover, f"processes left running after the test: {leftover}"
