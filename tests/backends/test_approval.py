"""What "allow always" remembers and what a remembered grant covers."""

from __future__ import annotations

import pytest

from backends import ApprovalRequest, AskOption, grant_covers, grant_patterns

OPTIONS = (AskOption("once", "allow_once", "Allow once"), AskOption("no", "reject_once", "Reject"))


def execute(command: str, **fields: tuple[str, ...]) -> ApprovalRequest:
    return ApprovalRequest("bash", "execute", command, OPTIONS, command=command, **fields)


def test_a_command_grants_its_program_and_anything_else_its_kind() -> None:
    assert grant_patterns(execute("git status --short")) == ("git", "git *")
    assert grant_patterns(ApprovalRequest("edit", "edit", "a.py", OPTIONS, paths=("a.py",))) == ("*",)
    # opencode says what its "always" covers.
    assert grant_patterns(execute("npm test", always=("npm *",))) == ("npm *",)


@pytest.mark.parametrize(
    ("patterns", "command", "covered"),
    [
        (["git", "git *"], "git log -3", True),
        (["git", "git *"], "git", True),
        (["git", "git *"], "gitk", False),
        (["git", "git *"], "rm -rf build", False),
        (["git", "git *"], "git status; rm -rf .", False),
        (["git", "git *"], "git log $(rm -rf .)", False),
        (["*"], "git status; rm -rf .", True),
    ],
)
def test_a_grant_covers_commands_of_its_program_without_shell_operators(
    patterns: list[str], command: str, covered: bool
) -> None:
    assert grant_covers(patterns, execute(command)) is covered


def test_every_subject_must_be_covered() -> None:
    request = execute("", subjects=("git status", "rm x"))
    assert not grant_covers(["git *"], request)
    assert grant_covers(["git *", "rm *"], request)
    assert not grant_covers(["git *"], ApprovalRequest("read", "read", "?", OPTIONS))
