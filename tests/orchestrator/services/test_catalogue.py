"""The catalogue over the WebSocket (``list_agents``, ``list_models``) and agent options at submit:
what agents advertise is kept in ``available_agents`` and checked when a task is submitted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from backends import AcpBackend, AgentSpec, NativeSettings
from orchestrator.dispatch import Router
from orchestrator.services.agents import sync_available_agents
from orchestrator.services.gateway_actions import OrchestratorActions
from orchestrator.services.review import ReviewService
from testkit import fake_acp_agent_command
from testkit.clients import open_client, recv, request
from testkit.fake_model import FakeModel
from testkit.repos import sample_repo
from testkit.rows import add_project, add_task
from tests.dispatching import running_dispatcher, wait_state
from tests.ws_gateway.conftest import running_gateway
from worktrees import WorktreeSettings
from ws_gateway import Gateway, create_token

pytestmark = pytest.mark.anyio

FAKE = AgentSpec("fake", "acp", tuple(fake_acp_agent_command()))


@pytest.fixture
async def fake_model() -> AsyncIterator[FakeModel]:
    async with FakeModel(models=("small", "large")) as model:
        yield model


async def ask(gateway: Gateway, token: str, frame: dict[str, Any]) -> dict[str, Any]:
    async with open_client(gateway.url, token) as ws:
        await recv(ws)
        return await request(ws, {"id": 1, **frame})


async def test_agents_show_what_their_sessions_advertised_and_options_are_checked_at_submit(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    project = await add_project(pool, "catalogue", sample_repo(tmp_path / "repo"))
    token = await create_token(pool, "ide", [project])
    async with pool.acquire() as conn:
        await sync_available_agents(conn, {"fake": FAKE})
    review = ReviewService(pool, WorktreeSettings(root=tmp_path / "worktrees"))
    router = Router(agents={"fake": partial(AcpBackend, FAKE)})
    async with (
        running_gateway(pool, db_url, actions=OrchestratorActions(pool, review)) as gateway,
        running_dispatcher(db_url, router, worktrees=review.worktrees),
    ):
        before = await ask(gateway, token, {"type": "list_agents"})
        [fake] = before["agents"]
        assert (fake["name"], fake["track"], fake["installed"], fake["config_options"]) == ("fake", "acp", True, [])
        # Nothing advertised yet: the turn checks the options.
        submit = {"type": "submit", "project_id": project, "input": "OPTIONS", "agent": "fake"}
        ack = await ask(gateway, token, {**submit, "agent_options": {"effort": "high"}})
        row = await wait_state(pool, ack["task_id"], "completed")
        assert "effort:high" in str(row["output_summary"])

        after = await ask(gateway, token, {"type": "list_agents"})
        [fake] = after["agents"]
        assert fake["models"] == ["fake/small", "fake/large"]
        assert [m["id"] for m in fake["modes"]] == ["default", "plan"]
        assert [o["id"] for o in fake["config_options"]] == ["mode", "model", "effort"]
        assert fake["advertised_at"] is not None

        refused = await ask(gateway, token, {**submit, "agent_options": {"effort": "extreme"}})
        assert (refused["type"], refused["code"]) == ("error", "bad_input")
        assert "must be one of low, medium, high" in refused["message"]
        by_category = await ask(gateway, token, {**submit, "agent_options": {"thought_level": "low"}})
        assert by_category["type"] == "ack"
        native = await ask(gateway, token, {**replace_agent(submit, None), "agent_options": {"effort": "low"}})
        assert (native["code"], native["message"]) == ("bad_input", "native inference offers no agent options (effort)")
        # An SQL submitter is checked by the turn.
        task = await add_task(pool, project, "OPTIONS", agent="fake", agent_options={"colour": "red"})
        failed = await wait_state(pool, task, "failed")
        assert failed["failure_reason"] == "bad_input" and "no option 'colour'" in failed["error"]
        assert await pool.fetchval('SELECT count(*) FROM tasks WHERE agent_options = \'{"effort": "extreme"}\'') == 0


def replace_agent(frame: dict[str, Any], agent: str | None) -> dict[str, Any]:
    changed = {**frame, "agent": agent}
    return {k: v for k, v in changed.items() if v is not None}


async def test_models_come_from_the_endpoint_cached_and_an_endpoint_down_is_an_error(
    db_url: str, pool: asyncpg.Pool, fake_model: FakeModel
) -> None:
    token = await create_token(pool, "ide", None)
    native = NativeSettings(base_url=fake_model.base_url, model="large", models_cache_ttl=3600)
    actions = OrchestratorActions(pool, ReviewService(pool), native)
    async with running_gateway(pool, db_url, actions=actions) as gateway:
        listed = await ask(gateway, token, {"type": "list_models"})
        assert listed["models"] == [{"id": "small", "default": False}, {"id": "large", "default": True}]
        assert listed["endpoint"] == fake_model.base_url
        await fake_model.__aexit__(None, None, None)  # the endpoint goes away: the cached list stays
        assert (await ask(gateway, token, {"type": "list_models"}))["models"] == listed["models"]
    down = replace(native, models_cache_ttl=0)
    async with running_gateway(pool, db_url, actions=OrchestratorActions(pool, ReviewService(pool), down)) as gateway:
        error = await ask(gateway, token, {"type": "list_models"})
        assert (error["type"], error["code"]) == ("error", "models_unavailable")
        assert "cannot reach" in error["message"]
    async with running_gateway(pool, db_url) as gateway:
        error = await ask(gateway, token, {"type": "list_models"})
        assert (error["code"], error["message"]) == (
            "models_unavailable",
            "no native endpoint is configured for this gateway ([native] base_url)",
        )
