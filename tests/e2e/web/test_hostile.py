"""Agent output is hostile: markup in text, tool output, plans and file names is shown as text
and never runs (the payloads would set window flags)."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from backends.base import Plan, ReasoningDelta, TextDelta, ToolCall, ToolStatus, Turn
from testkit.rows import add_task
from testkit.scripted_backend import ScriptedBackend
from tests.dispatching import wait_state
from tests.e2e.web.conftest import Stack, sign_in

pytestmark = [pytest.mark.anyio, pytest.mark.browser]

IMG = "<img src=x onerror=window.__pwned_img=1>"
SCRIPT = "<script>window.__pwned_script=1</script>"
FILE_NAME = "<img src=x onerror=window.__pwned_file=1>.js"
LINE = "<script>window.__pwned_line=1</script> <img src=x onerror=window.__pwned_line=2>"


def write_hostile_files(turn: Turn) -> None:
    assert turn.workdir is not None
    (Path(turn.workdir) / FILE_NAME).write_text(f"{LINE}\nconst x = '{IMG}';\n")


@pytest.fixture
def scripted() -> ScriptedBackend:
    return ScriptedBackend(
        events=[
            ReasoningDelta(f"thinking {SCRIPT}"),
            TextDelta(f"Here: {IMG} and {SCRIPT}"),
            ToolCall("t1", IMG, ToolStatus.COMPLETED, "execute", {"command": SCRIPT}, f"out {IMG}"),
            Plan([{"content": IMG, "priority": "high", "status": "pending"}]),
            TextDelta(" end"),
        ],
        needs_worktree=True,
        work=write_hostile_files,
    )


async def test_hostile_output_and_file_names_show_as_text(page: Page, stack: Stack) -> None:
    await sign_in(page, stack.gateway.page_url, stack.token)
    task = await add_task(stack.pool, stack.project_id, SCRIPT, agent="scripted")
    await wait_state(stack.pool, task, "completed")
    session = await stack.pool.fetchval("SELECT session_id FROM tasks WHERE id = $1", task)
    await page.goto(f"{stack.gateway.page_url}#/session/{session}")
    await expect(page.locator(".session-row")).to_contain_text(SCRIPT)  # the title
    await expect(page.locator("#conversation .text").first).to_have_text(f"Here: {IMG} and {SCRIPT}")
    await expect(page.locator(".turn .prompt")).to_have_text(SCRIPT)
    await page.click(".reasoning summary")
    await expect(page.locator(".reasoning-text")).to_have_text(f"thinking {SCRIPT}")
    tool = page.locator(".tool")
    await tool.locator("summary").click()
    await expect(tool.locator(".tool-name")).to_have_text(IMG)
    await expect(tool.locator(".tool-io").nth(1)).to_have_text(f"out {IMG}")
    await expect(page.locator(".plan")).to_contain_text(IMG)

    await page.click("#tab-change")
    await expect(page.locator(".tree-path")).to_have_text(FILE_NAME)
    await expect(page.locator(".file-path")).to_have_text(FILE_NAME)
    lines = page.locator(".d2h-code-line-ctn")
    await expect(lines.first).to_have_text(LINE)
    await page.click("#toggle-split")
    await expect(page.locator(".d2h-code-side-line .d2h-code-line-ctn").last).to_contain_text(IMG)

    flags = await page.evaluate("Object.keys(window).filter((k) => k.startsWith('__pwned'))")
    assert flags == []
    assert await page.locator("#app img, #app script").count() == 0
