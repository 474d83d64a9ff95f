"""Review comments: where they may go, and how they follow their lines to the next change."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from orchestrator.services import ReviewService
from testkit.repos import LINES
from testkit.rows import add_repo_session, finished_turn
from worktrees import InvalidComment

pytestmark = pytest.mark.anyio

CODE = "".join(f"code {i}\n" for i in range(1, 13))


def where(comment: object) -> tuple[object, ...]:
    return tuple(getattr(comment, k) for k in ("path", "side", "line", "current_line", "outdated", "body"))


async def test_comments_go_on_lines_the_change_has(pool: asyncpg.Pool, repo: Path, review: ReviewService) -> None:
    session = await add_repo_session(pool, repo)
    change = await finished_turn(review, pool, session, {"a.py": CODE, "a.txt": LINES.replace("line 3\n", "")})

    made = await review.comment(change, "  Rename this  ", path="a.py", line=3, by="token:ide")
    assert where(made) == ("a.py", "new", 3, 3, False, "Rename this") and made.author == "token:ide"
    old = await review.comment(change, "Why was this removed?", path="a.txt", line=3, side="old", by="cli:bob")
    whole = await review.comment(change, "Add a test", by="cli:bob")
    assert where(whole) == (None, None, None, None, False, "Add a test")
    assert [c.id for c in await review.comments(change)] == [made.id, old.id, whole.id]
    assert made.state == "open" and made.task_id is None

    for kwargs, reason in (
        ({"path": "nope.py", "line": 1}, "has no file nope.py"),
        ({"path": "a.py", "line": 13}, "12 lines on its new side, not 13"),
        ({"path": "a.py", "line": 1, "side": "old"}, "no old side"),
        ({"path": "image.bin", "line": 1}, "has no file image.bin"),
        ({"path": "a.py"}, "a file and a line, or neither"),
        ({"path": "a.py", "line": 1, "side": "left"}, "side must be one of new, old"),
    ):
        with pytest.raises(InvalidComment, match=reason):
            await review.comment(change, "x", by="cli:bob", **kwargs)
    with pytest.raises(InvalidComment, match="needs a body"):
        await review.comment(change, "   ", by="cli:bob")
    assert len(await review.comments(change)) == 3


async def test_comments_follow_their_lines_to_the_next_change_and_go_outdated_when_they_move(
    pool: asyncpg.Pool, repo: Path, review: ReviewService
) -> None:
    session = await add_repo_session(pool, repo)
    first = await finished_turn(review, pool, session, {"a.py": CODE, "b.py": "b\n", "c.py": CODE})
    on_3 = await review.comment(first, "line three", path="a.py", line=3, by="r")
    on_10 = await review.comment(first, "line ten", path="a.py", line=10, by="r")
    on_b = await review.comment(first, "about b", path="b.py", line=1, by="r")
    on_c = await review.comment(first, "about c", path="c.py", line=5, by="r")
    whole = await review.comment(first, "overall", by="r")

    # The next turn inserts a line at the top of a.py, rewrites line 10, leaves c.py alone and
    # drops b.py from the change.
    edited = "header\n" + CODE.replace("code 10\n", "code ten\n")
    worktree = (await review.worktrees.ensure(session)).path
    (worktree / "b.py").unlink()
    second = await finished_turn(review, pool, session, {"a.py": edited})
    carried = {c.body: c for c in await review.comments(second)}
    assert where(carried["line three"]) == ("a.py", "new", 3, 4, True, "line three")
    assert where(carried["line ten"]) == ("a.py", "new", 10, None, True, "line ten")
    assert where(carried["about b"]) == ("b.py", "new", 1, None, True, "about b")
    assert where(carried["about c"]) == ("c.py", "new", 5, 5, False, "about c")
    assert where(carried["overall"]) == (None, None, None, None, False, "overall")
    assert {c.written_on for c in carried.values()} == {first}
    # The comments stay on the change they were written on, as they were.
    kept = {c.id: c for c in await review.comments(first)}
    assert [where(kept[c.id]) for c in (on_3, on_10, on_b, on_c, whole)] == [
        where(c) for c in (on_3, on_10, on_b, on_c, whole)
    ]

    # An outdated comment stays outdated, and keeps following its line.
    third = await finished_turn(review, pool, session, {"a.py": "top\n" + edited})
    again = {c.body: c for c in await review.comments(third)}
    assert where(again["line three"]) == ("a.py", "new", 3, 5, True, "line three")
    assert where(again["about c"]) == ("c.py", "new", 5, 5, False, "about c")


async def test_after_a_partial_accept_the_comments_of_the_rest_stay_with_it(
    pool: asyncpg.Pool, repo: Path, review: ReviewService
) -> None:
    session = await add_repo_session(pool, repo)
    change = await finished_turn(review, pool, session, {"a.py": CODE, "b.py": "b\n"})
    await review.comment(change, "on a", path="a.py", line=2, by="r")
    await review.comment(change, "on b", path="b.py", line=1, by="r")
    done = await review.accept(change, files=["a.py"])
    assert done.remainder is not None
    rest = await review.comments(done.remainder.id)
    assert [(c.body, c.current_line, c.outdated) for c in rest] == [("on b", 1, False)]
