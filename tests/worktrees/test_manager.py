"""WorktreeManager against a real database and real repositories."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import anyio
import asyncpg
import pytest

from testkit.repos import LINES, git, sample_repo
from testkit.rows import add_repo_session, make_idle, start_turn, worktree_turn
from worktrees import (
    ChangeNotPending,
    NoWorktree,
    PendingChange,
    TurnRunning,
    UnknownFile,
    WorktreeManager,
    WorktreeSettings,
)

pytestmark = pytest.mark.anyio


async def statuses(pool: asyncpg.Pool, session: int) -> list[str]:
    rows = await pool.fetch("SELECT status FROM pending_changes WHERE session_id = $1 ORDER BY id", session)
    return [r["status"] for r in rows]


async def turn(
    manager: WorktreeManager, pool: asyncpg.Pool, session: int, edit: dict[str, str | None]
) -> PendingChange | None:
    """One turn as the dispatcher runs it; the change it left pending."""
    return (await worktree_turn(manager, pool, session, edit))[1]


# ---------------------------------------------------------------------------- ensure


async def test_ensure_creates_once_and_then_only_touches_the_row(
    pool: asyncpg.Pool, repo: Path, worktree_settings: WorktreeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = WorktreeManager(pool, worktree_settings)
    session = await add_repo_session(pool, repo)
    wt = await manager.ensure(session)
    project = await pool.fetchval("SELECT project_id FROM sessions WHERE id = $1", session)
    assert wt.path == worktree_settings.root.resolve() / str(project) / str(session)
    assert wt.branch == f"switchyard/{session}"
    assert wt.base_commit == git(repo, "rev-parse", "HEAD")
    assert git(wt.path, "rev-parse", "--abbrev-ref", "HEAD") == wt.branch
    row = await pool.fetchrow("SELECT * FROM session_worktrees WHERE session_id = $1", session)
    assert (row["path"], row["base_commit"], row["status"]) == (str(wt.path), wt.base_commit, "active")

    # The second call must not run git at all: with no git on PATH it still succeeds.
    monkeypatch.setenv("PATH", "/nonexistent")
    assert await manager.ensure(session) == wt


async def test_ensure_heals_a_deleted_directory_from_the_stored_base(
    pool: asyncpg.Pool, repo: Path, worktree_settings: WorktreeSettings
) -> None:
    manager = WorktreeManager(pool, worktree_settings)
    session = await add_repo_session(pool, repo)
    wt = await manager.ensure(session)
    (repo / "later.txt").write_text("the project moved on\n")
    git(repo, "add", "later.txt")
    git(repo, "commit", "-q", "-m", "later")
    shutil.rmtree(wt.path)

    healed = await manager.ensure(session)
    assert healed == wt
    assert git(healed.path, "rev-parse", "HEAD") == wt.base_commit
    assert not (healed.path / "later.txt").exists()


async def test_concurrent_ensures_in_one_repository_all_succeed(
    pool: asyncpg.Pool, repo: Path, worktree_settings: WorktreeSettings
) -> None:
    manager = WorktreeManager(pool, worktree_settings)
    sessions = [await add_repo_session(pool, repo) for _ in range(4)]
    results: dict[int, Path] = {}

    async def one(session: int) -> None:
        results[session] = (await manager.ensure(session)).path

    async with anyio.create_task_group() as tg:
        for session in [*sessions, sessions[0]]:
            tg.start_soon(one, session)
    assert len({results[s] for s in sessions}) == 4
    assert all((p / "a.txt").is_file() for p in results.values())


async def test_record_turn_without_a_worktree_is_refused(
    pool: asyncpg.Pool, repo: Path, worktree_settings: WorktreeSettings
) -> None:
    session = await add_repo_session(pool, repo)
    with pytest.raises(NoWorktree):
        await WorktreeManager(pool, worktree_settings).record_turn(session)


# ---------------------------------------------------------------------------- pending changes


async def test_three_turns_leave_one_pending_cumulative_change(
    pool: asyncpg.Pool, repo: Path, worktree_settings: WorktreeSettings
) -> None:
    manager = WorktreeManager(pool, worktree_settings)
    session = await add_repo_session(pool, repo)
    await turn(manager, pool, session, {"one.txt": "1\n"})
    await turn(manager, pool, session, {"two.txt": "2\n"})
    last = await turn(manager, pool, session, {"a.txt": LINES + "more\n"})

    assert await statuses(pool, session) == ["superseded", "superseded", "pending"]
    assert last is not None and last.status == "pending" and last.agent == "fake"
    assert sorted(f["path"] for f in last.files) == ["a.txt", "one.txt", "two.txt"]
    text = await manager.get_diff(last.id)
    assert "+1\n" in text and "+2\n" in text and "+more\n" in text


async def test_a_turn_that_changes_nothing_keeps_the_open_change(
    pool: asyncpg.Pool, repo: Path, worktree_settings: WorktreeSettings
) -> None:
    manager = WorktreeManager(pool, worktree_settings)
    session = await add_repo_session(pool, repo)
    first = await turn(manager, pool, session, {"one.txt": "1\n"})
    again = await turn(manager, pool, session, {})
    assert again == first
    assert await statuses(pool, session) == ["pending"]


async def test_an_empty_diff_adds_no_row_and_retires_a_stale_one(
    pool: asyncpg.Pool, repo: Path, worktree_settings: WorktreeSettings
) -> None:
    manager = WorktreeManager(pool, worktree_settings)
    session = await add_repo_session(pool, repo)
    assert await turn(manager, pool, session, {"ignored.log": "x\n"}) is None
    assert await statuses(pool, session) == []
    await turn(manager, pool, session, {"one.txt": "1\n"})
    assert await turn(manager, pool, session, {"one.txt": None}) is None  # the agent undid its work
    assert await statuses(pool, session) == ["superseded"]


# ---------------------------------------------------------------------------- accept


async def test_accept_applies_to_the_project_and_advances_the_base(
    pool: asyncpg.Pool, repo: Path, worktree_settings: WorktreeSettings
) -> None:
    manager = WorktreeManager(pool, worktree_settings)
    session = await add_repo_session(pool, repo)
    change = await turn(manager, pool, session, {"new.txt": "new\n", "gone.txt": None, "a.txt": "rewritten\n"})
    assert change is not None

    done = await manager.accept(change.id, resolved_by="alice")
    assert done.change.status == "accepted" and done.change.resolved_by == "alice" and done.remainder is None
    assert (repo / "new.txt").read_text() == "new\n"
    assert (repo / "a.txt").read_text() == "rewritten\n"
    assert not (repo / "gone.txt").exists()
    assert git(repo, "diff", "--cached", "--name-only") == ""  # the project's index is the developer's

    with pytest.raises(ChangeNotPending, match="accepted"):
        await manager.accept(change.id)

    wt = await manager.ensure(session)
    assert wt.base_commit != change.base_commit
    assert git(wt.path, "status", "--porcelain") == ""  # the branch and index followed
    nxt = await turn(manager, pool, session, {"later.txt": "later\n"})
    assert nxt is not None and [f["path"] for f in nxt.files] == ["later.txt"]


async def test_accepting_some_files_leaves_the_rest_pending(
    pool: asyncpg.Pool, repo: Path, worktree_settings: WorktreeSettings
) -> None:
    manager = WorktreeManager(pool, worktree_settings)
    session = await add_repo_session(pool, repo)
    change = await turn(manager, pool, session, {"x.txt": "x\n", "y.txt": "y\n", "src/main.py": "print('bye')\n"})
    assert change is not None

    with pytest.raises(UnknownFile, match=r"no file nope\.txt"):
        await manager.accept(change.id, files=["nope.txt"])
    done = await manager.accept(change.id, files=["x.txt", "./src/main.py"])
    assert done.change.status == "accepted"
    assert sorted(f["path"] for f in done.change.files) == ["src/main.py", "x.txt"]
    assert (repo / "x.txt").exists() and not (repo / "y.txt").exists()
    assert done.remainder is not None and done.remainder.status == "pending"
    assert [f["path"] for f in done.remainder.files] == ["y.txt"]
    assert "y.txt" in await manager.get_diff(done.remainder.id)
    assert "x.txt" not in await manager.get_diff(done.remainder.id)

    rest = await manager.accept(done.remainder.id)
    assert rest.change.status == "accepted" and (repo / "y.txt").read_text() == "y\n"
    assert await statuses(pool, session) == ["accepted", "accepted"]


async def test_a_conflicting_local_edit_marks_conflict_and_leaves_the_project_alone(
    pool: asyncpg.Pool, repo: Path, worktree_settings: WorktreeSettings
) -> None:
    manager = WorktreeManager(pool, worktree_settings)
    session = await add_repo_session(pool, repo)
    change = await turn(manager, pool, session, {"a.txt": LINES.replace("line 2\n", "agent\n"), "new.txt": "new\n"})
    assert change is not None
    (repo / "a.txt").write_text(LINES.replace("line 2\n", "developer\n"))
    status_before = git(repo, "status", "--porcelain")

    done = await manager.accept(change.id, resolved_by="bob")
    assert done.change.status == "conflict"
    assert done.change.error is not None and "a.txt" in done.change.error
    assert (repo / "a.txt").read_text() == LINES.replace("line 2\n", "developer\n")
    assert not (repo / "new.txt").exists()
    assert git(repo, "status", "--porcelain") == status_before
    wt = await manager.ensure(session)
    assert wt.base_commit == change.base_commit

    # Once the developer drops the local edit, the same change can be accepted.
    git(repo, "checkout", "--", "a.txt")
    again = await manager.accept(change.id)
    assert again.change.status == "accepted" and again.change.error is None
    assert (repo / "a.txt").read_text() == LINES.replace("line 2\n", "agent\n")


async def test_a_conflicting_partial_accept_keeps_the_other_files_pending_and_says_why(
    pool: asyncpg.Pool, repo: Path, worktree_settings: WorktreeSettings
) -> None:
    manager = WorktreeManager(pool, worktree_settings)
    session = await add_repo_session(pool, repo)
    change = await turn(manager, pool, session, {"a.txt": LINES.replace("line 2\n", "agent\n"), "extra.txt": "x\n"})
    assert change is not None
    (repo / "a.txt").write_text(LINES.replace("line 2\n", "developer\n"))
    status_before = git(repo, "status", "--porcelain")

    done = await manager.accept(change.id, files=["a.txt"], resolved_by="bob")
    # The named file is the conflict, with git's own reason; the other stays pending.
    assert done.change.status == "conflict" and [f["path"] for f in done.change.files] == ["a.txt"]
    error = done.change.error
    assert error is not None and error.startswith("git apply: ") and "Applied patch to 'a.txt' with conflicts." in error
    assert done.remainder is not None and done.remainder.status == "pending"
    assert [f["path"] for f in done.remainder.files] == ["extra.txt"]
    assert done.remainder.supersedes == change.id
    assert git(repo, "status", "--porcelain") == status_before
    assert "extra.txt" not in await manager.get_diff(change.id)

    # A turn that changes nothing keeps both as they are.
    assert (await turn(manager, pool, session, {})) == done.remainder
    assert await statuses(pool, session) == ["conflict", "pending"]

    # Accepting the pending part moves the conflicting one onto the new base, where it can be
    # accepted once the developer has dropped the local edit.
    rest = await manager.accept(done.remainder.id)
    assert rest.change.status == "accepted" and (repo / "extra.txt").read_text() == "x\n"
    git(repo, "checkout", "--", "a.txt")
    again = await manager.accept(change.id)
    assert again.change.status == "accepted", again.change.error
    assert (repo / "a.txt").read_text() == LINES.replace("line 2\n", "agent\n")
    assert await statuses(pool, session) == ["accepted", "accepted"]


async def test_accept_uses_what_was_reviewed_not_what_the_worktree_holds_now(
    pool: asyncpg.Pool, repo: Path, worktree_settings: WorktreeSettings
) -> None:
    manager = WorktreeManager(pool, worktree_settings)
    session = await add_repo_session(pool, repo)
    change = await turn(manager, pool, session, {"x.txt": "reviewed\n"})
    assert change is not None
    wt = await manager.ensure(session)
    (wt.path / "x.txt").write_text("a later turn is still writing\n")
    await manager.accept(change.id)
    assert (repo / "x.txt").read_text() == "reviewed\n"


# ---------------------------------------------------------------------------- reject


async def test_reject_restores_the_worktree_and_keeps_what_it_discarded(
    pool: asyncpg.Pool, repo: Path, worktree_settings: WorktreeSettings
) -> None:
    manager = WorktreeManager(pool, worktree_settings)
    session = await add_repo_session(pool, repo)
    change = await turn(
        manager, pool, session, {"new.txt": "new\n", "gone.txt": None, "a.txt": "rewritten\n", "x.log": "log\n"}
    )
    assert change is not None
    wt = await manager.ensure(session)

    done = await manager.reject(change.id, resolved_by="carol")
    assert done.change.status == "rejected" and done.remainder is None
    assert not (wt.path / "new.txt").exists()
    assert (wt.path / "gone.txt").read_text() == "to be deleted\n"
    assert (wt.path / "a.txt").read_text() == LINES
    assert (wt.path / "x.log").exists()  # ignored files are not part of a change
    assert git(wt.path, "status", "--porcelain") == ""
    assert done.kept_at is not None
    assert git(repo, "show", f"{done.kept_at}:new.txt") == "new"
    assert not (repo / "new.txt").exists()  # the project never saw it
    with pytest.raises(ChangeNotPending):
        await manager.reject(change.id)


async def test_rejecting_some_files_leaves_the_rest_pending(
    pool: asyncpg.Pool, repo: Path, worktree_settings: WorktreeSettings
) -> None:
    manager = WorktreeManager(pool, worktree_settings)
    session = await add_repo_session(pool, repo)
    change = await turn(manager, pool, session, {"x.txt": "x\n", "y.txt": "y\n"})
    assert change is not None
    wt = await manager.ensure(session)
    done = await manager.reject(change.id, files=["x.txt"])
    assert not (wt.path / "x.txt").exists() and (wt.path / "y.txt").exists()
    assert done.remainder is not None and [f["path"] for f in done.remainder.files] == ["y.txt"]
    # The next turn's diff agrees with the remainder: nothing new, so it stays as it is.
    assert await turn(manager, pool, session, {}) == done.remainder


async def test_reject_during_a_running_turn_is_refused(
    pool: asyncpg.Pool, repo: Path, worktree_settings: WorktreeSettings
) -> None:
    manager = WorktreeManager(pool, worktree_settings)
    session = await add_repo_session(pool, repo)
    change = await turn(manager, pool, session, {"x.txt": "x\n"})
    assert change is not None
    async with pool.acquire() as conn:
        task = await start_turn(conn, session)
    wt = await manager.ensure(session)
    with pytest.raises(TurnRunning, match=f"task {task}"):
        await manager.reject(change.id)
    assert (wt.path / "x.txt").read_text() == "x\n"
    assert await statuses(pool, session) == ["pending"]


# ---------------------------------------------------------------------------- reaper


async def test_the_reaper_removes_only_what_it_may(
    pool: asyncpg.Pool, repo: Path, worktree_settings: WorktreeSettings
) -> None:
    manager = WorktreeManager(pool, WorktreeSettings(root=worktree_settings.root, reap_idle_after=3600))
    idle, archived, pending, running, dirty, fresh, queued = [await add_repo_session(pool, repo) for _ in range(7)]
    paths = {s: (await manager.ensure(s)).path for s in (idle, archived, pending, running, dirty, fresh, queued)}
    await turn(manager, pool, pending, {"x.txt": "x\n"})
    async with pool.acquire() as conn:
        await start_turn(conn, running)
        # A task waiting for its not_before (as after a reject) keeps its worktree too.
        await conn.execute(
            """INSERT INTO tasks (project_id, session_id, input, not_before)
               SELECT project_id, id, 'later', now() + interval '1 hour' FROM sessions WHERE id = $1""",
            queued,
        )
    (paths[dirty] / "unrecorded.txt").write_text("work nobody has seen\n")
    (paths[idle] / "build").mkdir()
    (paths[idle] / "build" / "cache.o").write_text("ignored output\n")
    for s in (idle, pending, running, dirty, queued):
        await make_idle(pool, s)
    await pool.execute("UPDATE sessions SET status = 'archived', archived_at = now() WHERE id = $1", archived)
    await pool.execute(
        "UPDATE session_worktrees SET last_used_at = now() - interval '5 minutes' WHERE session_id = $1", archived
    )

    reaped = {r.session_id: r for r in await manager.reap()}
    assert {s for s, r in reaped.items() if r.removed} == {idle, archived}
    assert not reaped[dirty].removed and "never recorded" in reaped[dirty].reason
    assert pending not in reaped and running not in reaped and fresh not in reaped and queued not in reaped
    for s in (idle, archived):
        assert not paths[s].exists()
        assert git(repo, "branch", "--list", f"switchyard/{s}") == ""
        assert git(repo, "for-each-ref", f"refs/switchyard/{s}/") == ""
        assert await pool.fetchval("SELECT status FROM session_worktrees WHERE session_id = $1", s) == "removed"
    for s in (pending, running, dirty, fresh, queued):
        assert paths[s].exists()
    assert (paths[dirty] / "unrecorded.txt").exists()

    # A reaped session that gets a new turn gets a fresh worktree at the project's HEAD.
    (repo / "accepted-meanwhile.txt").write_text("x\n")
    git(repo, "add", "accepted-meanwhile.txt")
    git(repo, "commit", "-q", "-m", "meanwhile")
    back = await manager.ensure(idle)
    assert back.path.is_dir() and back.base_commit == git(repo, "rev-parse", "HEAD")


async def test_a_worktree_the_reaper_keeps_is_reported_once(
    pool: asyncpg.Pool, repo: Path, worktree_settings: WorktreeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    manager = WorktreeManager(pool, WorktreeSettings(root=worktree_settings.root, reap_idle_after=3600))
    dirty = await add_repo_session(pool, repo)
    path = (await manager.ensure(dirty)).path
    (path / "unrecorded.txt").write_text("work nobody has seen\n")
    await make_idle(pool, dirty)
    with caplog.at_level(logging.WARNING, logger="switchyard.worktrees"):
        for _ in range(5):
            assert [r.removed for r in await manager.reap()] == [False]
    assert [r.getMessage() for r in caplog.records].count("worktree.not_reaped") == 1


async def test_the_reaper_keeps_what_a_reject_discarded(
    pool: asyncpg.Pool, repo: Path, worktree_settings: WorktreeSettings
) -> None:
    manager = WorktreeManager(pool, WorktreeSettings(root=worktree_settings.root, reap_idle_after=3600))
    session = await add_repo_session(pool, repo)
    change = await turn(manager, pool, session, {"idea.txt": "worth keeping\n"})
    assert change is not None
    kept_at = (await manager.reject(change.id)).kept_at
    await make_idle(pool, session)

    [reaped] = await manager.reap()
    assert reaped.removed
    assert git(repo, "for-each-ref", "--format=%(refname)", f"refs/switchyard/{session}/") == kept_at
    assert git(repo, "show", f"{kept_at}:idea.txt") == "worth keeping"


async def test_the_reaper_refuses_a_path_outside_the_root(
    pool: asyncpg.Pool, tmp_path: Path, worktree_settings: WorktreeSettings
) -> None:
    manager = WorktreeManager(pool, WorktreeSettings(root=worktree_settings.root, reap_idle_after=3600))
    repo = sample_repo(tmp_path / "other")
    session = await add_repo_session(pool, repo)
    wt = await manager.ensure(session)
    outside = tmp_path / "outside"
    shutil.copytree(wt.path, outside, symlinks=True)
    await pool.execute("UPDATE session_worktrees SET path = $2 WHERE session_id = $1", session, str(outside))
    await make_idle(pool, session)

    [result] = await manager.reap()
    assert not result.removed and "outside the worktree root" in result.reason
    assert (outside / "a.txt").exists()
    assert await pool.fetchval("SELECT status FROM session_worktrees WHERE session_id = $1", session) == "active"


async def test_renames_binary_files_and_odd_names_survive_accept_and_reject(
    pool: asyncpg.Pool, repo: Path, worktree_settings: WorktreeSettings
) -> None:
    manager = WorktreeManager(pool, worktree_settings)
    session = await add_repo_session(pool, repo)
    wt = await manager.ensure(session)
    (wt.path / "old_name.txt").rename(wt.path / "renamed.txt")
    (wt.path / "image.bin").write_bytes(bytes(range(255, -1, -1)) * 8)
    (wt.path / "dir with space").mkdir()
    (wt.path / "dir with space" / "ü-file.txt").write_text("unicode\n")
    (wt.path / "src" / "main.py").write_text("changed\n")
    change = await manager.record_turn(session)
    assert change is not None
    by_path = {f["path"]: f for f in change.files}
    assert by_path["renamed.txt"]["old_path"] == "old_name.txt"
    assert by_path["image.bin"]["binary"]

    # Selecting a rename by its old name takes both sides; the binary file goes with it.
    done = await manager.accept(change.id, files=["old_name.txt", "image.bin", "dir with space/ü-file.txt"])
    assert not (repo / "old_name.txt").exists()
    assert (repo / "renamed.txt").read_text() == (wt.path / "renamed.txt").read_text()
    assert (repo / "image.bin").read_bytes() == bytes(range(255, -1, -1)) * 8
    assert (repo / "dir with space" / "ü-file.txt").read_text() == "unicode\n"
    assert done.remainder is not None and [f["path"] for f in done.remainder.files] == ["src/main.py"]

    rejected = await manager.reject(done.remainder.id)
    assert rejected.change.status == "rejected"
    assert (wt.path / "src" / "main.py").read_text() == "print('hi')\n"
    assert (wt.path / "renamed.txt").exists()  # accepted work stays in the worktree
    assert await manager.record_turn(session) is None  # nothing left to review
