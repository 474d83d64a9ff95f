"""Fixtures for the gateway: projects, sessions, tokens and a real in-process Gateway on a free port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import anyio
import asyncpg
import pytest

from orchestrator.services.gateway_actions import OrchestratorActions
from orchestrator.services.review import ReviewService
from testkit.rows import add_project, add_session
from ws_gateway import Gateway, GatewayActions, GatewaySettings, create_token

TEST_SETTINGS = GatewaySettings(port=0, poll_interval=0.5, close_timeout=2.0, auth_timeout=2.0)

StartGateway = Callable[..., Any]


@pytest.fixture
async def projects(pool: asyncpg.Pool) -> tuple[int, int]:
    """Two projects: tokens of the first must not see the second."""
    return await add_project(pool, "alpha"), await add_project(pool, "beta")


@pytest.fixture
async def session_id(pool: asyncpg.Pool, projects: tuple[int, int]) -> int:
    return await add_session(pool, projects[0])


@pytest.fixture
async def token(pool: asyncpg.Pool, projects: tuple[int, int]) -> str:
    """A token that sees only the first project."""
    return await create_token(pool, "ide", [projects[0]])


@asynccontextmanager
async def running_gateway(
    pool: asyncpg.Pool, db_url: str, settings: GatewaySettings = TEST_SETTINGS, actions: GatewayActions | None = None
) -> AsyncIterator[Gateway]:
    """A Gateway on a free port, with the orchestrator's actions unless ``actions`` is given."""
    gateway = Gateway(settings, pool, actions or OrchestratorActions(pool, ReviewService(pool)), db_url)
    async with anyio.create_task_group() as tg:
        await tg.start(gateway.serve)
        yield gateway
        tg.cancel_scope.cancel()


@pytest.fixture
async def gateway(pool: asyncpg.Pool, db_url: str) -> AsyncIterator[Gateway]:
    async with running_gateway(pool, db_url) as gw:
        yield gw


def with_settings(**changes: Any) -> GatewaySettings:
    return replace(TEST_SETTINGS, **changes)
