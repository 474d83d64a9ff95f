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
4. ``ask`` asks a person when the turn has an asker (backends.approval: the WebSocket's
   ``permission_request``), and is a denial otherwise (a PTY agent, no asker).

``[permissions.agents.<agent>]`` and ``[permissions.projects.<project name>]`` override the
actions (and add command rules) for one agent or one project; a project's override wins over an
agent's (:meth:`PermissionPolicy.effective`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
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


DEFAULT_ASK_TIMEOUT = 300.0


@dataclass(frozen=True)
class PermissionOverride:
    """``[permissions.agents.<name>]`` / ``[permissions.projects.<name>]``: unset keys keep the
    policy's; ``commands`` are added to (or replace, per program) the policy's command rules."""

    read: str | None = None
    edit: str | None = None
    execute: str | None = None
    commands: dict[str, CommandRule] | None = None
    fetch: str | None = None
    other: str | None = None


@dataclass(frozen=True)
class PermissionPolicy:
    """``[permissions]``: allow | deny | ask per kind of tool; ask asks a person when one can be asked."""

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
    # How long an ``ask`` waits for a person; unanswered, the request is denied.
    ask_timeout: float = DEFAULT_ASK_TIMEOUT
    # opencode's question tool (the model asks its user): "ask" a person, or "deny" (tool off).
    questions: str = DENY
    agents: Mapping[str, PermissionOverride] = field(default_factory=dict)
    projects: Mapping[str, PermissionOverride] = field(default_factory=dict)

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
        if self.ask_timeout <= 0:
            raise ValueError("permissions.ask_timeout must be positive")
        if self.questions not in (ASK, DENY):
            raise ValueError("permissions.questions must be ask or deny")
        for scope, overrides in (("agents", self.agents), ("projects", self.projects)):
            for name, override in overrides.items():
                self._apply(override, f"permissions.{scope}.{name}")  # validates the values

    def effective(self, agent: str | None, project: str | None) -> PermissionPolicy:
        """The policy for one turn: the agent's override, then the project's, applied."""
        policy = replace(self, agents={}, projects={})
        for override, key in (
            (self.agents.get(agent or ""), f"permissions.agents.{agent}"),
            (self.projects.get(project or ""), f"permissions.projects.{project}"),
        ):
            if override is not None:
                policy = policy._apply(override, key)
        return policy

    def _apply(self, override: PermissionOverride, key: str) -> PermissionPolicy:
        changes: dict[str, Any] = {
            f.name: getattr(override, f.name) for f in fields(override) if getattr(override, f.name) is not None
        }
        if override.commands is not None:
            changes["commands"] = {**self.commands, **override.commands}
        try:
            return replace(self, agents={}, projects={}, **changes)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None

    @property
    def asks_questions(self) -> bool:
        """Does the model's question tool go to a person (else it is switched off)?"""
        return self.questions == ASK

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
    # The policy says ask: a person decides if one can be asked, else it stays a denial.
    ask: bool = False


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
        return Verdict(False, f"{prefix}permissions.{field_name} is ask, and nobody can be asked", ask=True)
    return Verdict(False, f"{prefix}permissions.{field_name} is deny")
