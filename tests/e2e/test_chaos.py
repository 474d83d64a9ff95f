"""The chaos soak (testkit.chaos) at a size the suite affords: nothing lost, doubled, overlapping or stuck.

bench/chaos.py runs the full size (1,000 turns, 100 sessions, 50 clients); this one keeps every
kind of fault — dispatchers killed -9 and restarted, a PostgreSQL restart, an opencode server
killed, dropped connections, a partition longer than the lease, clients that drop and resume —
on fewer turns.
"""

from __future__ import annotations

import pytest

from testkit.chaos import ChaosConfig, run_soak

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leftover_processes")]

SMALL = ChaosConfig(
    turns=240,
    sessions=24,
    clients=12,
    submit_rate=16,
    kill_every=4.0,
    postgres_restarts=1,
    opencode_kill_every=8.0,
    drop_every=4.0,
    partitions=1,
)


async def test_the_small_chaos_soak_loses_nothing() -> None:
    report = await run_soak(SMALL)
    assert report.ok, report.to_json()
    assert report.completed + sum(report.failed_by_reason.values()) == SMALL.turns
    faults = report.faults
    assert faults.dispatcher_kills >= 1 and faults.postgres_restarts == 1 and faults.partitions == 1
    assert faults.connection_drops >= 1 and faults.client_reconnects >= SMALL.clients
