"""Naming an OS process so that another process can later tell whether it still runs.

A pid alone is reused; ``<boot id>:<pid namespace>:<pid>:<start time>`` is not (Linux /proc).
Another process on the same host and in the same pid namespace can tell for sure whether the
named process is gone; from elsewhere (another host, another container) it cannot, and
:func:`process_gone` says False: only a certainty allows acting at once.
"""

from __future__ import annotations

import os

BOOT_ID = "/proc/sys/kernel/random/boot_id"


def _boot_id() -> str:
    try:
        with open(BOOT_ID) as fh:
            return fh.read().strip()
    except OSError:
        return "?"


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid").removeprefix("pid:").strip("[]")
    except OSError:
        return "?"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain anything; fields follow the last ')'.
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None


def process_key(pid: int | None = None) -> str:
    """The key of process ``pid`` (default: this one)."""
    pid = os.getpid() if pid is None else pid
    return f"{_boot_id()}:{_pid_namespace()}:{pid}:{_start_time(pid) or '?'}"


def process_gone(key: str) -> bool:
    """True only when the process named by ``key`` certainly does not run any more."""
    parts = key.split(":")
    if len(parts) != 4 or not parts[2].isdigit():
        return False
    boot, namespace, pid, started = parts
    if boot != _boot_id():
        return boot != "?" and _boot_id() != "?"  # the host was rebooted since
    if namespace != _pid_namespace() or "?" in (namespace, started):
        return False
    return _start_time(int(pid)) != started
