"""What an unattended agent may do: the permission policy and the decision it makes.

The policy is transport-neutral. An ACP ``session/request_permission`` and an OpenCode
``permission.asked`` are both described as a :class:`PermissionRequest` (the ACP tool kind, the
paths involved, the command and where it runs) and answered by :func:`decide` with a
:class:`Verdict`; each transport maps the verdict to its own answer. ``opencode run`` cannot ask
anyone, so :func:`opencode_permission` turns the same policy into opencode's permission config.

Rules, in order:

1. Any path outside the worktree (symlinks followed) is denied, whatever the tool; an edit,
   delete or move inside the git metadata (``.git`` at any depth, any case) is denied too.
2. The tool kind selects the policy field: ``read`` (read, search, think), ``edit`` (edit,
   delete, move), ``execute``, ``fetch``, and ``other`` for everything else.
3. ``execute`` is allowed when the command rules allow the command, every argument included
   (:mod:`backends.commands`); otherwise the ``execute`` action applies.
4. ``ask`` is denied: there is no one to ask during an unattended turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from backends.commands import DEFAULT_RULES, CommandRefused, CommandRule, check_command, exact_commands
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

# A mode whose id or name contains one of these (compared without case, spaces or punctuation)
# lets the agent act without asking: a task may not select it.
DEFAULT_DENIED_MODES: tuple[str, ...] = (
    "bypass",
    "yolo",
    "skip-permissions",
    "dangerously",
    "full-auto",
    "auto-approve",
)

# opencode's edit patterns are paths relative to the worktree; "*" also matches "/".
GIT_METADATA_PATTERNS = (".git", ".git/*", "*/.git", "*/.git/*")

EXECUTE_ALLOW_REPLACED = (
    "permissions.execute_allow (word prefixes) was replaced by command rules that check every "
    "argument: the defaults cover ls, cat, head, tail, wc, pwd, grep, rg, find and git "
    "status/diff/log/show/blame; add a program with [permissions.commands.<program>], e.g. "
    '[permissions.commands.pytest] args = "any" (any arguments, paths confined to the worktree)'
)


@dataclass(frozen=True)
class PermissionPolicy:
    """``[permissions]``: allow | deny | ask per kind of tool; ask means deny when unattended."""

    read: str = ALLOW
    # Edits are only ever allowed inside the worktree, never in its git metadata (rule 1).
    edit: str = ALLOW
    # Commands the command rules do not allow.
    execute: str = DENY
    # [permissions.commands.<program>]: rules added to (or replacing) the default ones.
    commands: dict[str, CommandRule] = field(default_factory=dict)
    # false: only the programs in `commands`.
    default_commands: bool = True
    fetch: str = DENY
    other: str = ALLOW
    # Modes a task may not select (backends.modes).
    denied_modes: tuple[str, ...] = DEFAULT_DENIED_MODES
    # Replaced by `commands`; any entry is refused with an explanation (EXECUTE_ALLOW_REPLACED).
    execute_allow: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("read", "edit", "execute", "fetch", "other"):
            if getattr(self, name) not in ACTIONS:
                raise ValueError(f"permissions.{name} must be one of {', '.join(ACTIONS)}")
        if self.execute_allow:
            raise ValueError(EXECUTE_ALLOW_REPLACED)
        for program in self.commands:
            if not program or "/" in program or program != program.strip():
                raise ValueError(f"permissions.commands: {program!r} must be a program name, not a path")
        if not all(self.denied_modes):
            raise ValueError("permissions.denied_modes entries must not be empty")

    @cached_property
    def rules(self) -> dict[str, CommandRule]:
        """The command rules in force: the defaults (unless switched off) and the configured ones."""
        return {**(DEFAULT_RULES if self.default_commands else {}), **self.commands}


@dataclass(frozen=True)
class PermissionRequest:
    """One request, whatever the transport: the ACP tool kind, the paths, the command if any."""

    kind: str
    title: str = ""
    paths: tuple[str, ...] = ()
    # A shell command line (str) or an argv (sequence).
    command: str | Sequence[str] | None = None
    # Where the command runs, if the agent said (default: the worktree).
    cwd: str | None = None


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str


def decide(policy: PermissionPolicy, request: PermissionRequest, root: Path) -> Verdict:
    """Apply the policy to one request of an agent working in ``root``."""
    kind = request.kind
    for path in (*request.paths, *([request.cwd] if request.cwd else [])):
        try:
            confine(root, path, for_write=kind in EDIT_KINDS)
        except BackendError as exc:
            return Verdict(False, str(exc))
    if kind == EXECUTE_KIND:
        if request.command is None:
            return _action(policy.execute, "execute", "the request names no command")
        cwd = Path(request.cwd) if request.cwd else None
        try:
            check_command(policy.rules, request.command, root, cwd)
        except CommandRefused as exc:
            return _action(policy.execute, "execute", str(exc))
        return Verdict(True, "permissions.commands allow the command")
    if kind in READ_KINDS:
        return _action(policy.read, "read")
    if kind in EDIT_KINDS:
        return _action(policy.edit, "edit")
    if kind == FETCH_KIND:
        return _action(policy.fetch, "fetch")
    return _action(policy.other, "other")


def opencode_permission(policy: PermissionPolicy) -> dict[str, Any]:
    """The policy as opencode's ``permission`` config, for runs where opencode cannot ask us.

    opencode's rules match a command's text, not its arguments, so only the commands the rules
    allow without any argument (``ls``, ``git status``) are allowed, exactly; every other command
    gets the ``execute`` action. opencode answers ``ask`` itself when nobody can be asked
    (``opencode run`` auto-rejects), and ``external_directory`` is always denied.
    """
    bash: dict[str, str] = {"*": policy.execute}
    for command in exact_commands(policy.rules):
        bash[command] = ALLOW
    return {
        "*": policy.other,
        "read": policy.read,
        "glob": policy.read,
        "grep": policy.read,
        "list": policy.read,
        "lsp": policy.read,
        # The worktree's .git file and any git metadata: never written (rule 1).
        "edit": {"*": policy.edit, **dict.fromkeys(GIT_METADATA_PATTERNS, DENY)},
        "bash": bash,
        "webfetch": policy.fetch,
        "websearch": policy.fetch,
        "external_directory": DENY,
        "question": DENY,
    }


def _action(action: str, field_name: str, detail: str = "") -> Verdict:
    prefix = f"{detail}; " if detail else ""
    if action == ALLOW:
        return Verdict(True, f"{prefix}permissions.{field_name} is allow")
    if action == ASK:
        return Verdict(False, f"{prefix}permissions.{field_name} is ask, and nobody is there to ask")
    return Verdict(False, f"{prefix}permissions.{field_name} is deny")
