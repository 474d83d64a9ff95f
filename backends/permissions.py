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
4. ``ask`` asks a person when the turn has an asker (backends.approval: the WebSocket's
   ``permission_request``), and is a denial otherwise (a PTY agent, no asker).

``[permissions.agents.<agent>]`` and ``[permissions.projects.<project name>]`` override the
actions (and ``execute_allow``) for one agent or one project; a project's override wins over an
agent's (:meth:`PermissionPolicy.effective`).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
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


DEFAULT_ASK_TIMEOUT = 300.0


@dataclass(frozen=True)
class PermissionOverride:
    """``[permissions.agents.<name>]`` / ``[permissions.projects.<name>]``: unset keys keep the policy's."""

    read: str | None = None
    edit: str | None = None
    execute: str | None = None
    execute_allow: tuple[str, ...] | None = None
    fetch: str | None = None
    other: str | None = None


@dataclass(frozen=True)
class PermissionPolicy:
    """``[permissions]``: allow | deny | ask per kind of tool; ask asks a person when one can be asked."""

    read: str = ALLOW
    # Edits are only ever allowed inside the worktree (rule 1).
    edit: str = ALLOW
    # Commands not covered by execute_allow.
    execute: str = DENY
    execute_allow: tuple[str, ...] = DEFAULT_EXECUTE_ALLOW
    fetch: str = DENY
    other: str = ALLOW
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
        for prefix in self.execute_allow:
            if not _split(prefix) or SHELL_OPERATORS.search(prefix):
                raise ValueError(f"permissions.execute_allow entry {prefix!r} must be plain words")
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
        changes = {f.name: getattr(override, f.name) for f in fields(override) if getattr(override, f.name) is not None}
        try:
            return replace(self, agents={}, projects={}, **changes)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None

    @property
    def asks_questions(self) -> bool:
        """Does the model's question tool go to a person (else it is switched off)?"""
        return self.questions == ASK


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
    # The policy says ask: a person decides if one can be asked, else it stays a denial.
    ask: bool = False


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
        return Verdict(False, f"permissions.{field} is ask, and nobody can be asked", ask=True)
    return Verdict(False, f"permissions.{field} is deny")


def _split(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:
        return []
