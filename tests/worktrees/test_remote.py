"""Projects with a git remote: each node's clone, snapshots pushed after every turn, a session
recreated on another node from its pushed snapshot, accepts that publish the new base."""

from __future__ import annotations

from pathlib import Path

import anyio
import asyncpg
import pytest

from orchestrator.services import ReviewService
from testkit.repos import bare_remote, git, sample_repo
from testkit.rows import add_project, add_session, end_turn, start_turn, worktree_turn
from worktrees import (
    BadBranch,
    Delivery,
    NoCheckout,
    PendingChange,
    RemoteUnavailable,
    Worktree,
    WorktreeElsewhere,
    WorktreeManager,
    WorktreeSettings,
)

pytestmark = pytest.mark.anyio


def node(pool: asyncpg.Pool, tmp_path: Path, name: str) -> WorktreeManager:
    """A node's manager: its own worktree root and clones, as on another machine."""
    settings = WorktreeSettings(root=tmp_path / name / "worktrees", clones=tmp_path / name / "clones")
    return ReviewService(pool, settings, node_id=name).worktrees


def content(wt: Worktree) -> dict[str, bytes]:
    """Every file of the worktree but its ``.git`` file (which names the node's clone)."""
    return {
        str(p.relative_to(wt.path)): p.read_bytes()
        for p in sorted(wt.path.rglob("*"))
        if p.is_file() and p.name != ".git"
    }


@pytest.fixture
def remote(tmp_path: Path) -> tuple[Path, Path]:
    checkout = sample_repo(tmp_path / "checkout")
    return checkout, bare_remote(checkout, tmp_path / "remote.git")


async def test_a_session_moves_to_another_node_with_its_last_snapshot_and_its_change_accepts(
    pool: asyncpg.Pool, tmp_path: Path, remote: tuple[Path, Path]
) -> None:
    checkout, url = remote
    project = await add_project(pool, "remote", checkout, remote=str(url))
    session = await add_session(pool, project)
    a, b = node(pool, tmp_path, "a"), node(pool, tmp_path, "b")
    on_a, change = await worktree_turn(
        a, pool, session, {"a.txt": "edited\n", "new/file.txt": "new\n", "gone.txt": None}
    )
    assert change is not None
    assert on_a.repo_path == tmp_path / "a" / "clones" / f"{project}.git"
    # The snapshot and its base are on the remote after the turn.
    refs = git(url, "for-each-ref", "--format=%(refname) %(objectname)", f"refs/switchyard/sessions/{session}/")
    assert refs.splitlines() == [
        f"refs/switchyard/sessions/{session}/base {change.base_commit}",
        f"refs/switchyard/sessions/{session}/snapshot {change.snapshot_commit}",
    ]
    # Node a dies; b takes the session's next turn: the same files, file by file.
    on_b, unchanged = await worktree_turn(b, pool, session, {})
    assert on_b.path.is_relative_to(tmp_path / "b") and content(on_b) == content(on_a)
    assert not (on_b.path / "gone.txt").exists() and (on_b.path / "new" / "file.txt").read_text() == "new\n"
    assert unchanged == change  # the turn changed nothing: the open change stays valid
    assert await pool.fetchval("SELECT node_id FROM session_worktrees WHERE session_id = $1", session) == "b"
    # Accepted from a third process: applied to the checkout, the new base pushed for the node.
    resolution = await node(pool, tmp_path, "c").accept(change.id)
    assert resolution.change.status == "accepted"
    assert (checkout / "a.txt").read_text() == "edited\n" and not (checkout / "gone.txt").exists()
    new_base = await pool.fetchval("SELECT base_commit FROM session_worktrees WHERE session_id = $1", session)
    assert git(url, "rev-parse", f"refs/switchyard/sessions/{session}/base") == new_base
    # b's next turn diffs against the new base: only what it changed since.
    _, later = await worktree_turn(b, pool, session, {"keep.txt": "changed on b\n"})
    assert later is not None and [f["path"] for f in later.files] == ["keep.txt"]
    # Back to a (b dies): a's stale worktree of the session is replaced by the remote's.
    await pool.execute("UPDATE session_worktrees SET node_id = 'b' WHERE session_id = $1", session)
    back, same = await worktree_turn(a, pool, session, {})
    assert (back.path / "keep.txt").read_text() == "changed on b\n" and (back.path / "a.txt").read_text() == "edited\n"
    assert same == later


