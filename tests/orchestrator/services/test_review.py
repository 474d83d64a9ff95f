"""The review service: one path for the CLI and the WebSocket gateway, announcing every status change."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from kernel.eventlog import read_events
from orchestrator.services.review import InvalidReviewAction, ReviewService
from testkit import SWITCHYARD
from testkit.repos import GIT_ENV, LINES
from testkit.rows import add_repo_session, finished_turn, start_turn
from worktrees import NoComments, NoConflicts, TurnRunning, WorktreeSettings

pytestmark = pytest.mark.anyio


async def frames(pool: asyncpg.Pool, session: int) -> list[tuple[Any, ...]]:
    events = await read_events(pool, session, 0)
    assert all(e.type == "pending_change" for e in events)
    return [(e.payload["change_id"], e.payload["status"]) for e in events]


async def test_each_status_change_is_a_pending_change_frame(
    pool: asyncpg.Pool, repo: Path, review: ReviewService
) -> None:
    session = await add_repo_session(pool, repo)
    first = await finished_turn(review, pool, session, {"x.txt": "x\n"})
    second = await finished_turn(review, pool, session, {"y.txt": "y\n"})
    done = await review.accept(second, files=["x.txt"], by="alice")
    assert done.remainder is not None
    await review.reject(done.remainder.id, by="alice")

    assert await frames(pool, session) == [
        (first, "pending"),
        (first, "superseded"),
        (second, "pending"),
        (second, "accepted"),
        (done.remainder.id, "pending"),
        (done.remainder.id, "rejected"),
    ]
    [*_, last] = await read_events(pool, session, 0)
    assert last.payload == {
        "change_id": done.remainder.id,
        "task_id": done.remainder.task_id,
        "status": "rejected",
        "base_commit": done.remainder.base_commit,
        "files": [
            {"path": "y.txt", "status": "added", "additions": 1, "deletions": 0, "binary": False, "truncated": False}
        ],
        "truncated": False,
        "supersedes": second,
    }


async def test_list_diff_and_the_review_frame_share_the_service(
    pool: asyncpg.Pool, repo: Path, review: ReviewService
) -> None:
    session = await add_repo_session(pool, repo)
    change = await finished_turn(review, pool, session, {"x.txt": "x\n"})

    [listed] = await review.list_changes(session_id=session, status="pending")
    assert listed.id == change and listed.files[0]["path"] == "x.txt"
    assert "+x\n" in await review.get_diff(change)
    with pytest.raises(InvalidReviewAction, match="accept, reject"):
        await review.review(change, "merge")
    done = await review.review(change, "accept", by="ws:token-1")
    assert done.change.status == "accepted" and done.change.resolved_by == "ws:token-1"
    assert (repo / "x.txt").read_text() == "x\n"


async def test_a_refused_review_announces_nothing(pool: asyncpg.Pool, repo: Path, review: ReviewService) -> None:
    session = await add_repo_session(pool, repo)
    change = await finished_turn(review, pool, session, {"x.txt": "x\n"})
    async with pool.acquire() as conn:
        await start_turn(conn, session)
    with pytest.raises(TurnRunning):
        await review.reject(change)
    assert await frames(pool, session) == [(change, "pending")]


def switchyard(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD")}
    return subprocess.run(
        [*SWITCHYARD, "--config", str(config), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_cli_review_commands(
    pool: asyncpg.Pool, db_url: str, repo: Path, worktree_settings: WorktreeSettings, tmp_path: Path
) -> None:
    config = tmp_path / "switchyard.toml"
    config.write_text(f'[database]\nurl = "{db_url}"\n[worktrees]\nroot = "{worktree_settings.root}"\n')
    review = ReviewService(pool, worktree_settings)
    session = await add_repo_session(pool, repo)
    change = await finished_turn(review, pool, session, {"x.txt": "x\n", "a.txt": "agent\n"})

    listed = await anyio.to_thread.run_sync(switchyard, config, "changes", "--json")
    assert [c["change_id"] for c in json.loads(listed.stdout)] == [change]
    shown = await anyio.to_thread.run_sync(switchyard, config, "diff", str(change))
    assert "+x\n" in shown.stdout and "+agent\n" in shown.stdout

    (repo / "a.txt").write_text("developer\n")
    conflict = await anyio.to_thread.run_sync(switchyard, config, "accept", str(change))
    assert conflict.returncode == 1 and "conflict, the project was not changed" in conflict.stderr
    partial = await anyio.to_thread.run_sync(switchyard, config, "accept", str(change), "--file", "x.txt")
    assert partial.returncode == 0, partial.stderr
    assert f"change {change} accepted: x.txt" in partial.stdout
    assert (repo / "x.txt").read_text() == "x\n" and (repo / "a.txt").read_text() == "developer\n"

    again = await anyio.to_thread.run_sync(switchyard, config, "accept", str(change))
    assert again.returncode == 1
    assert again.stderr.strip() == f"switchyard: error: change {change} is accepted, not pending"


CODE = "".join(f"code {i}\n" for i in range(1, 11))


async def test_request_changes_quotes_each_comment_into_the_sessions_next_task(
    pool: asyncpg.Pool, repo: Path, review: ReviewService
) -> None:
    session = await add_repo_session(pool, repo)
    change = await finished_turn(review, pool, session, {"a.py": CODE})
    with pytest.raises(NoComments):
        await review.request_changes(change, by="token:ide")
    on_line = await review.comment(change, "Call it total", path="a.py", line=3, by="token:ide")
    whole = await review.comment(change, "And add a test", by="token:ide")

    queued = await review.request_changes(change, message="Thanks!", by="token:ide")
    assert queued.comment_ids == (on_line.id, whole.id) and queued.submitted.created
    task = await pool.fetchrow("SELECT * FROM tasks WHERE id = $1", queued.submitted.task_id)
    made_by = await pool.fetchval("SELECT task_id FROM pending_changes WHERE id = $1", change)
    assert task["session_id"] == session and task["state"] == "pending" and task["agent"] is None
    assert task["review_change_id"] == change and task["parent_task_id"] == made_by
    text = task["input"]
    assert "1. a.py, line 3 (new side):" in text
    assert "   > 3 | code 3\n" in text and "     2 | code 2\n" in text and "     5 | code 5\n" in text
    assert "token:ide wrote:\n   Call it total\n" in text
    assert "2. On the change as a whole:" in text and "And add a test" in text and "Thanks!" in text
    assert [(c.state, c.task_id) for c in await review.comments(change)] == [("sent", task["id"])] * 2
    with pytest.raises(NoComments):
        await review.request_changes(change, by="token:ide")

    events = [(e.type, e.payload) for e in await read_events(pool, session, 0)]
    kinds = [t for t, _ in events]
    assert kinds == ["pending_change", "review_comment", "review_comment", "changes_requested"]
    assert events[1][1]["comment_id"] == on_line.id and events[1][1]["line"] == 3
    assert events[3][1] == {"change_id": change, "task_id": task["id"], "comment_ids": [on_line.id, whole.id]}


async def test_interdiff_shows_only_what_changed_since_an_earlier_change(
    pool: asyncpg.Pool, repo: Path, review: ReviewService
) -> None:
    session = await add_repo_session(pool, repo)
    first = await finished_turn(review, pool, session, {"a.py": CODE, "b.py": "b\n"})
    second = await finished_turn(review, pool, session, {"a.py": CODE.replace("code 3\n", "code three\n")})
    info = await review.diff_info(second, since=first)
    assert info["since_change_id"] == first
    assert [f["path"] for f in info["diff_files"]] == ["a.py"]
    assert "-code 3\n+code three\n" in info["diff"] and "b.py" not in info["diff"]
    assert [h["id"] for h in info["diff_files"][0]["hunks"]] == [1]
    # The change itself still has everything.
    own = await review.diff_info(second)
    assert sorted(f["path"] for f in own["diff_files"]) == ["a.py", "b.py"] and own["since_change_id"] is None
    assert await review.get_diff(second, since=first) == info["diff"]
    assert (await review.get_change(second)).supersedes == first
    assert [c.id for c in await review.list_changes(session_id=session)] == [second, first]


async def test_the_live_diff_is_the_worktree_now(pool: asyncpg.Pool, repo: Path, review: ReviewService) -> None:
    session = await add_repo_session(pool, repo)
    await finished_turn(review, pool, session, {"a.py": CODE})
    worktree = (await review.worktrees.ensure(session)).path
    (worktree / "later.py").write_text("not recorded yet\n")
    live = await review.live_diff_info(session)
    assert live["live"] is True and sorted(f["path"] for f in live["diff_files"]) == ["a.py", "later.py"]
    assert "+not recorded yet\n" in live["diff"]
    # Nothing was recorded.
    assert next(c.files for c in await review.list_changes(session_id=session))[0]["path"] == "a.py"
    assert len(await review.list_changes(session_id=session)) == 1


async def test_resolve_with_agent_asks_once_for_the_files_a_rebase_left_conflicted(
    pool: asyncpg.Pool, repo: Path, review: ReviewService
) -> None:
    session = await add_repo_session(pool, repo)
    change = await finished_turn(review, pool, session, {"a.txt": "agent\n"})
    with pytest.raises(NoConflicts):
        await review.resolve_with_agent(change, by="cli:bob")
    (repo / "a.txt").write_text("user\n")
    subprocess.run(["git", "commit", "-qam", "user"], cwd=repo, env=GIT_ENV, check=True)
    rebased = (await review.rebase(change)).remainder
    assert rebased is not None and rebased.conflicts == ("a.txt",)

    asked = await review.resolve_with_agent(rebased.id, message="Keep the user's wording", by="cli:bob")
    task = await pool.fetchrow("SELECT * FROM tasks WHERE id = $1", asked.submitted.task_id)
    assert task["review_change_id"] == rebased.id and task["session_id"] == session
    assert "- a.txt\n" in task["input"] and "Keep the user's wording" in task["input"]
    again = await review.resolve_with_agent(rebased.id, by="cli:bob")
    assert again.submitted.task_id == task["id"] and not again.submitted.created


async def test_the_cli_review_loop_commands(
    pool: asyncpg.Pool, db_url: str, repo: Path, worktree_settings: WorktreeSettings, tmp_path: Path
) -> None:
    config = tmp_path / "switchyard.toml"
    config.write_text(
        f'[database]\nurl = "{db_url}"\n[worktrees]\nroot = "{worktree_settings.root}"\n'
        'commit_name = "CLI Reviewer"\ncommit_email = "cli@example.test"\n'
    )

    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return await anyio.to_thread.run_sync(switchyard, config, *args)

    review = ReviewService(pool, worktree_settings)
    session = await add_repo_session(pool, repo)
    three = LINES.replace("line 1\n", "line one\n").replace("line 20\n", "line twenty\n")
    first = await finished_turn(review, pool, session, {"a.txt": three, "b.py": "b\n"})

    commented = await cli("comment", str(first), "Rename it", "--file", "a.txt", "--line", "1", "--by", "cli:ann")
    assert commented.returncode == 0, commented.stderr
    assert "on a.txt:1 (new) of change" in commented.stdout
    listed = json.loads((await cli("comments", str(first), "--json")).stdout)
    assert [(c["where"], c["body"], c["author"]) for c in listed] == [("a.txt:1", "Rename it", "cli:ann")]
    asked = await cli("request-changes", str(first), "-m", "Please")
    assert asked.returncode == 0 and "with 1 comment(s)" in asked.stdout
    task = int(asked.stdout.split()[1])
    assert "Rename it" in await pool.fetchval("SELECT input FROM tasks WHERE id = $1", task)
    await pool.execute("UPDATE tasks SET state = 'cancelled', ended_at = now() WHERE id = $1", task)

    second = await finished_turn(review, pool, session, {"a.txt": three.replace("line 10\n", "line ten\n")})
    since = await cli("diff", str(second), "--since", str(first))
    assert "+line ten\n" in since.stdout and "+line one" not in since.stdout and "b.py" not in since.stdout
    hunks = (await cli("diff", str(second), "--hunks")).stdout.splitlines()
    assert [line.split("\t")[0] for line in hunks] == ["a.txt:1", "a.txt:2", "a.txt:3", "b.py:1"]
    assert (await cli("diff")).returncode == 1

    changes = (await cli("changes", "--json")).stdout
    assert [c["change_id"] for c in json.loads(changes)] == [second]
    every = json.loads((await cli("changes", "--status", "all", "--session", str(session), "--json")).stdout)
    assert [(c["change_id"], c["status"]) for c in every] == [(second, "pending"), (first, "superseded")]

    hunk = await cli("accept", str(second), "--hunk", "a.txt:1", "--mode", "commit", "-m", "Take hunk one")
    assert hunk.returncode == 0, hunk.stderr
    assert "committed as" in hunk.stdout and "the rest stays pending as change" in hunk.stdout
    log = subprocess.run(["git", "log", "-1", "--format=%an|%B"], cwd=repo, capture_output=True, text=True).stdout
    assert log.startswith("CLI Reviewer|Take hunk one\n\nSwitchyard-Session: ")
    assert (repo / "a.txt").read_text() == LINES.replace("line 1\n", "line one\n")
    bad = await cli("accept", str(second + 1), "--hunk", "a.txt")
    assert bad.returncode == 1 and "--hunk takes PATH:N" in bad.stderr

    rest = second + 1
    (repo / "a.txt").write_text("user\n")
    subprocess.run(["git", "commit", "-qam", "user"], cwd=repo, env=GIT_ENV, check=True)
    rebased = await cli("rebase", str(rest))
    assert rebased.returncode == 0 and "with conflicts in: a.txt" in rebased.stdout, rebased.stderr
    new = int(rebased.stdout.split("rebased as change ")[1].split(",")[0])
    resolve = await cli("resolve-with-agent", str(new))
    assert resolve.returncode == 0 and "asks the agent to resolve: a.txt" in resolve.stdout
