"""The review loop end to end: a real dispatcher runs the fake ACP agent (a real process) in real
worktrees of a real repository; the reviewer works over a real WebSocket and the review service.

Comments become the agent's next turn, the interdiff shows only that turn, a conflict is rebased
and handed back to the agent, and a long turn shows its progress as ``worktree_changed`` frames.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import quote

import asyncpg
import pytest

from backends.acp import AcpBackend
from backends.permissions import PermissionPolicy
from backends.registry import AgentSpec
from orchestrator.dispatch.routing import Router
from orchestrator.services.gateway_actions import OrchestratorActions
from orchestrator.services.review import ReviewService
from testkit import fake_acp_agent_command
from testkit.clients import open_client, recv, request
from testkit.repos import git
from testkit.rows import add_project, add_task
from tests.dispatching import events, running_dispatcher, wait_state
from tests.leftovers import no_leftovers
from tests.ws_gateway.conftest import running_gateway
from worktrees import WorktreeSettings
from ws_gateway import Gateway, create_token

pytestmark = pytest.mark.anyio

FAKE = AgentSpec("fake", "acp", tuple(fake_acp_agent_command()))
CODE = "".join(f"value_{i} = {i}\n" for i in range(1, 11))
INTERVAL = 0.5


def write(path: str, text: str) -> str:
    """The fake agent's keyword that writes ``text`` (any characters) to ``path``."""
    return f"WRITE_TEXT {path} {quote(text, safe='')}"


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    with no_leftovers():
        yield


@dataclass
class Loop:
    pool: asyncpg.Pool
    repo: Path
    project: int
    review: ReviewService
    gateway: Gateway
    token: str

    async def turn(self, prompt: str, session: int | None = None) -> int:
        """A task for the fake agent, run to completion; its session."""
        task = await add_task(self.pool, self.project, prompt, agent="fake", session_id=session)
        row = await wait_state(self.pool, task, "completed", "failed")
        assert row["state"] == "completed", row["error"]
        return int(row["session_id"])

    async def pending(self, session: int) -> int:
        change: int = await self.pool.fetchval(
            "SELECT id FROM pending_changes WHERE session_id = $1 AND status IN ('pending', 'conflict')"
            " ORDER BY id DESC LIMIT 1",
            session,
        )
        return change


@pytest.fixture
async def loop(db_url: str, pool: asyncpg.Pool, tmp_path: Path) -> AsyncIterator[Loop]:
    repo = tmp_path / "project"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "a.py").write_text(CODE)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "initial")
    project = await add_project(pool, "loop", repo)
    review = ReviewService(pool, WorktreeSettings(root=tmp_path / "worktrees", live_diff_interval=INTERVAL))
    router = Router(agents={"fake": partial(AcpBackend, FAKE, PermissionPolicy())})
    async with (
        running_gateway(pool, db_url, actions=OrchestratorActions(pool, review)) as gateway,
        running_dispatcher(db_url, router, worktrees=review.worktrees),
    ):
        yield Loop(pool, repo, project, review, gateway, await create_token(pool, "reviewer", [project]))


