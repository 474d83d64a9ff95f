"""Accept as a commit (on the checkout's branch) and onto a branch, against real repositories."""

from __future__ import annotations

import subprocess
from pathlib import Path

import asyncpg
import pytest

from orchestrator.services import ReviewService
from testkit.repos import GIT_ENV, LINES, checkout_files, git
from testkit.rows import add_repo_session, finished_turn
from worktrees import BadBranch, CheckoutBusy, WorktreeSettings

pytestmark = pytest.mark.anyio

AGENT_A = LINES.replace("line 2\n", "line 2 agent\n")


@pytest.fixture
def settings(tmp_path: Path) -> WorktreeSettings:
    return WorktreeSettings(root=tmp_path / "worktrees", commit_name="Review Bot", commit_email="bot@example.test")


def head(repo: Path) -> str:
    return git(repo, "rev-parse", "HEAD")


async def test_commit_mode_makes_one_commit_with_trailers_and_leaves_other_local_edits(
    pool: asyncpg.Pool, repo: Path, settings: WorktreeSettings
) -> None:
    review = ReviewService(pool, settings)
    session = await add_repo_session(pool, repo)
    change = await finished_turn(review, pool, session, {"a.txt": AGENT_A, "new.txt": "new\n"})
    (repo / "keep.txt").write_text("my local edit\n")  # uncommitted, in another file
    before = head(repo)

    done = await review.accept(change, mode="commit", message="Apply the agent's fix", by="alice")
    assert done.change.status == "accepted" and done.change.accepted_branch == "main"
    commit = done.change.accepted_commit
    assert commit == head(repo) and git(repo, "rev-parse", "HEAD^") == before
    assert git(repo, "show", "-s", "--format=%an <%ae>|%cn", commit) == "Review Bot <bot@example.test>|Review Bot"
    message = git(repo, "show", "-s", "--format=%B", commit)
    assert message == f"Apply the agent's fix\n\nSwitchyard-Session: {session}\nSwitchyard-Change: {change}"
    assert git(repo, "show", "--name-status", "--format=", commit).splitlines() == ["M\ta.txt", "A\tnew.txt"]
    # The working tree holds the commit, and the local edit is still only a local edit.
    assert (repo / "a.txt").read_text() == AGENT_A and (repo / "new.txt").read_text() == "new\n"
    assert git(repo, "status", "--porcelain") == "M keep.txt"
    assert (repo / "keep.txt").read_text() == "my local edit\n"

    # The session's base moved on: its next change shows only new work.
    worktree = (await review.worktrees.ensure(session)).path
    assert git(worktree, "rev-parse", "HEAD") != before


async def test_commit_mode_without_a_message_names_session_and_task_and_merges_onto_a_moved_branch(
    pool: asyncpg.Pool, repo: Path, settings: WorktreeSettings
) -> None:
    review = ReviewService(pool, settings)
    session = await add_repo_session(pool, repo)
    change = await finished_turn(review, pool, session, {"a.txt": AGENT_A})
    task = (await review.get_change(change)).task_id
    # Meanwhile the user committed an edit of the same file, further down, and has an
    # uncommitted one in it too.
    (repo / "a.txt").write_text(LINES.replace("line 15\n", "line 15 user\n"))
    git(repo, "commit", "-qam", "user work")
    user_commit = head(repo)
    (repo / "a.txt").write_text(LINES.replace("line 15\n", "line 15 user\n").replace("line 20\n", "line 20 wip\n"))

    done = await review.accept(change, mode="commit")
    commit = done.change.accepted_commit
    assert commit == head(repo) and git(repo, "rev-parse", "HEAD^") == user_commit
    subject = git(repo, "show", "-s", "--format=%s", commit)
    assert subject == f"Switchyard session {session}, task {task}: turn"
    committed = git(repo, "show", f"{commit}:a.txt") + "\n"
    assert committed == LINES.replace("line 2\n", "line 2 agent\n").replace("line 15\n", "line 15 user\n")
    assert (repo / "a.txt").read_text() == committed.replace("line 20\n", "line 20 wip\n")
    local = git(repo, "diff", "--", "a.txt").splitlines()
    assert [line for line in local if line[:1] in "+-" and line[:3] not in ("+++", "---")] == [
        "-line 20",
        "+line 20 wip",
    ]


