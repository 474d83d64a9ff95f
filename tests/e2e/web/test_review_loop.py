"""The review loop on the page, in Chromium against a real gateway, dispatcher, database and git:
hunks, line comments sent to the agent, what changed since my last review, accept as a commit,
a conflict rebased and resolved by the agent, and a turn's files showing while it runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from backends.base import Turn
from testkit.repos import GIT_ENV, LINES, git
from testkit.rows import add_session, add_task, finished_turn
from tests.dispatching import wait_state
from tests.e2e.web.conftest import SCREENSHOTS, Stack, sign_in

pytestmark = [pytest.mark.anyio, pytest.mark.browser]

HUNK_1 = ("line 2\n", "line 2 agent\n")
HUNK_2 = ("line 10\n", "line 10 agent\n")
HUNK_3 = ("line 18\n", "line 18 agent\n")


def edited(*hunks: tuple[str, str], text: str = LINES) -> str:
    for old, new in hunks:
        text = text.replace(old, new)
    return text


async def scripted_change(stack: Stack, files: dict[str, str]) -> tuple[int, int]:
    """A session with a change from a finished turn whose agent is ``scripted`` (so the tasks the
    review queues run on the scripted backend); (session, change)."""
    session = await add_session(stack.pool, stack.project_id)
    change = await finished_turn(stack.review, stack.pool, session, files)
    await stack.pool.execute(
        "UPDATE tasks SET agent = 'scripted' WHERE id = (SELECT task_id FROM pending_changes WHERE id = $1)", change
    )
    return session, change


def write_in_worktree(files: dict[str, str]) -> object:
    def work(turn: Turn) -> None:
        assert turn.workdir is not None
        for name, text in files.items():
            (Path(turn.workdir) / name).write_text(text)

    return work


def line_number(page: Page, path: str, line: int) -> object:
    return page.locator(f"section.file[data-path='{path}'] td.d2h-code-linenumber:has(.line-num2:text-is('{line}'))")


async def test_hunks_comments_request_changes_and_since_my_last_review(page: Page, stack: Stack) -> None:
    session, change = await scripted_change(stack, {"a.txt": edited(HUNK_1, HUNK_2, HUNK_3)})
    await sign_in(page, stack.gateway.page_url, stack.token)
    await page.goto(f"{stack.gateway.page_url}#/session/{session}/change")
    file = page.locator("section.file[data-path='a.txt']")
    await expect(file.locator(".accept-hunk")).to_have_count(3)

    # Accept hunk 2 of 3: the checkout gets it alone, hunks 1 and 3 stay pending.
    await file.locator(".accept-hunk").nth(1).click()
    await page.click("#confirm-ok")
    await expect(file.locator(".accept-hunk")).to_have_count(2)
    assert (stack.repo / "a.txt").read_text() == edited(HUNK_2)
    rest = await stack.pool.fetchval(
        "SELECT id FROM pending_changes WHERE session_id = $1 AND status = 'pending'", session
    )
    assert rest != change

    # A comment on line 3, then request changes: the agent's next task quotes it.
    await line_number(page, "a.txt", 3).click()
    await page.fill(".comment-form-row textarea", "Say 'agent' only once")
    await page.click(".comment-form-row .comment-submit")
    await expect(file.locator(".comment-row .comment-body")).to_have_text("Say 'agent' only once")
    await expect(page.locator(".comments-panel summary")).to_have_text("Comments (1, 1 open)")
    await page.screenshot(path=SCREENSHOTS / "review-loop.png")

    answer = "line 0 reviewed\n" + edited(HUNK_1, HUNK_2, HUNK_3)
    stack.scripted.work = write_in_worktree({"a.txt": answer})
    await page.click("#request-changes")
    await page.click("#confirm-ok")
    await expect(page.locator(".review-status")).to_contain_text("queued with 1 comment(s)")
    task = await stack.pool.fetchrow("SELECT * FROM tasks WHERE review_change_id = $1", rest)
    assert "Say 'agent' only once" in task["input"] and "> 3 | line 3" in task["input"]

    # The agent's turn supersedes the change; the page follows, and offers what changed since.
    await wait_state(stack.pool, task["id"], "completed")
    since = page.locator("#since-toggle")
    await expect(since).to_have_text(f"Since my last review (#{rest})")
    await since.click()
    await expect(page.locator(".interdiff-note")).to_be_visible()
    added = page.locator("td.d2h-ins:not(.d2h-code-linenumber)")
    await expect(added).to_have_count(1)
    await expect(added).to_contain_text("line 0 reviewed")
    # The comment's line moved down one: it is outdated, and shows where the line is now.
    await expect(page.locator(".comment")).to_contain_text("outdated: line moved")
    await expect(page.locator(".comment .meta")).to_have_text("a.txt:4")
    # Back to the whole change: the new line and hunk 1 are one hunk now, hunk 3 the other.
    await page.click("#since-toggle")
    await expect(page.locator(".accept-hunk")).to_have_count(2)


async def test_accept_as_a_commit_with_a_message(page: Page, stack: Stack) -> None:
    session, _ = await scripted_change(stack, {"a.txt": edited(HUNK_1), "new.txt": "new\n"})
    (stack.repo / "keep.txt").write_text("a local edit\n")
    await sign_in(page, stack.gateway.page_url, stack.token)
    await page.goto(f"{stack.gateway.page_url}#/session/{session}/change")
    await page.click("#accept-commit")
    await page.fill("#commit-message", "Take the agent's work")
    await page.click("#commit-ok")
    await expect(page.locator(".review-status")).to_contain_text("on main")
    message = git(stack.repo, "log", "-1", "--format=%B")
    assert message.startswith("Take the agent's work\n\nSwitchyard-Session: ")
    assert git(stack.repo, "show", "--name-only", "--format=", "HEAD").splitlines() == ["a.txt", "new.txt"]
    assert git(stack.repo, "status", "--porcelain") == "M keep.txt"


async def test_a_conflict_is_shown_rebased_and_resolved_by_the_agent(page: Page, stack: Stack) -> None:
    session, _ = await scripted_change(stack, {"a.txt": edited(HUNK_1)})
    (stack.repo / "a.txt").write_text(LINES.replace("line 2\n", "line 2 user\n"))
    subprocess.run(["git", "commit", "-qam", "user"], cwd=stack.repo, env=GIT_ENV, check=True)
    await sign_in(page, stack.gateway.page_url, stack.token)
    await page.goto(f"{stack.gateway.page_url}#/session/{session}/change")
    await page.click("#accept-all")
    await page.click("#confirm-ok")
    await expect(page.locator("#conflict-error")).to_contain_text("Applied patch to 'a.txt' with conflicts.")

    await page.click("#rebase")
    await page.click("#confirm-ok")
    await expect(page.locator(".conflict-panel")).to_contain_text("conflict markers in: a.txt")
    resolved = LINES.replace("line 2\n", "line 2 user and agent\n")
    stack.scripted.work = write_in_worktree({"a.txt": resolved})
    await page.click("#resolve-with-agent")
    await expect(page.locator(".review-status")).to_contain_text("asks the agent to resolve a.txt")

    # The agent's turn gives a clean pending change against the new base; it accepts cleanly.
    await expect(page.locator(".review-bar .badge")).to_have_text("pending", timeout=30_000)
    await expect(page.locator(".conflict-panel")).to_have_count(0)
    await page.click("#accept-all")
    await page.click("#confirm-ok")
    await expect(page.locator(".review-bar .badge")).to_have_text("accepted")
    assert (stack.repo / "a.txt").read_text() == resolved


async def test_a_running_turn_shows_its_files_as_it_writes_them(page: Page, stack: Stack) -> None:
    await sign_in(page, stack.gateway.page_url, stack.token)
    prompt = "WRITE first.txt 1 SLEEP 1.2 WRITE second.txt 2 SLEEP 1.2 WRITE third.txt 3 SLEEP 3"
    task = await add_task(stack.pool, stack.project_id, prompt, agent="fake")
    while (session := await stack.pool.fetchval("SELECT session_id FROM tasks WHERE id = $1", task)) is None:
        await page.wait_for_timeout(20)
    await page.goto(f"{stack.gateway.page_url}#/session/{session}")
    live = page.locator(".live")
    await expect(live).to_contain_text("second.txt", timeout=20_000)
    assert await stack.pool.fetchval("SELECT state FROM tasks WHERE id = $1", task) == "running"
    await live.locator(".show-live").click()
    await expect(page.locator(".review-bar strong")).to_have_text(f"Worktree of session #{session}, now")
    await expect(page.locator(".tree-row")).not_to_have_count(0)
    await wait_state(stack.pool, task, "completed")


async def test_any_change_of_the_session_opens_from_its_history(page: Page, stack: Stack) -> None:
    session, first = await scripted_change(stack, {"a.txt": edited(HUNK_1, HUNK_2)})
    await stack.review.comment(first, "Why this line?", path="a.txt", line=2, by="cli:alice")
    second = await finished_turn(stack.review, stack.pool, session, {"a.txt": edited(HUNK_1, HUNK_2, HUNK_3)})
    await sign_in(page, stack.gateway.page_url, stack.token)
    await page.goto(f"{stack.gateway.page_url}#/session/{session}/change")

    history = page.locator("#change-history")
    options = history.locator("option")
    await expect(options).to_have_count(2)
    await expect(options.nth(0)).to_contain_text(f"#{second} · pending")
    await expect(options.nth(1)).to_contain_text(f"#{first} · superseded")
    await expect(options.nth(1)).to_contain_text("1 comment")

    # The superseded change opens for reading: its own diff and comment, nothing to act on.
    await history.select_option(str(first))
    await expect(page.locator(".review-bar strong")).to_have_text(f"Change #{first}")
    await expect(page.locator(".review-bar .badge")).to_have_text("superseded")
    await expect(page.locator(".past-note")).to_have_text(f"Change #{first} is superseded: shown for reading.")
    await expect(page.locator("#accept-all")).to_be_disabled()
    await expect(page.locator(".accept-hunk")).to_have_count(0)
    await expect(page.locator(".comment-list .comment-body")).to_have_text("Why this line?")
    await expect(page.locator("td.d2h-ins:not(.d2h-code-linenumber)")).to_have_count(2)

    # And back to the pending one.
    await page.locator("#change-history").select_option(str(second))
    await expect(page.locator(".review-bar .badge")).to_have_text("pending")
    await expect(page.locator("#accept-all")).to_be_enabled()
    await expect(page.locator(".accept-hunk")).to_have_count(3)


async def test_with_nothing_pending_the_change_tab_lists_the_earlier_changes(page: Page, stack: Stack) -> None:
    session, change = await scripted_change(stack, {"a.txt": edited(HUNK_1, HUNK_2)})
    await stack.review.accept(change, by="cli:alice")
    await sign_in(page, stack.gateway.page_url, stack.token)
    await page.goto(f"{stack.gateway.page_url}#/session/{session}")

    await expect(page.locator("#tab-change")).to_be_enabled()
    await page.locator("#tab-change").click()
    await expect(page.locator("#review")).to_contain_text("No pending change.")
    earlier = page.locator("#change-history-list button")
    await expect(earlier).to_have_count(1)
    await expect(earlier.nth(0)).to_contain_text(f"#{change} · accepted")
    await earlier.nth(0).click()
    await expect(page.locator(".review-bar strong")).to_have_text(f"Change #{change}")
    await expect(page.locator(".review-bar .badge")).to_have_text("accepted")
    await expect(page.locator("#accept-all")).to_be_disabled()
