"""The review page in a real Chromium (Debian's, driven by Playwright) against a real gateway,
dispatcher, database and git repository. Select these tests with ``-m browser``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect

from backends.acp import AcpBackend
from backends.permissions import PermissionPolicy
from backends.registry import AgentSpec
from orchestrator.dispatch.routing import Router
from orchestrator.services.gateway_actions import OrchestratorActions
from orchestrator.services.review import ReviewService
from testkit import fake_acp_agent_command
from testkit.browser import CHROMIUM, CHROMIUM_ARGS
from testkit.repos import sample_repo
from testkit.rows import add_project
from testkit.scripted_backend import ScriptedBackend
from tests.dispatching import running_dispatcher
from tests.ws_gateway.conftest import running_gateway
from worktrees import WorktreeSettings
from ws_gateway import Gateway, create_token

SCREENSHOTS = Path(__file__).resolve().parents[3] / "docs" / "screenshots"
FAKE_ACP = AgentSpec("fake", "acp", tuple(fake_acp_agent_command()))
TIMEOUT_MS = 30_000


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class Problems:
    """Script errors and console errors (a CSP violation is one) seen by a page."""

    errors: list[str] = field(default_factory=list)

    def console(self, message: ConsoleMessage) -> None:
        # A reconnect attempt while the gateway is down (stopped, killed) is the browser's
        # expected complaint, not the page's.
        if message.type == "error" and "ERR_CONNECTION_REFUSED" not in message.text:
            self.errors.append(f"console: {message.text}")


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    problems = Problems()
    page.on("console", problems.console)
    page.on("pageerror", lambda error: problems.errors.append(f"pageerror: {error}"))
    try:
        yield page
    finally:
        await context.close()
    assert problems.errors == []


@dataclass
class Stack:
    """A project (a real repository), a token that sees it, a gateway and a dispatcher whose
    router has the fake ACP agent as ``fake`` (commands outside the allow-list ask a person) and a
    scripted backend as ``scripted``."""

    pool: asyncpg.Pool
    repo: Path
    project_id: int
    token: str
    gateway: Gateway
    scripted: ScriptedBackend
    review: ReviewService


@pytest.fixture
def scripted() -> ScriptedBackend:
    return ScriptedBackend(needs_worktree=True)


@pytest.fixture
async def stack(db_url: str, pool: asyncpg.Pool, tmp_path: Path, scripted: ScriptedBackend) -> AsyncIterator[Stack]:
    repo = sample_repo(tmp_path / "project")
    project_id = await add_project(pool, "demo", repo)
    token = await create_token(pool, "reviewer", [project_id])
    review = ReviewService(pool, WorktreeSettings(root=tmp_path / "worktrees"))
    fake = partial(AcpBackend, FAKE_ACP, PermissionPolicy(execute="ask"))
    router = Router(agents={"fake": fake, "scripted": lambda: scripted})
    async with (
        running_gateway(pool, db_url, actions=OrchestratorActions(pool, review)) as gateway,
        running_dispatcher(db_url, router, worktrees=review.worktrees),
    ):
        yield Stack(pool, repo, project_id, token, gateway, scripted, review)


async def sign_in(page: Page, url: str, token: str) -> None:
    await page.goto(url)
    await page.fill("#token", token)
    await page.click("#sign-in-form button[type=submit]")
    await expect(page.locator("#connection")).to_have_text("online")


async def page_session(page: Page) -> dict[str, Any]:
    state: dict[str, Any] = await page.evaluate("window.switchyardPage.session()")
    return state


async def wait_until(check: Any, what: str, timeout: float = 30.0) -> None:
    with anyio.fail_after(timeout):
        while not await check():
            await anyio.sleep(0.05)
