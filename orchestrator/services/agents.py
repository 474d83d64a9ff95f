"""The configured external agents, probed and mirrored into ``available_agents``.

At start the service probes every agent of the registry (presets plus ``[agents.*]``) and writes
one row per agent, so SQL submitters and IDEs can see what a task may ask for and whether it
would run here. Agents no longer configured are removed. ``switchyard agents`` shows the same
probe without touching the database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import anyio
import asyncpg

from backends import AgentProbe, AgentSpec, probe
from orchestrator.services import queries as q


async def list_available_agents(conn: asyncpg.Connection | asyncpg.Pool) -> list[asyncpg.Record]:
    """``available_agents`` as the last start of a service left it."""
    rows: list[asyncpg.Record] = await conn.fetch(q.LIST_AVAILABLE_AGENTS)
    return rows


async def probe_agents(specs: Mapping[str, AgentSpec], *, opencode_binary: str | None = None) -> list[AgentProbe]:
    """Every agent probed (concurrently, each in a worker thread), in name order."""
    results: dict[str, AgentProbe] = {}

    async def one(spec: AgentSpec) -> None:
        results[spec.name] = await probe(spec, opencode_binary=opencode_binary)

    async with anyio.create_task_group() as tg:
        for spec in specs.values():
            tg.start_soon(one, spec)
    return [results[name] for name in sorted(results)]


async def sync_available_agents(
    conn: asyncpg.Connection,
    specs: Mapping[str, AgentSpec],
    *,
    opencode_binary: str | None = None,
    opencode_models: Sequence[str] = (),
) -> list[AgentProbe]:
    """Probe the agents and make ``available_agents`` list exactly them; returns the probes.

    opencode agents offer ``opencode_models`` (``<provider>/<model>``, the configured ones); other
    agents keep the models their sessions advertised.
    """
    probes = await probe_agents(specs, opencode_binary=opencode_binary)
    rows = [
        (
            p.name,
            specs[p.name].transport,
            list(specs[p.name].command),
            p.version,
            p.available,
            p.detail,
            list(opencode_models) if specs[p.name].opencode else None,
        )
        for p in probes
    ]
    async with conn.transaction():
        await conn.executemany(q.UPSERT_AVAILABLE_AGENT, rows)
        await conn.execute(q.DELETE_UNCONFIGURED_AGENTS, list(specs))
    return probes
