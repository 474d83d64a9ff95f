"""The review page in Chromium: first diff lines of a big change, and a live turn on a long session.

A private PostgreSQL cluster, a real git repository, a gateway in this process and Debian's
Chromium driven by Playwright. Two measurements, printed as JSON:

- ``first_diff``: a pending change of FILES files x LINES lines (a real worktree diff, recorded
  by the worktree manager). Time from navigation to ``#/session/S/change`` until the page's
  ``switchyard:first-diff-lines`` mark (set in the frame after the first file's lines are in
  the DOM), over several fresh page loads; and how many files the page had rendered by then.
  Target: <= 1,000 ms.
- ``streaming``: a session with EARLIER stored frames, replayed into the page, then DELTAS_PER_S
  deltas per second appended for SECONDS. The page's long-task observer (tasks over 50 ms) and
  its animation frames during the stream. Target: no long task.

    .venv/bin/python bench/web.py [--files 1000] [--lines 50] [--earlier 10000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import asyncpg
from playwright.async_api import Browser, Page, async_playwright

from kernel.db import create_pool
from kernel.eventlog import SessionFrame, append_events
from orchestrator.db import migrate_url
from orchestrator.services.gateway_actions import OrchestratorActions
from orchestrator.services.review import ReviewService
from testkit.browser import CHROMIUM, CHROMIUM_ARGS
from testkit.cluster import temporary_cluster
from worktrees import WorktreeSettings
from ws_gateway import Gateway, GatewaySettings, create_token

FIRST_DIFF_RUNS = 5
MARK = "switchyard:first-diff-lines"
STEPS = """Object.fromEntries(['domContentLoadedEventEnd']
  .map((k) => [k, performance.getEntriesByType('navigation')[0][k]])
  .concat(['hello', 'diff-requested', 'diff-received', 'diff-built', 'first-diff-lines']
  .map((k) => [k, performance.getEntriesByName('switchyard:' + k)[0]?.startTime])))"""
INSERT_PROJECT = "INSERT INTO projects (name, repo_path) VALUES ('bench', $1) RETURNING id"
INSERT_SESSION = "INSERT INTO sessions (project_id, title) VALUES ($1, $2) RETURNING id"
# Installed before the page's own scripts: long tasks and animation frames from the start.
OBSERVE = """
window.benchLongTasks = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.benchLongTasks.push({start: e.startTime, duration: e.duration});
}).observe({type: 'longtask', buffered: true});
window.benchFrames = [];
const frame = (t) => { window.benchFrames.push(t); requestAnimationFrame(frame); };
requestAnimationFrame(frame);
"""


def git(repo: Path, *args: str) -> None:
    identity = ["-c", "user.name=Bench", "-c", "user.email=bench@example.invalid"]
    subprocess.run(["git", "-C", str(repo), *identity, *args], check=True, capture_output=True)


def many_files_repo(root: Path, files: int, lines: int) -> Path:
    repo = root / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    for i in range(files):
        path = repo / f"src/pkg{i % 20}/module_{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"value_{j} = {j}  # original line\n" for j in range(lines)))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "init")
    return repo


async def big_change(pool: asyncpg.Pool, review: ReviewService, repo: Path, files: int, lines: int) -> int:
    project = await pool.fetchval("INSERT INTO projects (name, repo_path) VALUES ('bench', $1) RETURNING id", str(repo))
    session = await pool.fetchval(
        "INSERT INTO sessions (project_id, title) VALUES ($1, 'big change') RETURNING id", project
    )
    worktree = await review.worktrees.ensure(session)

    def rewrite() -> None:
        for i in range(files):
            path = worktree.path / f"src/pkg{i % 20}/module_{i}.py"
            path.write_text("".join(f"value_{j} = {j * 2}  # changed line\n" for j in range(lines)))

    await anyio.to_thread.run_sync(rewrite)
    change = await review.worktrees.record_turn(session, task_id=None, agent="bench")
    assert change is not None
    return int(session)


async def long_session(pool: asyncpg.Pool, project: int, earlier: int) -> int:
    session = await pool.fetchval(INSERT_SESSION, project, "long")
    events: list[tuple[SessionFrame, dict[str, Any]]] = []
    message = 0
    while len(events) < earlier:
        message += 1
        events.append((SessionFrame.MESSAGE_STARTED, {"message_id": message, "task_id": message, "role": "assistant"}))
        for k in range(96):
            events.append((SessionFrame.DELTA, {"message_id": message, "text": f"word{k} " * 3}))
        events.append(
            (SessionFrame.TOOL_CALL, {"message_id": message, "tool_call_id": "t", "name": "read", "kind": "read",
                           "status": "completed", "input": {"path": "a.py"}, "output": "x" * 200, "locations": []})
        )  # fmt: skip
        end = {"message_id": message, "task_id": message, "status": "complete", "stop_reason": "end_turn"}
        events.append((SessionFrame.MESSAGE_COMPLETE, {**end, "prompt_tokens": 1, "completion_tokens": 1}))
    for start in range(0, earlier, 1000):
        await append_events(pool, session, events[start : min(start + 1000, earlier)])
    return int(session)


async def wait_true(page: Page, expression: str, limit_s: float) -> None:
    """Poll an expression (wait_for_function would eval inside the page, which its CSP forbids)."""
    with anyio.fail_after(limit_s):
        while not await page.evaluate(expression):  # noqa: ASYNC110 - the page is polled, nothing to wait on
            await anyio.sleep(0.02)


async def open_page(browser: Browser, url: str, token: str) -> Page:
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    await context.add_init_script(f"sessionStorage.setItem('switchyard.token', {json.dumps(token)});\n{OBSERVE}")
    page = await context.new_page()
    await page.goto(url)
    return page


async def first_diff(browser: Browser, base: str, token: str, session: int) -> dict[str, Any]:
    times: list[float] = []
    rendered: list[int] = []
    steps: list[dict[str, float]] = []
    for _ in range(FIRST_DIFF_RUNS):
        page = await open_page(browser, f"{base}#/session/{session}/change", token)
        await wait_true(page, f"performance.getEntriesByName('{MARK}').length > 0", 60)
        times.append(await page.evaluate(f"performance.getEntriesByName('{MARK}')[0].startTime"))
        steps.append(await page.evaluate(STEPS))
        rendered.append(await page.locator(".d2h-file-wrapper").count())
        await page.context.close()
    return {
        "runs": len(times),
        "p50_ms": round(statistics.median(times), 1),
        "max_ms": round(max(times), 1),
        "files_rendered_at_first_paint": max(rendered),
        # Median time of each step since navigation: the page's marks.
        "steps_ms": {key: round(statistics.median(s[key] for s in steps), 1) for key in steps[0]},
        "target_ms": 1000,
    }


async def streaming(
    browser: Browser, base: str, token: str, pool: asyncpg.Pool, session: int, rate: int, seconds: float
) -> dict[str, Any]:
    page = await open_page(browser, f"{base}#/session/{session}", token)
    earlier = await pool.fetchval("SELECT last_seq FROM sessions WHERE id = $1", session)
    started = time.perf_counter()
    await wait_true(page, f"window.switchyardPage.session()?.lastSeq === {earlier}", 120)
    replay_s = time.perf_counter() - started
    await page.wait_for_timeout(500)
    window_start = await page.evaluate("performance.now()")
    replay_long = await page.evaluate("window.benchLongTasks.length")
    message = 10**6
    await append_events(
        pool, session, [(SessionFrame.MESSAGE_STARTED, {"message_id": message, "task_id": 1, "role": "assistant"})]
    )
    interval = 1 / rate
    sent = 0
    t0 = time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        due = int(elapsed / interval) + 1
        if due > sent:
            batch: list[tuple[SessionFrame, dict[str, Any]]] = [
                (SessionFrame.DELTA, {"message_id": message, "text": f"token{i} "}) for i in range(sent, due)
            ]
            await append_events(pool, session, batch)
            sent = due
        await anyio.sleep(interval / 2)
    actual_rate = sent / (time.perf_counter() - t0)
    last = await pool.fetchval("SELECT last_seq FROM sessions WHERE id = $1", session)
    await wait_true(page, f"window.switchyardPage.session()?.lastSeq === {last}", 60)
    window_end = await page.evaluate("performance.now()")
    tasks = await page.evaluate(f"window.benchLongTasks.filter((t) => t.start >= {window_start})")
    frames = await page.evaluate(f"window.benchFrames.filter((t) => t >= {window_start} && t <= {window_end})")
    gaps = [b - a for a, b in itertools.pairwise(frames)]
    text_ok = await page.evaluate(f"window.switchyardPage.messageText({message})") == "".join(
        f"token{i} " for i in range(sent)
    )
    state = await page.evaluate("window.switchyardPage.session()")
    mounted = await page.locator("#conversation .vl-item").count()
    await page.context.close()
    return {
        "earlier_frames": earlier,
        "replay_s": round(replay_s, 2),
        "long_tasks_during_replay": replay_long,
        "deltas": sent,
        "deltas_per_s": round(actual_rate, 1),
        "long_tasks": len(tasks),
        "longest_task_ms": round(max((t["duration"] for t in tasks), default=0), 1),
        "fps": round(len(frames) / ((window_end - window_start) / 1000), 1),
        "max_frame_gap_ms": round(max(gaps, default=0), 1),
        "items_in_dom": mounted,
        "every_frame_once": state["seqs"] == list(range(1, last + 1)) and state["duplicates"] == 0,
        "text_complete": text_ok,
        "target": "no task longer than 50 ms",
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with temporary_cluster() as cluster, tempfile.TemporaryDirectory(prefix="switchyard-bench-web-") as tmp:
        url = cluster.url("postgres")
        await migrate_url(url)
        pool = await create_pool(url, 10)
        try:
            repo = await anyio.to_thread.run_sync(many_files_repo, Path(tmp), args.files, args.lines)
            review = ReviewService(pool, WorktreeSettings(root=Path(tmp) / "worktrees"))
            big = await big_change(pool, review, repo, args.files, args.lines)
            project = await pool.fetchval("SELECT project_id FROM sessions WHERE id = $1", big)
            long = await long_session(pool, project, args.earlier)
            token = await create_token(pool, "bench")
            gateway = Gateway(GatewaySettings(port=0), pool, OrchestratorActions(pool, review), url)
            async with anyio.create_task_group() as tg, async_playwright() as playwright:
                await tg.start(gateway.serve)
                browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    result = {
                        "files": args.files,
                        "lines_changed": args.files * args.lines * 2,
                        "first_diff": await first_diff(browser, gateway.page_url, token, big),
                        "streaming": await streaming(
                            browser, gateway.page_url, token, pool, long, args.rate, args.seconds
                        ),
                    }
                finally:
                    await browser.close()
                tg.cancel_scope.cancel()
        finally:
            await pool.close()
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--lines", type=int, default=50)
    parser.add_argument("--earlier", type=int, default=10_000)
    parser.add_argument("--rate", type=int, default=200, help="deltas per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    print(json.dumps(anyio.run(main, parser.parse_args()), indent=2))
