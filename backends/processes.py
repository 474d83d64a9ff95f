"""Agent process trees: found while they run, killed whole at the end of every turn.

Agents start in a session of their own (``start_new_session``), but killing that process group
is not enough: opencode 1.18.33 starts its bash tool's commands with ``setsid``, so a ``sleep``
it ran survives a group kill of opencode, reparented to init. A :class:`ProcessTree` is
therefore every process that

- is in the agent's session or process group,
- descends from one of those (by parent pid, rescanned by :meth:`ProcessTree.watch` while the
  turn runs, so a child is known before its parent exits and it is reparented), or
- carries the turn's marker in its environment (:data:`RUN_MARKER`, set at launch and inherited
  by whatever the agent starts, however quickly it detaches).

A sandboxed agent's leader is ``bwrap`` (:mod:`backends.sandbox`), which dies at once of any
signal and takes its PID namespace down with it; such a tree (``wrapped``) signals the leader
only with SIGKILL, so the agent itself gets the gentler signals first and may exit cleanly.

:meth:`ProcessTree.terminate` signals every live member, escalating (SIGINT →) SIGTERM → SIGKILL
until none is left. Linux only (``/proc``).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread

PROC = Path("/proc")
# Environment variable whose value identifies one agent run.
RUN_MARKER = "SWITCHYARD_AGENT_RUN"
WATCH_INTERVAL = 0.5
# How long each signal gets to work before the next, stronger one.
SIGNAL_GRACE = 2.0
POLL_INTERVAL = 0.05

TERMINATE = (signal.SIGTERM, signal.SIGKILL)
INTERRUPT = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    pgid: int
    sid: int
    zombie: bool
    # Clock ticks after boot: with the pid, what tells this process from a later one that got
    # the same pid once it had gone (pids wrap at 32768 on many machines).
    start: int


def process_table() -> dict[int, ProcInfo]:
    """Every process visible in /proc (one read of each ``/proc/<pid>/stat``)."""
    table: dict[int, ProcInfo] = {}
    for entry in os.scandir(PROC):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # "pid (comm) state ppid pgrp session ..."; comm may contain spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        pid = int(entry.name)
        table[pid] = ProcInfo(
            pid, int(fields[1]), int(fields[2]), int(fields[3]), fields[0] in ("Z", "X"), int(fields[19])
        )
    return table


def descendants(roots: Iterable[int], table: dict[int, ProcInfo]) -> set[int]:
    """Pids below any of ``roots`` by parent pid (the roots themselves excluded)."""
    children: dict[int, list[int]] = defaultdict(list)
    for info in table.values():
        children[info.ppid].append(info.pid)
    found: set[int] = set()
    stack = list(roots)
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def has_marker(pid: int, entry: bytes) -> bool:
    """Whether ``entry`` (``NAME=value``) is in the environment of ``pid`` (False if unreadable)."""
    try:
        return entry in Path(PROC, str(pid), "environ").read_bytes().split(b"\0")
    except OSError:
        return False


class ProcessTree:
    """The processes of one agent run (see the module docstring for who belongs)."""

    def __init__(self, leader: int, run_id: str | None = None, *, wrapped: bool = False) -> None:
        # With start_new_session the leader's pid is also its session and process group id.
        self.leader = leader
        self.wrapped = wrapped
        self._marker = f"{RUN_MARKER}={run_id}".encode() if run_id else None
        # Members seen so far, by pid and start time: a pid reused by an unrelated process later
        # (a dispatcher, another agent) is never taken for a member.
        self._known: dict[int, int] = {}
        self._leader_start: int | None = None

    def scan(self, environments: bool = True) -> set[int]:
        """The tree's live (non-zombie) pids, remembering every member found.

        ``environments=False`` skips reading every process's environment (the periodic watch).
        """
        table = process_table()
        leader = table.get(self.leader)
        if self._leader_start is None and leader is not None:
            self._leader_start = leader.start
        members = {pid for pid, start in self._known.items() if pid in table and table[pid].start == start}
        # While a group or session lives its id is no process's pid, so members found by it are
        # ours; unless the leader's pid now names a later process (the old group is gone then).
        if leader is None or leader.start == self._leader_start:
            members |= {p.pid for p in table.values() if self.leader in (p.pgid, p.sid)}
        if environments and self._marker is not None:
            members |= {pid for pid in table.keys() - members if has_marker(pid, self._marker)}
        members |= descendants(members, table)
        self._known = {pid: table[pid].start for pid in members}
        return {pid for pid in members if not table[pid].zombie}

    def signal(self, sig: int) -> set[int]:
        """Send ``sig`` to every live process of the tree; returns the pids signalled."""
        live = self.scan()
        for pid in live:
            if pid == self.leader and self.wrapped and sig != signal.SIGKILL:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        return live

    async def watch(self) -> None:
        """Rescan until cancelled, so children are known before a parent dies."""
        while True:
            await anyio.to_thread.run_sync(self.scan, False)
            await anyio.sleep(WATCH_INTERVAL)

    async def terminate(self, signals: Sequence[int] = TERMINATE, grace: float = SIGNAL_GRACE) -> bool:
        """Signal the tree, escalating after ``grace`` seconds each; True once nothing is left.

        Call it inside a shielded scope when the turn is being cancelled.
        """
        for sig in signals:
            if not await anyio.to_thread.run_sync(self.signal, sig):
                return True
            with anyio.move_on_after(grace):
                while True:  # nothing to wait on but /proc
                    if not await anyio.to_thread.run_sync(self.scan):
                        return True
                    await anyio.sleep(POLL_INTERVAL)
        return not await anyio.to_thread.run_sync(self.scan)

    def kill_now(self) -> None:
        """SIGKILL the whole tree at once, for synchronous callers (no grace, no waiting)."""
        self.signal(signal.SIGKILL)