async def remote_only_change(
    pool: asyncpg.Pool, tmp_path: Path, url: Path, edit: dict[str, str | None]
) -> tuple[WorktreeManager, int, PendingChange]:
    """A project with only a remote, a session on node a, and the change its first turn left."""
    project = await add_project(pool, "remote-only", remote=str(url))
    session = await add_session(pool, project)
    a = node(pool, tmp_path, "a")
    _, change = await worktree_turn(a, pool, session, edit)
    assert change is not None
    return a, session, change


async def test_a_project_with_only_a_remote_runs_turns_but_cannot_be_accepted_by_apply(
    pool: asyncpg.Pool, tmp_path: Path, remote: tuple[Path, Path]
) -> None:
    a, session, change = await remote_only_change(pool, tmp_path, remote[1], {"a.txt": "edited\n"})
    with pytest.raises(NoCheckout, match=r"has only a remote.*accept it as a commit"):
        await a.accept(change.id)
    # Reject restores the worktree's files: only the node that holds it can.
    with pytest.raises(WorktreeElsewhere, match="on node a"):
        await node(pool, tmp_path, "b").reject(change.id)
    assert (await a.reject(change.id)).change.status == "rejected"
    # The remote has the worktree as the reject left it: a node taking the session over sees no edit.
    await pool.execute("UPDATE session_worktrees SET node_id = 'gone' WHERE session_id = $1", session)
    on_b, none = await worktree_turn(node(pool, tmp_path, "b"), pool, session, {})
    assert none is None and (on_b.path / "a.txt").read_text() != "edited\n"


def remote_file(url: Path, rev: str, path: str) -> str:
    return git(url, "show", f"{rev}:{path}") + "\n"


async def test_an_accept_as_a_commit_goes_onto_the_remote_from_a_node_that_never_held_the_session(
    pool: asyncpg.Pool, tmp_path: Path, remote: tuple[Path, Path]
) -> None:
    checkout, url = remote
    a, session, change = await remote_only_change(pool, tmp_path, url, {"a.txt": "edited\n", "gone.txt": None})
    main_before = git(url, "rev-parse", "main")
    # Someone pushes to main meanwhile: the accept merges onto the new tip (a fast-forward push).
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(url), str(other))
    (other / "keep.txt").write_text("pushed by someone else\n")
    git(other, "commit", "-qam", "someone else")
    git(other, "push", "-q", "origin", "main")
    moved = git(url, "rev-parse", "main")
    # Node c has no clone yet and never held the session.
    c = node(pool, tmp_path, "c")
    resolution = await c.accept(change.id, delivery=Delivery(mode="commit", message="Take the edit"))
    accepted = resolution.change
    assert accepted.status == "accepted" and accepted.accepted_branch == "main"
    assert git(url, "rev-parse", "main") == accepted.accepted_commit
    assert git(url, "rev-parse", f"{accepted.accepted_commit}^") == moved != main_before
    assert remote_file(url, "main", "a.txt") == "edited\n"
    assert remote_file(url, "main", "keep.txt") == "pushed by someone else\n"
    assert "gone.txt" not in git(url, "ls-tree", "--name-only", "main").split()
    assert git(url, "log", "-1", "--format=%B", "main").startswith("Take the edit")
    assert f"Switchyard-Change: {change.id}" in git(url, "log", "-1", "--format=%B", "main")
    # The new base is the pushed commit, published for the session's node; the checkout
    # (there is none here; with one it is not touched either) plays no part.
    new_base = await pool.fetchval("SELECT base_commit FROM session_worktrees WHERE session_id = $1", session)
    assert git(url, "rev-parse", f"refs/switchyard/sessions/{session}/base") == new_base
    assert (checkout / "a.txt").read_text() != "edited\n"
    # a's next turn diffs against it: only what it changed since.
    _, later = await worktree_turn(a, pool, session, {"b.txt": "more\n"})
    assert later is not None and [f["path"] for f in later.files] == ["b.txt"]
    # Onto a new branch, from another node again: created from the remote's main.
    resolution = await node(pool, tmp_path, "b").accept(later.id, delivery=Delivery(mode="branch", branch="feature/x"))
    assert resolution.change.accepted_branch == "feature/x"
    assert git(url, "rev-parse", "feature/x") == resolution.change.accepted_commit
    assert git(url, "rev-parse", "feature/x^") == accepted.accepted_commit == git(url, "rev-parse", "main")
    assert remote_file(url, "feature/x", "b.txt") == "more\n"


