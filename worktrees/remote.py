"""A project reached through a git remote: each node's own clone, and the sessions' refs there.

A project registered with ``remote_url`` is worked on in a bare clone per node,
``<clones>/<project_id>.git`` under the node's data directory, never in a shared checkout.
After every turn the node pushes the session's snapshot commit (and the base it is diffed
against) to the remote::

    refs/switchyard/sessions/<session_id>/snapshot
    refs/switchyard/sessions/<session_id>/base

and a node that takes the session over (its node died or was drained) fetches both into its
clone's ``refs/switchyard/<session_id>/`` and recreates the worktree from them. An accept pushes
the new base the same way; one as a commit goes onto the remote's branch (``commit_to_branch``),
from whichever node accepts it. Blocking: call through ``anyio.to_thread``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from kernel import get_logger
from worktrees import checkout, git
from worktrees.errors import ApplyConflict, GitCommandFailed, RemoteUnavailable

log = get_logger("worktrees.remote")

# Names of the session refs, on the remote and (under refs_prefix) in every clone.
SNAPSHOT = "snapshot"
BASE = "base"


def remote_ref(session_id: int, name: str) -> str:
    return f"refs/switchyard/sessions/{session_id}/{name}"


def local_ref(session_id: int, name: str) -> str:
    return f"refs/switchyard/{session_id}/{name}"


def _checked_url(url: str) -> str:
    # Never read as an option of git fetch/push/clone.
    if not url or url.startswith("-"):
        raise RemoteUnavailable(f"{url!r} is not a git remote")
    return url


def reachable(url: str, timeout: float) -> bool:
    """Whether the remote answers ``git ls-remote`` within ``timeout`` seconds."""
    try:
        listed = git.run(Path("/"), ["ls-remote", "--heads", _checked_url(url)], check=False, timeout=timeout)
    except (RemoteUnavailable, subprocess.TimeoutExpired):
        return False
    return listed.returncode == 0


def ensure_clone(clones: Path, project_id: int, url: str) -> Path:
    """The node's bare clone of the project (made on first use, atomically)."""
    path = clones / f"{project_id}.git"
    if path.is_dir():
        return path
    clones.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{project_id}-", dir=clones))
    try:
        git.run(clones, ["clone", "--bare", "--quiet", "--", _checked_url(url), str(staging)])
        os.rename(staging, path)
    except GitCommandFailed as exc:
        raise RemoteUnavailable(f"cannot clone {url}: {exc.stderr.strip()}") from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return path


def fetch_branch(repo: Path, url: str, branch: str) -> str:
    """The remote's ``branch`` now (fetched into refs/remotes/origin/<branch>)."""
    commit = _fetch_branch_if_any(repo, url, branch)
    if commit is None:
        raise RemoteUnavailable(f"{url} has no branch {branch}")
    return commit


def _fetch_branch_if_any(repo: Path, url: str, branch: str) -> str | None:
    ref = f"refs/remotes/origin/{branch}"
    result = git.run(repo, ["fetch", "--quiet", _checked_url(url), f"+refs/heads/{branch}:{ref}"], check=False)
    if result.returncode != 0:
        # Exit status 2: the remote answered, and has no such branch.
        listed = git.run(repo, ["ls-remote", "--exit-code", "--heads", url, f"refs/heads/{branch}"], check=False)
        if listed.returncode == 2:
            return None
        raise RemoteUnavailable(f"cannot fetch {branch} from {url}: {result.stderr.decode(errors='replace').strip()}")
    commit = git.rev_parse(repo, ref + "^{commit}")
    assert commit is not None
    return commit


def commit_to_branch(
    repo: Path,
    url: str,
    branch: str,
    default_branch: str,
    change: bytes,
    message: str,
    identity: checkout.Identity,
) -> checkout.Committed:
    """One commit with ``change`` on the remote's ``branch`` (created from ``default_branch`` when
    missing), pushed as a fast-forward: a branch that moved meanwhile is merged 3-way first, one
    that moves during the push refuses it (ApplyConflict) and nothing is committed."""
    ref = checkout.branch_ref(repo, branch)
    tip = _fetch_branch_if_any(repo, url, branch)
    start = tip or fetch_branch(repo, url, default_branch)
    commit = checkout.commit_as(repo, checkout.merged_tree(repo, start, change), start, message, identity)
    # No '+': the remote takes only a fast-forward of what was fetched.
    result = git.run(repo, ["push", "--quiet", "--no-verify", url, f"{commit}:{ref}"], check=False)
    if result.returncode != 0:
        reason = result.stderr.decode(errors="replace").strip()
        if "rejected" in reason:
            raise ApplyConflict(f"{branch} on {url} moved during the accept; nothing was committed")
        raise RemoteUnavailable(f"cannot push {branch} to {url}: {reason}")
    return checkout.Committed(commit, branch)


