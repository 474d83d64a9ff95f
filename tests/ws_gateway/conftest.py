"""Fixtures for the gateway: projects, sessions, tokens and a real in-process Gateway on a free port."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import anyio
import asyncpg
import pytest
from websockets.asyncio.client import ClientConnection, connect

from orchestrator.gateway_actions import OrchestratorActions
from orchestrator.review import ReviewService
from ws_gateway import Gateway, GatewayActions, GatewaySettings, create_token

TEST_SETTINGS = GatewaySettings(port=0, poll_interval=0.5, close_timeout=2.0, auth_timeout=2.0)
RECV_TIMEOUT_S = 20.0

StartGateway = Callable[..., Any]


async def add_project(pool: asyncpg.Pool, name: str) -> int:
    project_id: int = await pool.fetchval(
        "INSERT INTO projects (name, repo_path) VALUES ($1, $2) RETURNING id", name, f"/srv/{name}"
    )
    return project_id


async def add_session(pool: asyncpg.Pool, project_id: int) -> int:
    session_id: int = await pool.fetchval("INSERT INTO sessions (project_id) VALUES ($1) RETURNING id", project_id)
    return session_id


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
    pool: asyncpg.Pool, settings: GatewaySettings = TEST_SETTINGS, actions: GatewayActions | None = None
) -> AsyncIterator[Gateway]:
    """A Gateway on a free port, with the orchestrator's actions unless ``actions`` is given."""
    gateway = Gateway(settings, pool, actions or OrchestratorActions(pool, ReviewService(pool)))
    async with anyio.create_task_group() as tg:
        await tg.start(gateway.serve)
        yield gateway
        tg.cancel_scope.cancel()


@pytest.fixture
async def gateway(pool: asyncpg.Pool) -> AsyncIterator[Gateway]:
    async with running_gateway(pool) as gw:
        yield gw


def open_client(url: str, token: str | None = None, **kwargs: Any) -> Any:
    """A real WebSocket client; the token goes in the Authorization header."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return connect(url, additional_headers=headers, open_timeout=RECV_TIMEOUT_S, **kwargs)


async def recv(ws: ClientConnection) -> dict[str, Any]:
    with anyio.fail_after(RECV_TIMEOUT_S):
        frame: dict[str, Any] = json.loads(await ws.recv())
    return frame


async def recv_until(ws: ClientConnection, type_: str) -> dict[str, Any]:
    while True:
        frame = await recv(ws)
        if frame["type"] == type_:
            return frame


async def request(ws: ClientConnection, frame: dict[str, Any]) -> dict[str, Any]:
    """Send a frame and return its reply (ack, error or pong), skipping session frames."""
    await ws.send(json.dumps(frame))
    while True:
        reply = await recv(ws)
        if reply["type"] in ("ack", "error", "pong") and reply.get("id") == frame.get("id"):
            return reply


async def session_frames(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    """The next ``count`` session frames (frames that carry a seq)."""
    frames: list[dict[str, Any]] = []
    while len(frames) < count:
        frame = await recv(ws)
        if "seq" in frame:
            frames.append(frame)
    return frames


def with_settings(**changes: Any) -> GatewaySettings:
    return replace(TEST_SETTINGS, **changes)