async def test_an_accept_onto_a_remote_branch_that_conflicts_leaves_the_remote_as_it_was(
    pool: asyncpg.Pool, tmp_path: Path, remote: tuple[Path, Path]
) -> None:
    url = remote[1]
    _, _, change = await remote_only_change(pool, tmp_path, url, {"a.txt": "edited\n"})
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(url), str(other))
    (other / "a.txt").write_text("edited differently\n")
    git(other, "commit", "-qam", "conflicting")
    git(other, "push", "-q", "origin", "main")
    tip = git(url, "rev-parse", "main")
    resolution = await node(pool, tmp_path, "c").accept(change.id, delivery=Delivery(mode="commit"))
    assert resolution.change.status == "conflict" and resolution.change.error
    assert git(url, "rev-parse", "main") == tip
    with pytest.raises(BadBranch):
        await node(pool, tmp_path, "c").accept(change.id, delivery=Delivery(mode="branch", branch="switchyard/9"))


async def test_a_session_whose_snapshot_never_reached_the_remote_refuses_to_move(
    pool: asyncpg.Pool, tmp_path: Path, remote: tuple[Path, Path]
) -> None:
    checkout, url = remote
    project = await add_project(pool, "remote", checkout, remote=str(url))
    session = await add_session(pool, project)
    await worktree_turn(node(pool, tmp_path, "a"), pool, session, {"a.txt": "edited\n"})
    # Its base was made on node a only (an accept whose push was lost): node b cannot rebuild it.
    await pool.execute("UPDATE session_worktrees SET base_commit = repeat('e', 40) WHERE session_id = $1", session)
    with pytest.raises(RemoteUnavailable, match="is not on the remote"):
        await node(pool, tmp_path, "b").ensure(session)


async def test_a_turn_ends_before_its_snapshot_is_pushed_and_the_next_turn_waits_for_it(
    pool: asyncpg.Pool, tmp_path: Path, remote: tuple[Path, Path]
) -> None:
    checkout, url = remote
    project = await add_project(pool, "remote", checkout, remote=str(url))
    session = await add_session(pool, project)
    a = node(pool, tmp_path, "a")
    await worktree_turn(a, pool, session, {"a.txt": "first\n"})
    # The remote now holds every push until `go` exists.
    go = tmp_path / "go"
    hook = url / "hooks" / "pre-receive"
    hook.write_text(f"#!/bin/sh\nwhile [ ! -e '{go}' ]; do sleep 0.02; done\n")
    hook.chmod(0o755)
    async with pool.acquire() as conn:
        task = await start_turn(conn, session)
    wt = await a.ensure(session)
    (wt.path / "a.txt").write_text("second\n")
    change = await a.record_turn(session, task_id=task, agent="fake")
    async with pool.acquire() as conn:
        await end_turn(conn, task)
    # The turn has ended; its snapshot is still on its way.
    assert change is not None and a.pushes.busy(session)
    snapshot_ref = f"refs/switchyard/sessions/{session}/snapshot"
    assert git(url, "rev-parse", snapshot_ref) != change.snapshot_commit
    ensured = anyio.Event()

    async def next_turn() -> None:
        await a.ensure(session)
        ensured.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(next_turn)
        await anyio.sleep(0.5)
        assert not ensured.is_set()  # the next turn waits for the snapshot
        go.touch()
    assert git(url, "rev-parse", snapshot_ref) == change.snapshot_commit and not a.pushes.busy(session)
