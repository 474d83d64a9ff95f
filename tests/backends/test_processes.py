"""Process trees: who belongs, by pid *and* start time."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from backends.processes import ProcessTree, process_table

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(SLEEPER, start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def test_a_tree_finds_its_leader_and_remembers_it(sleeper: subprocess.Popen[bytes]) -> None:
    tree = ProcessTree(sleeper.pid)
    assert tree.scan() == {sleeper.pid}
    assert process_table()[sleeper.pid].start > 0


def test_a_remembered_pid_now_used_by_another_process_is_not_a_member(sleeper: subprocess.Popen[bytes]) -> None:
    with subprocess.Popen(SLEEPER, start_new_session=True) as stranger:
        try:
            tree = ProcessTree(sleeper.pid)
            tree.scan()
            # As if the stranger's pid had belonged to a member that exited before it was reused.
            tree._known[stranger.pid] = process_table()[stranger.pid].start - 1
            assert tree.scan() == {sleeper.pid}
            assert stranger.poll() is None
        finally:
            stranger.kill()


def test_a_leader_pid_reused_by_a_later_process_brings_no_group(sleeper: subprocess.Popen[bytes]) -> None:
    tree = ProcessTree(sleeper.pid)
    tree._leader_start = process_table()[sleeper.pid].start - 1  # the first leader was another process
    assert tree.scan() == set()
