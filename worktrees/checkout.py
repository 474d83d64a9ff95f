"""Accepting into the project as a commit: on the checkout's current branch, or onto a named branch.

Blocking git plumbing, like worktrees.git (call it through ``anyio.to_thread``).

``commit_into_checkout`` refuses a checkout in the middle of a merge, rebase, cherry-pick or
revert, one with staged changes of its own, and a detached HEAD. It then builds the commit
from the branch's tip and the change (a 3-way merge in a scratch index when the branch moved
since the session's base), and changes the checkout in steps that each undo the one before if
they fail: the files (all or nothing, as the apply mode; a local edit in another file is never
touched, one in the same file is merged), the index entries of the change's paths, and last the
branch, moved only from the tip it was built on. ``commit_onto_branch`` commits onto another
branch (created at the checkout's HEAD when missing) and touches no file, index or HEAD.

Commit messages end with the trailers ``Switchyard-Session:`` and ``Switchyard-Change:`` (added
by ``git interpret-trailers``, so a reviewer's own trailers stay one block).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from worktrees import git
from worktrees.errors import ApplyConflict, BadBranch, CheckoutBusy, GitCommandFailed

# What git leaves in the git dir while an operation that a commit would cut into is under way.
IN_PROGRESS = (
    ("MERGE_HEAD", "a merge", "git merge --abort"),
    ("CHERRY_PICK_HEAD", "a cherry-pick", "git cherry-pick --abort"),
    ("REVERT_HEAD", "a revert", "git revert --abort"),
    ("rebase-merge", "a rebase", "git rebase --abort"),
    ("rebase-apply", "a rebase or `git am`", "git rebase --abort"),
)
SESSION_BRANCHES = "switchyard/"


@dataclass(frozen=True)
class Identity:
    """Author and committer of the commits Switchyard makes for reviewers ([worktrees] commit_*)."""

    name: str
    email: str

    def env(self) -> dict[str, str]:
        return {
            "GIT_AUTHOR_NAME": self.name,
            "GIT_AUTHOR_EMAIL": self.email,
            "GIT_COMMITTER_NAME": self.name,
            "GIT_COMMITTER_EMAIL": self.email,
        }


@dataclass(frozen=True)
class Trailers:
    session_id: int
    change_id: int

    def add_to(self, repo: Path, message: str) -> str:
        args = [
            "interpret-trailers",
            "--trailer",
            f"Switchyard-Session: {self.session_id}",
            "--trailer",
            f"Switchyard-Change: {self.change_id}",
        ]
        return git.run(repo, args, stdin=message.strip().encode() + b"\n").stdout.decode()


@dataclass(frozen=True)
class Committed:
    commit: str
    branch: str  # the branch's short name


def checkout_branch(repo: Path) -> tuple[str, str]:
    """The checkout's current branch ref and its tip, if a commit may go onto it now."""
    for name, what, abort in IN_PROGRESS:
        if os.path.lexists(repo / git.output(repo, ["rev-parse", "--git-path", name])):
            raise CheckoutBusy(f"{repo} has {what} in progress; finish it or `{abort}` before accepting as a commit")
    ref = git.run(repo, ["symbolic-ref", "-q", "HEAD"], check=False).stdout.decode().strip()
    if not ref.startswith("refs/heads/"):
        raise CheckoutBusy(f"{repo} has no branch checked out (detached HEAD); accept with --mode branch instead")
    head = git.rev_parse(repo, "HEAD^{commit}")
    if head is None:
        raise CheckoutBusy(f"{repo}: branch {ref.removeprefix('refs/heads/')} has no commit yet")
    staged = git.run(repo, ["diff-index", "--cached", "--quiet", head, "--"], check=False)
    if staged.returncode != 0:
        raise CheckoutBusy(
            f"{repo} has staged changes of its own (`git diff --cached`); commit or unstage them before "
            "accepting as a commit"
        )
    return ref, head


