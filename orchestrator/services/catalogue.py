"""The catalogue a client offers its user: the agents (``list_agents``) and models (``list_models``).

Agents come from ``available_agents``: what the service's start-up probe found (installed or not,
version; opencode agents with their configured models) and what each agent's sessions advertised
since (an ACP agent's models, modes and session config options, written by its turns). Models are
the native endpoint's ``GET /models``, kept for ``[native] models_cache_ttl`` seconds; an endpoint
that does not answer is an error the client sees (nothing stale is made up).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import anyio
import asyncpg

from backends import BackendError, NativeSettings, list_models
from orchestrator.errors import ModelsUnavailable
from orchestrator.services import queries as q
from ws_gateway import AgentInfo, ModelList


class Catalogue:
    def __init__(self, pool: asyncpg.Pool, native: NativeSettings | None) -> None:
        self._pool = pool
        self._native = native
        self._models: tuple[float, ModelList] | None = None
        self._lock = anyio.Lock()

    async def agents(self) -> list[AgentInfo]:
        rows = await self._pool.fetch(q.LIST_CATALOGUE)
        return [
            AgentInfo(
                name=r["name"],
                track=r["transport"],
                installed=r["available"],
                version=r["version"],
                detail=r["detail"],
                models=r["models"],
                modes=r["modes"],
                config_options=r["config_options"],
                checked_at=r["checked_at"].isoformat(),
                advertised_at=r["advertised_at"].isoformat() if r["advertised_at"] else None,
            )
            for r in rows
        ]

    async def models(self) -> ModelList:
        """``{models: [{id}], endpoint, fetched_at}``; ModelsUnavailable when the endpoint fails."""
        native = self._native
        if native is None:
            raise ModelsUnavailable("no native endpoint is configured for this gateway ([native] base_url)")
        async with self._lock:  # one request refreshes the cache for everybody waiting
            cached = self._models
            if cached is not None and time.monotonic() - cached[0] < native.models_cache_ttl:
                return cached[1]
            try:
                ids = await list_models(native)
            except BackendError as exc:
                raise ModelsUnavailable(str(exc)) from None
            answer = ModelList(
                models=[{"id": model, "default": model == native.model} for model in ids],
                endpoint=native.endpoint,
                fetched_at=datetime.now(UTC).isoformat(),
            )
            self._models = (time.monotonic(), answer)
            return answer
