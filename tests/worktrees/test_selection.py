"""Reviewing some hunks of a file: accepted into the checkout byte for byte, the rest pending as it was."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from orchestrator.services import ReviewService
from testkit.repos import LINES, checkout_files, git
from testkit.rows import add_repo_session, finished_turn
from worktrees import UnknownFile, UnknownHunk

pytestmark = pytest.mark.anyio

HUNK_1 = ("line 2\n", "line 2 agent\n")
HUNK_2 = ("line 10\n", "line 10 agent\n")
HUNK_3 = ("line 18\n", "line 18 agent\nline 18b agent\n")


def edited(*hunks: tuple[str, str]) -> str:
    text = LINES
    for old, new in hunks:
        text = text.replace(old, new)
    return text


async def hunk_ids(review: ReviewService, change_id: int, path: str) -> list[int]:
    info = await review.diff_info(change_id)
    [entry] = [f for f in info["diff_files"] if f["path"] == path]
    return [h["id"] for h in entry["hunks"]]


async def test_accepting_hunk_2_of_3_puts_only_it_into_the_checkout(
    pool: asyncpg.Pool, repo: Path, review: ReviewService
) -> None:
    session = await add_repo_session(pool, repo)
    change = await finished_turn(review, pool, session, {"a.txt": edited(HUNK_1, HUNK_2, HUNK_3), "x.txt": "x\n"})
    assert await hunk_ids(review, change, "a.txt") == [1, 2, 3]
    snapshot = (await review.get_change(change)).snapshot_commit

    done = await review.accept(change, hunks={"a.txt": [2]}, by="alice")
    assert done.change.status == "accepted"
    assert (repo / "a.txt").read_bytes() == edited(HUNK_2).encode()
    assert not (repo / "x.txt").exists()
    assert [f["path"] for f in done.change.files] == ["a.txt"]
    assert done.change.files[0]["additions"] == 1

    # Hunks 1 and 3 (and x.txt) stay pending exactly as they were: same content, same text.
    rest = done.remainder
    assert rest is not None and rest.status == "pending" and rest.snapshot_commit == snapshot
    assert sorted(f["path"] for f in rest.files) == ["a.txt", "x.txt"]
    text = await review.get_diff(rest.id)
    assert "+line 2 agent\n" in text and "+line 18 agent\n+line 18b agent\n" in text
    assert "line 10 agent" not in text
    assert await hunk_ids(review, rest.id, "a.txt") == [1, 2]

    # The rest accepts cleanly on top: the checkout ends up with the agent's whole file.
    last = await review.accept(rest.id)
    assert last.change.status == "accepted" and last.remainder is None
    assert (repo / "a.txt").read_text() == edited(HUNK_1, HUNK_2, HUNK_3)
    assert (repo / "x.txt").read_text() == "x\n"


async def test_rejecting_a_hunk_takes_only_it_out_of_the_worktree(
    pool: asyncpg.Pool, repo: Path, review: ReviewService
) -> None:
    session = await add_repo_session(pool, repo)
    change = await finished_turn(review, pool, session, {"a.txt": edited(HUNK_1, HUNK_2, HUNK_3)})
    worktree = (await review.worktrees.ensure(session)).path

    done = await review.reject(change, hunks={"a.txt": [1, 3]}, by="alice")
    assert done.change.status == "rejected" and done.kept_at is not None
    assert (worktree / "a.txt").read_text() == edited(HUNK_2)
    assert done.remainder is not None
    assert await hunk_ids(review, done.remainder.id, "a.txt") == [1]
    assert "+line 10 agent\n" in await review.get_diff(done.remainder.id)
    # The discarded hunks are still in the ref the reject kept.
    assert git(repo, "show", f"{done.kept_at}:a.txt") + "\n" == edited(HUNK_1, HUNK_2, HUNK_3)
    # Nothing reached the checkout.
    assert (repo / "a.txt").read_text() == LINES


async def test_hunks_that_do_not_exist_are_refused_and_change_nothing(
    pool: asyncpg.Pool, repo: Path, review: ReviewService
) -> None:
    session = await add_repo_session(pool, repo)
    change = await finished_turn(review, pool, session, {"a.txt": edited(HUNK_1, HUNK_2), "image.bin": "now text\n"})
    before = checkout_files(repo)
    with pytest.raises(UnknownHunk, match=r"a\.txt has hunks 1 to 2 in change \d+, not 5"):
        await review.accept(change, hunks={"a.txt": [1, 5]})
    with pytest.raises(UnknownHunk, match="named twice"):
        await review.accept(change, files=["a.txt"], hunks={"a.txt": [1]})
    with pytest.raises(UnknownHunk, match="no hunks"):
        await review.accept(change, hunks={"image.bin": [1]})
    with pytest.raises(UnknownFile, match=r"has no file nope\.txt"):
        await review.reject(change, hunks={"nope.txt": [1]})
    assert checkout_files(repo) == before
    assert (await review.get_change(change)).status == "pending"

    # Naming every hunk of a file is accepting the file.
    done = await review.accept(change, hunks={"a.txt": [1, 2]})
    assert done.remainder is not None and [f["path"] for f in done.remainder.files] == ["image.bin"]
    assert (repo / "a.txt").read_text() == edited(HUNK_1, HUNK_2)
