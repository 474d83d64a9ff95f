"""Blocking git plumbing for session worktrees (call from async code via ``anyio.to_thread``).

Every command is an argument list run with a cleaned environment: hooks are disabled, pathspecs
are literal, messages are in the C locale, and no GIT_DIR/GIT_INDEX_FILE of the caller leaks in.

Two rules keep work from being lost:

* The worktree's own index is never used for diffs: a snapshot copies it (for its stat cache)
  to a temporary index, stages everything there (``add --all`` honours .gitignore) and writes a
  tree. Scratch indexes under a temporary directory do the rest (new bases, 3-way merges,
  restores), so only the files a caller names are ever written.
* Writes into the project checkout go through ``git apply``, which applies all of a patch or
  nothing. A 3-way merge is done in a scratch index first; only a clean result, re-expressed
  as a patch against the checkout's current content, is applied.

A session worktree's ``.git`` file is the agent's to rewrite, so it is never trusted: every git
command on a worktree names its git dir and work tree (``--git-dir``, ``--work-tree``), found
from the project repository's side (:func:`find_checkout`: the administrative directory whose
``gitdir`` points back at the worktree), and :func:`restore_dotgit` puts the ``.git`` file back
before each turn and each snapshot. Worktrees are created locked, so no ``worktree prune`` drops
one whose ``.git`` file an agent deleted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from worktrees.errors import ApplyConflict, GitCommandFailed, PathOutsideRoot, RestoreRefused, WorktreeBroken

GIT_CONFIG = ("-c", "core.hooksPath=/dev/null", "-c", "core.quotePath=false", "-c", "commit.gpgSign=false")
# Variables that would point git at another repository, index or work tree than the one we name.
LEAKY_ENV = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
)
IDENTITY = {
    "GIT_AUTHOR_NAME": "Switchyard",
    "GIT_AUTHOR_EMAIL": "switchyard@localhost",
    "GIT_COMMITTER_NAME": "Switchyard",
    "GIT_COMMITTER_EMAIL": "switchyard@localhost",
}
# Snapshot commits carry a fixed date, so the same base and content give the same commit id.
FIXED_DATE = "@946684800 +0000"
EMPTY_SHA = "0" * 40

ApplyMode = Literal["clean", "merged"]


def _environment(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LEAKY_ENV}
    env.update(LC_ALL="C", GIT_TERMINAL_PROMPT="0", GIT_LITERAL_PATHSPECS="1")
    if extra:
        env.update(extra)
    return env


def run(
    cwd: Path,
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    check: bool = True,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """git with Switchyard's configuration; ``timeout`` raises subprocess.TimeoutExpired."""
    result = subprocess.run(
        ["git", *GIT_CONFIG, *args],
        cwd=cwd,
        env=_environment(env),
        input=stdin if stdin is not None else b"",
        capture_output=True,
        check=False,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise GitCommandFailed(list(args), result.returncode, result.stderr.decode(errors="replace"))
    return result


def output(cwd: Path, args: Sequence[str], *, env: Mapping[str, str] | None = None, stdin: bytes | None = None) -> str:
    return run(cwd, args, env=env, stdin=stdin).stdout.decode(errors="surrogateescape").strip()


def nul_joined(paths: Iterable[str]) -> bytes:
    return b"".join(os.fsencode(p) + b"\0" for p in paths)


# ---------------------------------------------------------------------------- refs and commits


def rev_parse(repo: Path, rev: str) -> str | None:
    result = run(repo, ["rev-parse", "--verify", "--quiet", "--end-of-options", rev], check=False)
    return result.stdout.decode().strip() if result.returncode == 0 else None


def head_commit(repo: Path) -> str:
    commit = rev_parse(repo, "HEAD^{commit}")
    if commit is None:
        raise WorktreeBroken(f"{repo}: the repository has no commit to branch a session from")
    return commit


def update_ref(repo: Path, ref: str, new: str, old: str | None = None) -> bool:
    """Point ``ref`` at ``new``; with ``old``, only if it still points there. False if it moved."""
    args = ["update-ref", "-m", "switchyard", ref, new]
    if old is not None:
        args.append(old)
    return run(repo, args, check=old is None).returncode == 0


def commit_tree(repo: Path, tree: str, parent: str, message: str, *, fixed_date: bool = False) -> str:
    env = dict(IDENTITY)
    if fixed_date:
        env.update(GIT_AUTHOR_DATE=FIXED_DATE, GIT_COMMITTER_DATE=FIXED_DATE)
    return output(repo, ["commit-tree", tree, "-p", parent, "-F", "-"], env=env, stdin=message.encode())


@contextmanager
def scratch_index(seed: Path | None = None) -> Iterator[dict[str, str]]:
    """Environment for a throw-away index, optionally a copy of ``seed`` (keeps its stat cache)."""
    with tempfile.TemporaryDirectory(prefix="switchyard-index-") as tmp:
        index = Path(tmp) / "index"
        if seed is not None and seed.is_file():
            shutil.copy2(seed, index)  # copy2 keeps the mtime git's racy-clean check relies on
        yield {"GIT_INDEX_FILE": str(index)}


def tree_with_patch(repo: Path, start: str, patch: bytes, *, reverse: bool = False) -> str:
    """The tree of ``start`` with ``patch`` applied (or reverted), built in a scratch index."""
    with scratch_index() as env:
        run(repo, ["read-tree", start], env=env)
        run(repo, ["apply", "--cached", *(["--reverse"] if reverse else []), "-"], env=env, stdin=patch)
        return output(repo, ["write-tree"], env=env)


# ---------------------------------------------------------------------------- worktrees


@dataclass(frozen=True)
class Checkout:
    """A session worktree as Switchyard's git sees it: the work tree and its administrative
    directory in the project repository (``<repo>/.git/worktrees/<name>``), never its ``.git`` file."""

    repo: Path
    work_tree: Path
    git_dir: Path

    @property
    def args(self) -> list[str]:
        """The options that make git use exactly this git dir and work tree."""
        return [f"--git-dir={self.git_dir}", f"--work-tree={self.work_tree}"]


def common_dir(repo: Path) -> Path:
    """The project repository's git directory (objects, refs, and every worktree's admin dir)."""
    dotgit = repo / ".git"
    if dotgit.is_dir() and not dotgit.is_symlink():
        return Path(os.path.realpath(dotgit))
    return Path(output(repo, ["rev-parse", "--path-format=absolute", "--git-common-dir"]))


def find_checkout(repo: Path, worktree: Path) -> Checkout | None:
    """The worktree's administrative directory, found from the repository's side, if it has one.

    An admin dir belongs to ``worktree`` when its ``gitdir`` file names ``<worktree>/.git``; the
    one named after the worktree is tried first.
    """
    work_tree = Path(os.path.realpath(worktree))
    if not work_tree.is_dir():
        return None
    admin = common_dir(repo) / "worktrees"
    named = admin / work_tree.name
    candidates = [named, *(p for p in sorted(admin.iterdir()) if p != named)] if admin.is_dir() else []
    for candidate in candidates:
        try:
            pointer = Path((candidate / "gitdir").read_text().strip())
        except OSError:
            continue
        points_back = pointer.name == ".git" and Path(os.path.realpath(pointer.parent)) == work_tree
        if points_back and (candidate / "HEAD").is_file():
            return Checkout(repo, work_tree, candidate)
    return None


def restore_dotgit(checkout: Checkout) -> bool:
    """Make the worktree's ``.git`` the file git wrote (pointing at its admin dir); True if it was not."""
    dotgit = checkout.work_tree / ".git"
    expected = f"gitdir: {checkout.git_dir}\n"
    try:
        if dotgit.is_file() and not dotgit.is_symlink() and dotgit.read_text() == expected:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    if dotgit.is_dir() and not dotgit.is_symlink():
        shutil.rmtree(dotgit)
    else:
        dotgit.unlink(missing_ok=True)
    fd = os.open(dotgit, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w") as fh:
        fh.write(expected)
    return True


def trusted_checkout(repo: Path, worktree: Path) -> Checkout:
    """:func:`find_checkout` with the ``.git`` file restored; WorktreeBroken if there is none."""
    checkout = find_checkout(repo, worktree)
    if checkout is None:
        raise WorktreeBroken(f"{worktree} is not a git worktree of {repo}")
    restore_dotgit(checkout)
    return checkout


def inside_root(root: Path, path: Path) -> Path:
    """``path`` resolved (symlinks followed), refused unless it lies strictly inside ``root``."""
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(path))
    if real == real_root or not real.is_relative_to(real_root):
        raise PathOutsideRoot(f"{path} resolves to {real}, outside the worktree root {real_root}; not touched")
    return real


def branch_exists(repo: Path, branch: str) -> bool:
    return rev_parse(repo, f"refs/heads/{branch}") is not None


def add_worktree(repo: Path, path: Path, branch: str, base: str) -> None:
    """Create (or adopt) the worktree at ``path`` on ``branch``; the branch starts at ``base``.

    A stale registration of a deleted directory is pruned first. An existing branch is checked
    out as it is (it may hold the agent's own commits); a missing one is recreated at ``base``.
    """
    if not path.exists():
        # A registration of the deleted directory is stale; it is locked, so unlock it for prune.
        run(repo, ["worktree", "unlock", str(path)], check=False)
    run(repo, ["worktree", "prune"])
    if path.exists():
        existing = find_checkout(repo, path)
        if existing is not None:
            restore_dotgit(existing)
            return
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        else:
            raise WorktreeBroken(f"{path} exists but is not a git worktree; move it away to recreate the session")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Locked: a `worktree prune` never drops it, even while an agent has deleted its .git file.
    if branch_exists(repo, branch):
        run(repo, ["worktree", "add", "--quiet", "--lock", str(path), branch])
    else:
        run(repo, ["worktree", "add", "--quiet", "--lock", "-b", branch, str(path), base])


def remove_worktree(repo: Path, path: Path, branch: str, refs: Sequence[str]) -> None:
    """Remove the worktree directory, its registration, its branch and the named refs."""
    if path.exists():
        trusted_checkout(repo, path)  # refuses a directory that is not this repository's worktree
        # Twice: the worktree is locked.
        run(repo, ["worktree", "remove", "--force", "--force", str(path)])
    run(repo, ["worktree", "prune"])
    if branch_exists(repo, branch):
        run(repo, ["branch", "-D", "--", branch])
    run(repo, ["update-ref", "--stdin"], stdin="".join(f"delete {r}\n" for r in refs).encode())


def snapshot(checkout: Checkout, base: str, message: str) -> str:
    """A commit (parent ``base``) of everything in the worktree that is not ignored.

    The worktree's own index and HEAD are left as they are, and its ``.git`` file is restored
    first. The commit id depends only on the base and the content, so an unchanged worktree
    gives the same id again.
    """
    restore_dotgit(checkout)
    with scratch_index(checkout.git_dir / "index") as env:
        run(checkout.work_tree, [*checkout.args, "add", "--all"], env=env)
        tree = output(checkout.work_tree, [*checkout.args, "write-tree"], env=env)
    return commit_tree(checkout.repo, tree, base, message, fixed_date=True)


def restore_snapshot(checkout: Checkout, snapshot: str) -> None:
    """Make a fresh worktree's files those of ``snapshot`` (a session moving to this node); its
    HEAD and index stay at the branch, so the content shows as the agent's uncommitted work."""
    run(checkout.work_tree, [*checkout.args, "read-tree", "-m", "-u", "HEAD", snapshot])
    run(checkout.work_tree, [*checkout.args, "reset", "--quiet"])


def sync_index_paths(checkout: Checkout, paths: Sequence[str]) -> None:
    """Reset the worktree's own index entries for ``paths`` to HEAD (files are not touched)."""
    args = [*checkout.args, "reset", "--quiet", "--pathspec-from-file=-", "--pathspec-file-nul"]
    run(checkout.work_tree, args, stdin=nul_joined(paths))


# ---------------------------------------------------------------------------- diffs


def raw_changes(repo: Path, old: str, new: str, paths: Sequence[str] = ()) -> bytes:
    """``diff-tree --raw --numstat -z`` between two commits or trees (parsed by worktrees.diff)."""
    args = ["diff-tree", "-r", "-M", "-z", "--raw", "--numstat", old, new]
    return run(repo, [*args, "--", *paths] if paths else args).stdout


def patch(repo: Path, old: str, new: str, paths: Sequence[str] = ()) -> bytes:
    """The full patch between two commits or trees: binary hunks and full blob ids, ready for 3-way."""
    args = ["diff-tree", "-r", "-M", "-p", "--binary", "--full-index", "--no-color", old, new]
    return run(repo, [*args, "--", *paths] if paths else args).stdout


def blob_sizes(repo: Path, blobs: Iterable[str]) -> dict[str, int]:
    listing = output(
        repo, ["cat-file", "--batch-check=%(objectname) %(objectsize)"], stdin="".join(f"{b}\n" for b in blobs).encode()
    )
    sizes: dict[str, int] = {}
    for line in listing.splitlines():
        name, _, size = line.partition(" ")
        if size.isdigit():
            sizes[name] = int(size)
    return sizes


# ---------------------------------------------------------------------------- accept and reject


def apply_to_checkout(repo: Path, change: bytes, paths: Sequence[str]) -> ApplyMode:
    """Apply ``change`` to the checkout's files (not its index), all or nothing.

    First a plain ``git apply --check``; when local edits get in the way, a 3-way merge in a
    scratch index seeded with the checkout's current content of ``paths``. Conflicts raise
    ApplyConflict (with git's own reason) and leave the checkout exactly as it was.
    """
    exact, mode = checkout_patch(repo, change, paths)
    apply_checked(repo, exact)
    return mode


def checkout_patch(repo: Path, change: bytes, paths: Sequence[str]) -> tuple[bytes, ApplyMode]:
    """The patch that makes the checkout's files hold ``change`` (see apply_to_checkout), and
    whether local edits had to be merged; nothing is written. ApplyConflict if it cannot."""
    plain = run(repo, ["apply", "--check", "-"], stdin=change, check=False)
    if plain.returncode == 0:
        return change, "clean"
    index = repo / output(repo, ["rev-parse", "--git-path", "index"])
    with scratch_index(index) as env:
        try:
            run(repo, ["update-index", "--add", "--remove", "-z", "--stdin"], env=env, stdin=nul_joined(paths))
            ours = output(repo, ["write-tree"], env=env)
        except GitCommandFailed as exc:
            raise ApplyConflict(f"cannot read the project's current files: {exc.stderr.strip()}") from exc
        merge = run(repo, ["apply", "--cached", "--3way", "-"], env=env, stdin=change, check=False)
        if merge.returncode != 0:
            raise ApplyConflict(conflict_reason(plain.stderr, merge.stderr))
        merged = output(repo, ["write-tree"], env=env)
    # The merge result as a patch against exactly what the checkout holds now.
    return patch(repo, ours, merged), "merged"


def revert_checkout(repo: Path, applied: bytes) -> None:
    """Take back a patch apply_to_checkout/checkout_patch applied a moment ago."""
    run(repo, ["apply", "--reverse", "-"], stdin=applied)


def apply_checked(repo: Path, change: bytes) -> None:
    """``git apply`` checks every hunk before it writes a file, so a failure here wrote nothing."""
    result = run(repo, ["apply", "-"], stdin=change, check=False)
    if result.returncode != 0:
        reason = result.stderr.decode(errors="replace").strip()
        raise ApplyConflict(f"the project checkout changed during the accept: {reason}")


# Lines of git apply's stderr that say nothing about why it failed.
_APPLY_NOISE = ("Falling back to", "Applied patch to ", "Checking patch ")


def conflict_reason(*stderrs: bytes) -> str:
    """Why git would not apply a change, in git's words (its error lines and the paths it left
    conflicted, from the plain and the 3-way attempt)."""
    lines: list[str] = []
    for stderr in stderrs:
        for line in stderr.decode(errors="replace").splitlines():
            line = line.strip()
            wanted = line.endswith("with conflicts.") or (line and not line.startswith(_APPLY_NOISE))
            if wanted and line not in lines:
                lines.append(line)
    reason = "; ".join(lines) or "the change does not apply"
    return f"git apply: {reason}"


@dataclass(frozen=True)
class RestorePlan:
    """Paths to put back as they are in the base, and paths the base does not have."""

    restore: tuple[str, ...]
    delete: tuple[str, ...]


def restore_paths(checkout: Checkout, base: str, plan: RestorePlan) -> None:
    """Make ``plan``'s paths in the worktree match ``base``; nothing else is written.

    Everything is checked before anything is changed: a path that is now a directory, or that
    lies below something that is no longer a directory, is refused rather than clobbered.
    """
    worktree = checkout.work_tree
    deleting = set(plan.delete)
    for rel in (*plan.restore, *plan.delete):
        _check_restorable(worktree, rel, deleting)
    for rel in plan.delete:
        target = worktree / rel
        if target.is_symlink() or target.exists():
            target.unlink()
            _remove_empty_parents(worktree, target.parent)
    if plan.restore:
        with scratch_index() as env:
            run(worktree, [*checkout.args, "read-tree", base], env=env)
            args = [*checkout.args, "checkout-index", "--force", "-z", "--stdin"]
            run(worktree, args, env=env, stdin=nul_joined(plan.restore))


def _check_restorable(worktree: Path, rel: str, deleting: set[str]) -> None:
    parts = PurePosixPath(rel).parts
    if not parts or any(p in ("", ".", "..") or p.lower() == ".git" for p in parts):
        raise RestoreRefused(f"{rel!r} is not a path inside the worktree")
    for depth in range(1, len(parts)):
        ancestor = "/".join(parts[:depth])
        if ancestor in deleting:
            continue
        full = worktree / ancestor
        if full.is_symlink() or (full.exists() and not full.is_dir()):
            raise RestoreRefused(f"{ancestor} is no longer a directory; reject it together with {rel}")
    target = worktree / rel
    if target.is_dir() and not target.is_symlink():
        raise RestoreRefused(f"{rel} is a directory now (a nested repository?); resolve it by hand")


def _remove_empty_parents(worktree: Path, directory: Path) -> None:
    while directory != worktree and directory.is_relative_to(worktree):
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent
