"""Rebase: a session's work merged 3-way onto the checkout's HEAD, in the worktree."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from orchestrator.services import ReviewService
from testkit.repos import LINES, git
from testkit.rows import add_repo_session, end_turn, finished_turn, start_turn
from worktrees import NothingToRebase, TurnRunning, UnresolvedConflicts
from worktrees import git as wgit
from worktrees.merge import merge_onto, parse_merge_tree, still_conflicted

pytestmark = pytest.mark.anyio

AGENT = LINES.replace("line 2\n", "line 2 agent\n")
USER = LINES.replace("line 2\n", "line 2 user\n")


def commit_in_checkout(repo: Path, files: dict[str, str], message: str = "user") -> str:
    for name, text in files.items():
        (repo / name).write_text(text)
    git(repo, "add", *files)
    git(repo, "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD")


def test_merge_tree_output_is_parsed() -> None:
    out = (
        b"c4277a0031e25948050946cbf3a6945791f81d01\0README\0\0"
        b"1\0README\0Auto-merging\0Auto-merging README\n\0"
        b"1\0README\0CONFLICT (contents)\0CONFLICT (content): Merge conflict in README\n\0"
    )
    merged = parse_merge_tree(out)
    assert merged.tree == "c4277a0031e25948050946cbf3a6945791f81d01"
    assert merged.conflicts == ("README",)
    assert merged.messages == ("Auto-merging README", "CONFLICT (content): Merge conflict in README")
    assert parse_merge_tree(b"c4277a0031e25948050946cbf3a6945791f81d01\0\0").conflicts == ()


def test_the_session_base_is_the_merge_base(repo: Path, tmp_path: Path) -> None:
    base = wgit.head_commit(repo)
    wt = tmp_path / "wt"
    wgit.add_worktree(repo, wt, "switchyard/1", base)
    (wt / "a.txt").write_text(AGENT)
    work = wgit.snapshot(wgit.trusted_checkout(repo, wt), base, "work")
    onto = commit_in_checkout(repo, {"keep.txt": "user\n"})
    clean = merge_onto(repo, base, work, onto)
    assert clean.conflicts == ()
    assert wgit.run(repo, ["cat-file", "blob", f"{clean.tree}:a.txt"]).stdout.decode() == AGENT
    assert wgit.run(repo, ["cat-file", "blob", f"{clean.tree}:keep.txt"]).stdout == b"user\n"

    onto = commit_in_checkout(repo, {"a.txt": USER})
    conflicted = merge_onto(repo, base, work, onto)
    assert conflicted.conflicts == ("a.txt",)
    commit = wgit.commit_tree(repo, conflicted.tree, onto, "merged")
    assert still_conflicted(repo, commit, ("a.txt", "keep.txt")) == ("a.txt",)


async def test_a_clean_rebase_is_a_new_pending_change_on_the_checkouts_head(
    pool: asyncpg.Pool, repo: Path, review: ReviewService
) -> None:
    session = await add_repo_session(pool, repo)
    change = await finished_turn(review, pool, session, {"a.txt": AGENT})
    with pytest.raises(NothingToRebase, match="base already"):
        await review.rebase(change)
    head = commit_in_checkout(repo, {"a.txt": LINES.replace("line 15\n", "line 15 user\n"), "keep.txt": "u\n"})

    done = await review.rebase(change, by="alice")
    assert done.change.id == change and done.change.status == "superseded"
    new = done.remainder
    assert new is not None and new.status == "pending" and new.base_commit == head and new.supersedes == change
    assert [f["path"] for f in new.files] == ["a.txt"]
    worktree = (await review.worktrees.ensure(session)).path
    assert (worktree / "a.txt").read_text() == AGENT.replace("line 15\n", "line 15 user\n")
    assert (worktree / "keep.txt").read_text() == "u\n"
    assert git(worktree, "rev-parse", "HEAD") == head and git(worktree, "status", "--porcelain") == "M a.txt"
    assert done.kept_at is not None and git(repo, "show", f"{done.kept_at}:a.txt") + "\n" == AGENT

    accepted = await review.accept(new.id)
    assert accepted.change.status == "accepted"
    assert (repo / "a.txt").read_text() == AGENT.replace("line 15\n", "line 15 user\n")


async def test_a_conflicted_rebase_leaves_markers_until_a_turn_resolves_them(
    pool: asyncpg.Pool, repo: Path, review: ReviewService
) -> None:
    session = await add_repo_session(pool, repo)
    change = await finished_turn(review, pool, session, {"a.txt": AGENT, "x.txt": "x\n"})
    head = commit_in_checkout(repo, {"a.txt": USER})
    assert (await review.accept(change)).change.status == "conflict"

    async with pool.acquire() as conn:
        task = await start_turn(conn, session)
    with pytest.raises(TurnRunning):
        await review.rebase(change)
    async with pool.acquire() as conn:
        await end_turn(conn, task)

    done = await review.rebase(change)
    new = done.remainder
    assert new is not None and new.status == "conflict" and new.conflicts == ("a.txt",)
    assert new.error is not None and "CONFLICT (content): Merge conflict in a.txt" in new.error
    worktree = (await review.worktrees.ensure(session)).path
    text = (worktree / "a.txt").read_text()
    assert "<<<<<<< " in text and "line 2 user\n=======\nline 2 agent\n>>>>>>> " in text
    assert (worktree / "x.txt").read_text() == "x\n"
    with pytest.raises(UnresolvedConflicts, match=r"a\.txt"):
        await review.accept(new.id)

    # A turn that leaves a marker keeps the change in conflict ...
    partly = await finished_turn(review, pool, session, {"x.txt": "x2\n"})
    still = await review.get_change(partly)
    assert still.status == "conflict" and still.conflicts == ("a.txt",) and still.supersedes == new.id
    # ... one that resolves it gives a pending change against the new base that accepts cleanly.
    resolved = LINES.replace("line 2\n", "line 2 user and agent\n")
    final = await review.get_change(await finished_turn(review, pool, session, {"a.txt": resolved}))
    assert final.status == "pending" and final.conflicts == () and final.base_commit == head
    done = await review.accept(final.id)
    assert done.change.status == "accepted"
    assert (repo / "a.txt").read_text() == resolved and (repo / "x.txt").read_text() == "x2\n"
