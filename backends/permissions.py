"""What an unattended agent may do: the permission policy and the decision it makes.

The policy is transport-neutral. An ACP ``session/request_permission`` and an OpenCode
``permission.asked`` are both described as a :class:`PermissionRequest` (the ACP tool kind, the
paths involved, the command) and answered by :func:`decide` with a :class:`Verdict`; each
transport maps the verdict to its own answer. ``opencode run`` cannot ask anyone, so
:func:`opencode_permission` turns the same policy into opencode's permission config.

Rules, in order:

1. Any path outside the worktree (symlinks followed) is denied, whatever the tool.
2. The tool kind selects the policy field: ``read`` (read, search, think), ``edit`` (edit,
   delete, move), ``execute``, ``fetch``, and ``other`` for everything else.
3. ``execute`` is allowed when the command starts with an entry of ``execute_allow`` (compared
   word by word) and contains no shell operators; otherwise the ``execute`` action applies.
4. ``ask`` is denied: there is no one to ask during an unattended turn.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.confine import confine
from backends.errors import BackendError

ALLOW = "allow"
DENY = "deny"
ASK = "ask"
ACTIONS = (ALLOW, DENY, ASK)

READ_KINDS = frozenset({"read", "search", "think"})
EDIT_KINDS = frozenset({"edit", "delete", "move"})
EXECUTE_KIND = "execute"
FETCH_KIND = "fetch"

# Read-only commands; operators extend the list (e.g. with their test runner) in configuration.
DEFAULT_EXECUTE_ALLOW: tuple[str, ...] = (
    "ls",
    "pwd",
    "cat",
    "head",
    "tail",
    "wc",
    "grep",
    "rg",
    "git status",
    "git diff",
    "git log",
    "git show",
)

# Chaining, pipes, redirection, substitution, expansion: a command using any of these could do
# more than its first words say, so it never matches the allow-list.
SHELL_OPERATORS = re.compile(r"[;&|<>`$(){}\\\n\r]")


@dataclass(frozen=True)
class PermissionPolicy:
    """``[permissions]``: allow | deny | ask per kind of tool; ask means deny when unattended."""

    read: str = ALLOW
    # Edits are only ever allowed inside the worktree (rule 1).
    edit: str = ALLOW
    # Commands not covered by execute_allow.
    execute: str = DENY
    execute_allow: tuple[str, ...] = DEFAULT_EXECUTE_ALLOW
    fetch: str = DENY
    other: str = ALLOW

    def __post_init__(self) -> None:
        for name in ("read", "edit", "execute", "fetch", "other"):
            if getattr(self, name) not in ACTIONS:
                raise ValueError(f"permissions.{name} must be one of {', '.join(ACTIONS)}")
        for prefix in self.execute_allow:
            if not _split(prefix) or SHELL_OPERATORS.search(prefix):
                raise ValueError(f"permissions.execute_allow entry {prefix!r} must be plain words")


@dataclass(frozen=True)
class PermissionRequest:
    """One request, whatever the transport: the ACP tool kind, the paths, the command if any."""

    kind: str
    title: str = ""
    paths: tuple[str, ...] = ()
    # A shell command line (str) or an argv (sequence).
    command: str | Sequence[str] | None = None


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str


def decide(policy: PermissionPolicy, request: PermissionRequest, root: Path) -> Verdict:
    """Apply the policy to one request of an agent working in ``root``."""
    for path in request.paths:
        try:
            confine(root, path)
        except BackendError as exc:
            return Verdict(False, str(exc))
    kind = request.kind
    if kind == EXECUTE_KIND:
        if request.command is not None and command_allowed(request.command, policy.execute_allow):
            return Verdict(True, "command is in permissions.execute_allow")
        return _action(policy.execute, "execute")
    if kind in READ_KINDS:
        return _action(policy.read, "read")
    if kind in EDIT_KINDS:
        return _action(policy.edit, "edit")
    if kind == FETCH_KIND:
        return _action(policy.fetch, "fetch")
    return _action(policy.other, "other")


def command_allowed(command: str | Sequence[str], allow: Iterable[str]) -> bool:
    """True if ``command`` starts with one of the ``allow`` prefixes and uses no shell operators."""
    if isinstance(command, str):
        if SHELL_OPERATORS.search(command):
            return False
        argv = _split(command)
    else:
        argv = list(command)
    if not argv:
        return False
    return any(argv[: len(words)] == words for words in map(_split, allow) if words)


def opencode_permission(policy: PermissionPolicy) -> dict[str, Any]:
    """The policy as opencode's ``permission`` config, for runs where opencode cannot ask us.

    opencode answers ``ask`` itself when nobody can be asked (``opencode run`` auto-rejects), and
    ``external_directory`` is always denied.
    """
    bash: dict[str, str] = {"*": policy.execute}
    for prefix in policy.execute_allow:
        bash[prefix] = ALLOW
        bash[f"{prefix} *"] = ALLOW
    return {
        "*": policy.other,
        "read": policy.read,
        "glob": policy.read,
        "grep": policy.read,
        "list": policy.read,
        "lsp": policy.read,
        "edit": policy.edit,
        "bash": bash,
        "webfetch": policy.fetch,
        "websearch": policy.fetch,
        "external_directory": DENY,
        "question": DENY,
    }


def _action(action: str, field: str) -> Verdict:
    if action == ALLOW:
        return Verdict(True, f"permissions.{field} is allow")
    if action == ASK:
        return Verdict(False, f"permissions.{field} is ask, and nobody is there to ask")
    return Verdict(False, f"permissions.{field} is deny")


def _split(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:
        return []