async def test_a_line_comment_becomes_the_next_turn_and_the_interdiff_shows_only_it(loop: Loop) -> None:
    first_text = CODE.replace("value_3 = 3\n", "value_3 = 'three'\n")
    session = await loop.turn(write("a.py", first_text))
    first = await loop.pending(session)

    answer = "header = True\n" + first_text
    async with open_client(loop.gateway.url, loop.token) as ws:
        await recv(ws)
        comment = await request(
            ws,
            {"type": "comment", "id": 1, "change_id": first, "path": "a.py", "line": 3,
             "body": f"Add a header line above. {write('a.py', answer)}"},
        )  # fmt: skip
        assert comment["type"] == "ack", comment
        asked = await request(ws, {"type": "request_changes", "id": 2, "change_id": first})
        assert asked["type"] == "ack", asked

        task = await loop.pool.fetchrow("SELECT * FROM tasks WHERE id = $1", asked["task_id"])
        assert task["session_id"] == session and task["review_change_id"] == first and task["agent"] == "fake"
        assert "a.py, line 3 (new side):" in task["input"] and "Add a header line above." in task["input"]
        assert "> 3 | value_3 = 'three'" in task["input"]

        # The agent's turn answers it and supersedes the change.
        await wait_state(loop.pool, task["id"], "completed")
        second = await loop.pending(session)
        assert second != first
        assert await loop.pool.fetchval("SELECT status FROM pending_changes WHERE id = $1", first) == "superseded"
        assert (await loop.review.get_change(second)).supersedes == first

        since = await request(ws, {"type": "get_diff", "id": 3, "change_id": second, "since_change_id": first})
        assert [f["path"] for f in since["diff_files"]] == ["a.py"]
        changed = [line for line in since["diff"].splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
        assert changed == ["+header = True"]
        [carried] = since["comments"]
        assert carried["outdated"] is True and (carried["line"], carried["current_line"]) == (3, 4)
        assert carried["state"] == "sent" and carried["task_id"] == task["id"]
    assert (await loop.review.worktrees.ensure(session)).path.joinpath("a.py").read_text() == answer


async def test_a_conflict_is_rebased_and_resolved_by_the_agent_into_a_change_that_accepts_cleanly(loop: Loop) -> None:
    session = await loop.turn(write("a.py", CODE.replace("value_2 = 2\n", "value_2 = 'agent'\n")))
    change = await loop.pending(session)
    # The user edits the same line in the checkout (and commits it).
    (loop.repo / "a.py").write_text(CODE.replace("value_2 = 2\n", "value_2 = 'user'\n"))
    git(loop.repo, "commit", "-qam", "user edit")
    head = git(loop.repo, "rev-parse", "HEAD")

    conflict = await loop.review.accept(change)
    assert conflict.change.status == "conflict" and "a.py" in (conflict.change.error or "")
    rebased = await loop.review.rebase(change, by="cli:reviewer")
    assert rebased.remainder is not None and rebased.remainder.conflicts == ("a.py",)
    worktree = (await loop.review.worktrees.ensure(session)).path
    assert "<<<<<<< " in (worktree / "a.py").read_text()

    resolved = CODE.replace("value_2 = 2\n", "value_2 = 'user and agent'\n")
    asked = await loop.review.resolve_with_agent(rebased.remainder.id, message=write("a.py", resolved), by="cli:r")
    assert "- a.py" in asked.input
    await wait_state(loop.pool, asked.submitted.task_id, "completed")
    final = await loop.review.get_change(await loop.pending(session))
    assert final.status == "pending" and final.conflicts == () and final.base_commit == head
    assert final.supersedes == rebased.remainder.id

    done = await loop.review.accept(final.id)
    assert done.change.status == "accepted" and done.remainder is None
    assert (loop.repo / "a.py").read_text() == resolved
    assert git(loop.repo, "status", "--porcelain") == "M a.py"


async def test_a_long_turn_shows_its_files_as_it_writes_them(loop: Loop) -> None:
    steps = " ".join(f"WRITE f{i}.txt {i} SLEEP 0.2" for i in range(1, 9))
    task = await add_task(loop.pool, loop.project, f"{steps} SLEEP 1", agent="fake")
    row = await wait_state(loop.pool, task, "completed")
    frames = await events(loop.pool, row["session_id"])
    kinds = [kind for kind, _ in frames]
    live = [payload for kind, payload in frames if kind == "worktree_changed"]
    assert len(live) >= 2
    # Never after the reply: every worktree_changed comes before message_complete.
    assert max(i for i, k in enumerate(kinds) if k == "worktree_changed") < kinds.index("message_complete")
    # Throttled: eight writes, at most one frame per interval of the turn, each one different.
    duration = (row["ended_at"] - row["started_at"]).total_seconds()
    assert len(live) <= duration / INTERVAL + 1
    assert all(a != b for a, b in itertools.pairwise(live))
    counts = [p["total_files"] for p in live]
    assert counts == sorted(counts) and counts[-1] == 8 and all(p["task_id"] == task for p in live)
    assert live[-1]["files"][0] == {
        "path": "f1.txt",
        "status": "added",
        "additions": 1,
        "deletions": 0,
        "binary": False,
    }
