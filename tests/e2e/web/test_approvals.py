"""Approvals in the page: a permission request of the fake ACP agent is approved with a click and
the agent goes on; another one is rejected."""

from __future__ import annotations

import pytest
from playwright.async_api import Page, expect

from testkit.rows import add_task
from tests.dispatching import wait_state
from tests.e2e.web.conftest import SCREENSHOTS, Stack, sign_in

pytestmark = [pytest.mark.anyio, pytest.mark.browser]


async def open_session_of(page: Page, stack: Stack, task: int) -> int:
    while (session_id := await stack.pool.fetchval("SELECT session_id FROM tasks WHERE id = $1", task)) is None:
        await page.wait_for_timeout(20)
    await page.locator(f".session-row[data-session-id='{session_id}']").click()
    return int(session_id)


async def test_a_permission_request_is_approved_in_the_page_and_the_agent_continues(page: Page, stack: Stack) -> None:
    await sign_in(page, stack.gateway.page_url, stack.token)
    task = await add_task(stack.pool, stack.project_id, "PERMISSION CHUNKS", agent="fake")
    session_id = await open_session_of(page, stack, task)

    request = page.locator(".request")
    await expect(request).to_have_attribute("data-state", "pending")
    await expect(request.locator(".request-title")).to_have_text("rm -rf build")
    await expect(request.locator(".request-command")).to_have_text("rm -rf build")
    await page.screenshot(path=SCREENSHOTS / "approval.png")
    await request.locator("button[data-option-id='opt-allow']").click()

    await expect(request).to_have_attribute("data-state", "allowed")
    await expect(request.locator(".request-outcome")).to_have_text("allowed by token:reviewer")
    await expect(request.locator("button")).to_have_count(0)
    await expect(page.locator(".turn .badge").first).to_have_text("completed")
    await expect(page.locator("#conversation")).to_contain_text("permission=selected:opt-allow")
    await expect(page.locator("#conversation")).to_contain_text("Hello from the fake agent")
    row = await wait_state(stack.pool, task, "completed")
    assert row["failure_reason"] is None
    decided = await stack.pool.fetchrow(
        "SELECT state, decided_by FROM permission_requests WHERE session_id = $1", session_id
    )
    assert (decided["state"], decided["decided_by"]) == ("allowed", "token:reviewer")


async def test_a_rejected_request_shows_who_rejected_it(page: Page, stack: Stack) -> None:
    await sign_in(page, stack.gateway.page_url, stack.token)
    task = await add_task(stack.pool, stack.project_id, "PERMISSION", agent="fake")
    await open_session_of(page, stack, task)
    request = page.locator(".request")
    await request.locator("button[data-option-id='opt-reject']").click()
    await expect(request).to_have_attribute("data-state", "denied")
    await expect(request.locator(".request-outcome")).to_have_text("denied by token:reviewer")
    await expect(page.locator("#conversation")).to_contain_text("permission=selected:opt-reject")
    await wait_state(stack.pool, task, "completed")
