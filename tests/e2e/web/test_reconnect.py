"""The gateway process is killed mid-turn and started again: the page reconnects, resumes from
the last seq it applied, and ends with exactly the session's frames, each once."""

from __future__ import annotations

import asyncpg
import pytest
from playwright.async_api import Page, expect

from backends.base import TextDelta
from kernel.net import free_port
from orchestrator.dispatch.routing import Router
from testkit.rows import add_project, add_task
from testkit.scripted_backend import ScriptedBackend
from testkit.services import gateway_process
from tests.dispatching import running_dispatcher, wait_state
from tests.e2e.web.conftest import SCREENSHOTS, page_session, sign_in, wait_until
from ws_gateway import create_token

pytestmark = [pytest.mark.anyio, pytest.mark.browser]

DELTAS = 150


async def test_page_survives_a_gateway_killed_mid_turn(page: Page, pool: asyncpg.Pool, db_url: str) -> None:
    project = await add_project(pool, "demo")
    token = await create_token(pool, "reviewer", [project])
    backend = ScriptedBackend(events=[TextDelta(f"{i} ") for i in range(DELTAS)], pause=0.03)
    port = free_port()
    page_url = f"http://127.0.0.1:{port}/"
    async with running_dispatcher(db_url, Router(agents={"scripted": lambda: backend})):
        async with gateway_process(db_url, port, kill=True):
            await sign_in(page, page_url, token)
            task = await add_task(pool, project, "stream please", agent="scripted")
            row = page.locator(".session-row")
            await row.click()
            await expect(page.locator("#conversation .text")).to_contain_text("5 ")
            await page.screenshot(path=SCREENSHOTS / "live-turn.png")
        # Killed mid-turn; the turn goes on.
        await expect(page.locator("#connection")).not_to_have_text("online")
        async with gateway_process(db_url, port):
            await wait_state(pool, task, "completed")
            session = await pool.fetchval("SELECT session_id FROM tasks WHERE id = $1", task)
            last_seq = await pool.fetchval("SELECT last_seq FROM sessions WHERE id = $1", session)

            async def caught_up() -> bool:
                state = await page_session(page)
                return state is not None and state["lastSeq"] == last_seq

            await wait_until(caught_up, "the page to reach the session's last seq")
            state = await page_session(page)
            content = await pool.fetchval(
                "SELECT content FROM messages WHERE session_id = $1 AND role = 'assistant'", session
            )
            message_id = await pool.fetchval(
                "SELECT id FROM messages WHERE session_id = $1 AND role = 'assistant'", session
            )
            await expect(page.locator("#connection")).to_have_text("online")
            assert await page.evaluate(f"window.switchyardPage.messageText({message_id})") == content
    assert state["seqs"] == list(range(1, last_seq + 1))
    assert (state["duplicates"], state["gaps"]) == (0, 0)
    assert content == "".join(f"{i} " for i in range(DELTAS))
