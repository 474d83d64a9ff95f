"""The review page end to end: sign in, live sessions, a streamed turn, reviewing its change."""

from __future__ import annotations

import subprocess

import pytest
from playwright.async_api import Page, expect

from testkit.rows import add_task
from tests.dispatching import wait_state
from tests.e2e.web.conftest import SCREENSHOTS, Stack, page_session, sign_in

pytestmark = [pytest.mark.anyio, pytest.mark.browser]

PROMPT = "CHUNKS THOUGHT TOOL PLAN WRITE a.txt changed-by-agent WRITE src/new.py print(42)"


def git_status(repo: object) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True, check=True
    ).stdout


async def test_a_turn_from_sql_streams_into_the_page_and_its_change_is_reviewed(page: Page, stack: Stack) -> None:
    await sign_in(page, stack.gateway.page_url, stack.token)
    assert stack.token not in await page.content()
    assert stack.token not in page.url

    task = await add_task(stack.pool, stack.project_id, PROMPT, agent="fake")
    row = await expect_session_row(page, stack, task)
    await row.click()
    await expect(page.locator("#conversation .text").first).to_contain_text("Hello from the fake agent")
    await wait_state(stack.pool, task, "completed")
    session_id = await stack.pool.fetchval("SELECT session_id FROM tasks WHERE id = $1", task)
    message = await stack.pool.fetchrow(
        "SELECT id, content FROM messages WHERE session_id = $1 AND role = 'assistant'", session_id
    )
    await expect(page.locator(".turn .badge").first).to_have_text("completed")
    assert await page.evaluate(f"window.switchyardPage.messageText({message['id']})") == message["content"]
    await expect(page.locator(".turn .prompt").first).to_have_text(PROMPT)
    await expect(page.locator(".tool").first).to_be_visible()
    await expect(page.locator(".plan")).to_contain_text("Change the code")
    await expect(page.locator("#tab-change")).to_contain_text("2 files")
    state = await page_session(page)
    last_seq = await stack.pool.fetchval("SELECT last_seq FROM sessions WHERE id = $1", session_id)
    assert state["seqs"] == list(range(1, last_seq + 1)) and state["duplicates"] == 0
    await page.screenshot(path=SCREENSHOTS / "turn.png")

    # The change: unified, then split; accept one file.
    await page.click("#tab-change")
    await expect(page.locator(".tree-row")).to_have_count(2)
    await expect(page.locator(".d2h-code-line-ctn").first).to_be_visible()
    await page.click("#toggle-split")
    await expect(page.locator(".d2h-files-diff").first).to_be_visible()
    await page.screenshot(path=SCREENSHOTS / "diff.png")
    await page.click("#toggle-split")
    await expect(page.locator(".d2h-file-diff").first).to_be_visible()
    new_file = page.locator("section.file[data-path='src/new.py']")
    await new_file.locator(".accept-file").click()
    await page.click("#confirm-ok")
    await expect(page.locator(".tree-row")).to_have_count(1)
    await expect(page.locator(".tree-row")).to_contain_text("a.txt")
    assert (stack.repo / "src" / "new.py").read_text() == "print(42)"
    assert git_status(stack.repo) == "?? src/new.py\n"  # a.txt untouched
    pending = await stack.pool.fetch("SELECT files FROM pending_changes WHERE status = 'pending'")
    assert [[f["path"] for f in r["files"]] for r in pending] == [["a.txt"]]

    # Reject the rest with the keyboard.
    await page.locator(".diff-pane").focus()
    await page.keyboard.press("Shift+R")
    await page.click("#confirm-ok")
    await expect(page.locator(".review-bar .badge")).to_have_text("rejected")
    assert await stack.pool.fetchval("SELECT count(*) FROM pending_changes WHERE status = 'pending'") == 0
    assert git_status(stack.repo) == "?? src/new.py\n"


async def expect_session_row(page: Page, stack: Stack, task: int) -> object:
    """The session the dispatcher creates for ``task`` shows up in the list without a reload."""
    while (session_id := await stack.pool.fetchval("SELECT session_id FROM tasks WHERE id = $1", task)) is None:
        await page.wait_for_timeout(20)
    row = page.locator(f".session-row[data-session-id='{session_id}']")
    await expect(row).to_be_visible()
    await page.screenshot(path=SCREENSHOTS / "sessions.png")
    return row