def fetch_session(repo: Path, url: str, session_id: int) -> str | None:
    """Fetch the session's base and snapshot refs; the snapshot commit, or None when the remote
    has none (no turn of the session pushed one). The base is fetched either way, when there."""
    with_snapshot = [f"+{remote_ref(session_id, name)}:{local_ref(session_id, name)}" for name in (SNAPSHOT, BASE)]
    if git.run(repo, ["fetch", "--quiet", "--no-tags", _checked_url(url), *with_snapshot], check=False).returncode:
        base_only = f"+{remote_ref(session_id, BASE)}:{local_ref(session_id, BASE)}"
        git.run(repo, ["fetch", "--quiet", "--no-tags", url, base_only], check=False)  # absent: handled by the caller
        return None
    return git.rev_parse(repo, local_ref(session_id, SNAPSHOT))


def push_session(repo: Path, url: str, session_id: int, *, snapshot: str | None, base: str | None) -> None:
    """Publish the session's base and/or snapshot on the remote, overwriting what was there."""
    refspecs = [f"+{base}:{remote_ref(session_id, BASE)}"] if base is not None else []
    if snapshot is not None:
        refspecs.append(f"+{snapshot}:{remote_ref(session_id, SNAPSHOT)}")
    if not refspecs:
        return
    result = git.run(repo, ["push", "--quiet", "--no-verify", _checked_url(url), *refspecs], check=False)
    if result.returncode != 0:
        raise RemoteUnavailable(
            f"cannot push session {session_id} to {url}: {result.stderr.decode(errors='replace').strip()}"
        )


def have_commit(repo: Path, commit: str) -> bool:
    return git.rev_parse(repo, commit + "^{commit}") is not None


class Publisher:
    """The snapshot pushes after turns, in the background: a turn ends without waiting for the
    remote, and a session's next turn (``wait``) starts only once its last snapshot is there.

    One push at a time per session, in order. The base is pushed only when it is not the one
    this process last pushed for the session: after the first turn only an accept or a rebase
    moves it, and they push it themselves, so a late snapshot push never puts back an old base.
    A push that fails only logs: a node taking the session over starts from the last snapshot
    that was pushed. Shared by a manager and its ``bound`` copies.
    """

    def __init__(self) -> None:
        self._pushing: dict[int, threading.Thread] = {}
        self._bases: dict[int, str] = {}
        self._lock = threading.Lock()

    def push(self, repo: Path, url: str, session_id: int, snapshot: str, base: str) -> None:
        with self._lock:
            before = self._pushing.get(session_id)
            thread = threading.Thread(
                target=self._push,
                args=(before, repo, url, session_id, snapshot, base),
                name=f"switchyard-push-{session_id}",
                daemon=True,  # a hung remote must not hold the process; finish() waits with a deadline
            )
            self._pushing[session_id] = thread
            thread.start()

    def published_base(self, session_id: int, base: str) -> None:
        """An accept or a rebase pushed the session's new base itself."""
        with self._lock:
            self._bases[session_id] = base

    def busy(self, session_id: int) -> bool:
        return session_id in self._pushing

    def wait(self, session_id: int) -> None:
        """Until the session's pushes so far have ended (blocking)."""
        thread = self._pushing.get(session_id)
        if thread is not None:
            thread.join()

    def finish(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for every push; how many are still running then."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._pushing.values())
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return sum(thread.is_alive() for thread in threads)

    def _push(
        self, before: threading.Thread | None, repo: Path, url: str, session_id: int, snapshot: str, base: str
    ) -> None:
        if before is not None:
            before.join()
        with self._lock:
            known = self._bases.get(session_id)
        new_base = base if known != base else None
        try:
            push_session(repo, url, session_id, snapshot=snapshot, base=new_base)
            with self._lock:
                # Unless an accept published a newer one meanwhile.
                if new_base is not None and self._bases.get(session_id) == known:
                    self._bases[session_id] = new_base
        except RemoteUnavailable as exc:
            log.warning("worktree.snapshot_not_pushed", session_id=session_id, error=exc)
        finally:
            with self._lock:
                if self._pushing.get(session_id) is threading.current_thread():
                    del self._pushing[session_id]