def merged_tree(repo: Path, onto: str, change: bytes) -> str:
    """The tree of commit ``onto`` with ``change`` applied, merging 3-way where ``onto`` moved on."""
    with git.scratch_index() as env:
        git.run(repo, ["read-tree", onto], env=env)
        result = git.run(repo, ["apply", "--cached", "--3way", "-"], env=env, stdin=change, check=False)
        if result.returncode != 0:
            raise ApplyConflict(git.conflict_reason(result.stderr))
        return git.output(repo, ["write-tree"], env=env)


def commit_as(repo: Path, tree: str, parent: str, message: str, identity: Identity) -> str:
    return git.output(repo, ["commit-tree", tree, "-p", parent, "-F", "-"], env=identity.env(), stdin=message.encode())


def commit_into_checkout(
    repo: Path, change: bytes, paths: Sequence[str], message: str, identity: Identity
) -> Committed:
    """One commit with ``change`` on the checkout's current branch; see the module docstring."""
    ref, head = checkout_branch(repo)
    commit = commit_as(repo, merged_tree(repo, head, change), head, message, identity)
    files, _ = git.checkout_patch(repo, git.patch(repo, head, commit, paths), paths)
    git.apply_checked(repo, files)
    try:
        _set_index_entries(repo, commit, paths)
    except GitCommandFailed:
        git.revert_checkout(repo, files)
        raise
    if not git.update_ref(repo, ref, commit, head):
        _set_index_entries(repo, head, paths)
        git.revert_checkout(repo, files)
        raise ApplyConflict(f"{ref.removeprefix('refs/heads/')} moved during the accept; the checkout is as it was")
    return Committed(commit, ref.removeprefix("refs/heads/"))


def _set_index_entries(repo: Path, commit: str, paths: Sequence[str]) -> None:
    """The checkout's index entries of ``paths`` as in ``commit`` (absent there: removed)."""
    listing = git.run(repo, ["ls-tree", "-r", "-z", "--full-tree", commit, "--", *paths]).stdout
    present: dict[str, bytes] = {}
    for record in listing.split(b"\0"):
        if record:
            meta, _, name = record.partition(b"\t")
            mode, _, sha = meta.split(b" ")
            present[os.fsdecode(name)] = b"%s %s\t" % (mode, sha) + name
    lines = [present.get(p, b"0 " + git.EMPTY_SHA.encode() + b"\t" + os.fsencode(p)) for p in paths]
    git.run(repo, ["update-index", "-z", "--index-info"], stdin=b"".join(line + b"\0" for line in lines))


def branch_ref(repo: Path, branch: str) -> str:
    """``refs/heads/<branch>`` if ``branch`` is a name a reviewer may commit onto."""
    if branch.startswith((SESSION_BRANCHES, "-")):
        raise BadBranch(f"{branch!r} is not a branch name you may use (switchyard/* are the sessions' own)")
    if git.run(repo, ["check-ref-format", f"refs/heads/{branch}"], check=False).returncode != 0:
        raise BadBranch(f"{branch!r} is not a valid branch name")
    return f"refs/heads/{branch}"


def check_branch_name(repo: Path, branch: str) -> str:
    """``refs/heads/<branch>`` if a reviewer may commit onto it without touching any checkout."""
    ref = branch_ref(repo, branch)
    listing = git.output(repo, ["worktree", "list", "--porcelain"])
    if f"branch {ref}" in listing.splitlines():
        raise BadBranch(f"{branch} is checked out in a working tree; accept with --mode commit there instead")
    return ref


def commit_onto_branch(repo: Path, change: bytes, branch: str, message: str, identity: Identity) -> Committed:
    """One commit with ``change`` on ``branch`` (created at the checkout's HEAD if missing)."""
    ref = check_branch_name(repo, branch)
    tip = git.rev_parse(repo, f"{ref}^{{commit}}")
    start = tip or git.head_commit(repo)
    commit = commit_as(repo, merged_tree(repo, start, change), start, message, identity)
    if not git.update_ref(repo, ref, commit, tip or git.EMPTY_SHA):
        raise ApplyConflict(f"{branch} moved during the accept; nothing was committed")
    return Committed(commit, branch)
