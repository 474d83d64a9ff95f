"""Asking a person: what a turn does when the permission policy says ``ask``.

The orchestrator hands every turn an :class:`Asker` (``Turn.asker``). A backend that meets a
permission the policy answers with ``ask`` (ACP ``session/request_permission``, opencode's
``permission.asked``) describes it as an :class:`ApprovalRequest` carrying the options the agent
offered, awaits ``asker.permission(request)`` and answers the agent with the option the
:class:`ApprovalAnswer` names. opencode's ``question.asked`` takes the same road
(:class:`QuestionRequest` → :class:`QuestionAnswer`). An asker never raises for "no": nobody
answering in time, a withdrawn request or an unreachable database are denials with a reason.
Cancelling the task that awaits withdraws the request. A PTY agent cannot ask anyone: there,
``ask`` stays a denial.

"Allow always" is remembered for the session as grants: a tool kind and a pattern
(:func:`grant_patterns`); a later request matching one (:func:`grant_covers`) is allowed without
asking.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from backends.commands import SHELL_OPERATORS
from backends.permissions import EXECUTE_KIND

OptionKind = Literal["allow_once", "allow_always", "reject_once", "reject_always"]
OPTION_KINDS: tuple[OptionKind, ...] = ("allow_once", "allow_always", "reject_once", "reject_always")
ALLOW_OPTION_KINDS: tuple[OptionKind, ...] = ("allow_once", "allow_always")
REJECT_OPTION_KINDS: tuple[OptionKind, ...] = ("reject_once", "reject_always")
ANY = "*"


@dataclass(frozen=True)
class AskOption:
    """One answer the agent offers, by its own id (``once``, ``opt-allow``, ...)."""

    option_id: str
    kind: OptionKind
    name: str


@dataclass(frozen=True)
class ApprovalRequest:
    # The agent's name for the permission (``bash``, ``edit``, an ACP tool kind) and its ACP kind.
    permission: str
    tool_kind: str
    title: str
    options: tuple[AskOption, ...]
    tool_call_id: str | None = None
    command: str | None = None
    paths: tuple[str, ...] = ()
    # What the request is about (opencode's ``patterns``: command lines, paths); empty: the
    # command, else the paths.
    subjects: tuple[str, ...] = ()
    # What "allow always" would grant (opencode's ``always``); empty: see grant_patterns.
    always: tuple[str, ...] = ()

    def option_of(self, kinds: Iterable[OptionKind]) -> str | None:
        """The agent's id of the first offered option of one of ``kinds`` (in that order)."""
        for kind in kinds:
            for option in self.options:
                if option.kind == kind:
                    return option.option_id
        return None


@dataclass(frozen=True)
class ApprovalAnswer:
    allowed: bool
    # The agent's option to answer with; None when it offered none that fits (answer "cancelled").
    option_id: str | None
    reason: str
    # Allowed by an earlier "allow always" of the session, without asking.
    remembered: bool = False


@dataclass(frozen=True)
class QuestionRequest:
    """opencode's question tool: ``[{question, header, options: [{label, description}], multiple}]``."""

    questions: tuple[Mapping[str, Any], ...]
    tool_call_id: str | None = None


@dataclass(frozen=True)
class QuestionAnswer:
    # One list of chosen labels per question; None: dismissed, expired or withdrawn.
    answers: tuple[tuple[str, ...], ...] | None
    reason: str


class Asker(Protocol):
    async def permission(self, request: ApprovalRequest) -> ApprovalAnswer: ...

    async def question(self, request: QuestionRequest) -> QuestionAnswer: ...


def subjects(request: ApprovalRequest) -> tuple[str, ...]:
    if request.subjects:
        return request.subjects
    return (request.command,) if request.command else request.paths


def grant_patterns(request: ApprovalRequest) -> tuple[str, ...]:
    """What "allow always" remembers: the agent's own patterns, else the command's program
    (``git``, ``git *``) for a command, else every request of the tool kind (``*``)."""
    if request.always:
        return request.always
    words = (request.command or "").split()
    if request.tool_kind == EXECUTE_KIND and words and not SHELL_OPERATORS.search(words[0]):
        return (words[0], f"{words[0]} *")
    return (ANY,)


def grant_covers(patterns: Sequence[str], request: ApprovalRequest) -> bool:
    """Do a session's grants (patterns of the request's tool kind) cover the request?

    Every subject must match a pattern. A subject with shell operators (chaining, redirection,
    substitution) is covered only by ``*``: ``git *`` must not let ``git status; rm -rf .`` through.
    """
    if ANY in patterns:
        return True
    found = subjects(request)
    return bool(found) and all(
        not SHELL_OPERATORS.search(subject) and any(fnmatch.fnmatchcase(subject, p) for p in patterns)
        for subject in found
    )