def diverge(repo: Path) -> None:
    """Branches topic and main that edit keep.txt differently; main checked out."""
    git(repo, "checkout", "-qb", "topic")
    (repo / "keep.txt").write_text("topic\n")
    git(repo, "commit", "-qam", "topic")
    git(repo, "checkout", "-q", "main")
    (repo / "keep.txt").write_text("main\n")
    git(repo, "commit", "-qam", "main")


def stopped_by_a_conflict(repo: Path, *args: str) -> None:
    result = subprocess.run(["git", *args], cwd=repo, env=GIT_ENV, capture_output=True, check=False)
    assert result.returncode != 0, result.stdout


def start_conflicting_rebase(repo: Path) -> None:
    diverge(repo)
    git(repo, "checkout", "-q", "topic")
    stopped_by_a_conflict(repo, "rebase", "main")
    assert (repo / ".git" / "rebase-merge").is_dir()


def start_conflicting_merge(repo: Path) -> None:
    diverge(repo)
    stopped_by_a_conflict(repo, "merge", "topic")
    assert (repo / ".git" / "MERGE_HEAD").is_file()


def start_conflicting_cherry_pick(repo: Path) -> None:
    diverge(repo)
    stopped_by_a_conflict(repo, "cherry-pick", "topic")
    assert (repo / ".git" / "CHERRY_PICK_HEAD").is_file()


def stage_an_edit(repo: Path) -> None:
    (repo / "keep.txt").write_text("staged\n")
    git(repo, "add", "keep.txt")


def detach(repo: Path) -> None:
    git(repo, "checkout", "-q", "--detach")


@pytest.mark.parametrize(
    ("prepare", "reason"),
    [
        (start_conflicting_rebase, "has a rebase in progress"),
        (start_conflicting_merge, "has a merge in progress"),
        (start_conflicting_cherry_pick, "has a cherry-pick in progress"),
        (stage_an_edit, "has staged changes of its own"),
        (detach, "detached HEAD"),
    ],
)
async def test_commit_mode_is_refused_and_the_checkout_is_unchanged(
    pool: asyncpg.Pool, repo: Path, settings: WorktreeSettings, prepare: object, reason: str
) -> None:
    review = ReviewService(pool, settings)
    session = await add_repo_session(pool, repo)
    change = await finished_turn(review, pool, session, {"a.txt": AGENT_A})
    assert callable(prepare)
    prepare(repo)
    before, refs = checkout_files(repo), git(repo, "for-each-ref")
    with pytest.raises(CheckoutBusy, match=reason):
        await review.accept(change, mode="commit", message="x")
    assert checkout_files(repo) == before and git(repo, "for-each-ref") == refs
    assert (await review.get_change(change)).status == "pending"


async def test_branch_mode_commits_onto_a_branch_without_touching_the_checkout(
    pool: asyncpg.Pool, repo: Path, settings: WorktreeSettings
) -> None:
    review = ReviewService(pool, settings)
    session = await add_repo_session(pool, repo)
    first = await finished_turn(review, pool, session, {"a.txt": AGENT_A})
    (repo / "keep.txt").write_text("local\n")
    before, main = checkout_files(repo), head(repo)

    done = await review.accept(first, mode="branch", branch="review/agent-fix", message="First")
    commit = done.change.accepted_commit
    assert git(repo, "rev-parse", "review/agent-fix") == commit and git(repo, "rev-parse", f"{commit}^") == main
    assert checkout_files(repo) == before and head(repo) == main
    assert git(repo, "symbolic-ref", "HEAD") == "refs/heads/main"

    # The next change goes on top of the branch's tip.
    second = await finished_turn(review, pool, session, {"new.txt": "more\n"})
    again = await review.accept(second, mode="branch", branch="review/agent-fix", message="Second")
    assert git(repo, "rev-parse", f"{again.change.accepted_commit}^") == commit
    assert git(repo, "show", "review/agent-fix:new.txt") == "more"
    assert checkout_files(repo) == before

    third = await finished_turn(review, pool, session, {"other.txt": "o\n"})
    for name, reason in (("main", "checked out"), ("switchyard/9", "sessions' own"), ("bad..name", "not a valid")):
        with pytest.raises(BadBranch, match=reason):
            await review.accept(third, mode="branch", branch=name, message="x")
    assert (await review.get_change(third)).status == "pending" and checkout_files(repo) == before
