"""The permission policy: paths confined, .git never edited, kinds mapped, commands judged, ask = deny."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.commands import ANY, CommandRule
from backends.permissions import (
    EXECUTE_ALLOW_REPLACED,
    PermissionOverride,
    PermissionPolicy,
    PermissionRequest,
    decide,
    opencode_permission,
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "wt").mkdir()
    return tmp_path / "wt"


def test_edits_inside_the_worktree_are_allowed_outside_denied(root: Path) -> None:
    policy = PermissionPolicy()
    assert decide(policy, PermissionRequest("edit", paths=(str(root / "a.txt"),)), root).allowed
    outside = decide(policy, PermissionRequest("edit", paths=(str(root / "a.txt"), "/etc/hosts")), root)
    assert not outside.allowed
    assert "outside the worktree" in outside.reason
    assert not decide(policy, PermissionRequest("read", paths=("../x",)), root).allowed


def test_execute_follows_the_command_rules(root: Path) -> None:
    policy = PermissionPolicy(commands={"pytest": CommandRule(args=ANY)})
    assert decide(policy, PermissionRequest("execute", command="git status --short"), root).allowed
    assert decide(policy, PermissionRequest("execute", command=["pytest", "-q"]), root).allowed
    denied = decide(policy, PermissionRequest("execute", command="git push"), root)
    assert not denied.allowed
    assert denied.reason == (
        "git push: not an allowed subcommand (allowed: blame, diff, log, show, status); permissions.execute is deny"
    )
    output = decide(policy, PermissionRequest("execute", command="git log -1 --output=x"), root)
    assert not output.allowed and "--output" in output.reason
    assert not decide(policy, PermissionRequest("execute"), root).allowed
    only_configured = PermissionPolicy(default_commands=False)
    assert not decide(only_configured, PermissionRequest("execute", command="ls"), root).allowed


def test_a_command_is_judged_from_where_it_runs(root: Path) -> None:
    (root / "sub").mkdir()
    policy = PermissionPolicy()
    inside = PermissionRequest("execute", command="cat ../a.txt", cwd=str(root / "sub"))
    assert decide(policy, inside, root).allowed
    outside = PermissionRequest("execute", command="cat a.txt", cwd=str(root.parent))
    assert not decide(policy, outside, root).allowed


def test_edits_of_git_metadata_are_denied_in_any_case(root: Path) -> None:
    policy = PermissionPolicy()
    for path in (".git", ".git/config", "sub/.git/hooks/pre-commit", ".GIT", ".Git/config"):
        for kind in ("edit", "delete", "move"):
            verdict = decide(policy, PermissionRequest(kind, paths=(path,)), root)
            assert not verdict.allowed and "git metadata" in verdict.reason, (kind, path)
    assert decide(policy, PermissionRequest("read", paths=(".git",)), root).allowed


def test_ask_is_denied_because_nobody_is_there(root: Path) -> None:
    policy = PermissionPolicy(edit="ask", execute="allow")
    verdict = decide(policy, PermissionRequest("edit", paths=("a.txt",)), root)
    assert not verdict.allowed
    assert "ask" in verdict.reason
    assert decide(policy, PermissionRequest("execute", command="make deploy"), root).allowed


def test_kinds_map_to_their_fields(root: Path) -> None:
    policy = PermissionPolicy(read="deny", edit="deny", fetch="allow", other="deny")
    expected = {
        "read": False,
        "search": False,
        "think": False,
        "delete": False,
        "move": False,
        "fetch": True,
        "switch_mode": False,
        "something_new": False,
    }
    for kind, allowed in expected.items():
        assert decide(policy, PermissionRequest(kind), root).allowed is allowed, kind


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match=r"permissions\.edit"):
        PermissionPolicy(edit="sometimes")
    with pytest.raises(ValueError, match="replaced by command rules"):
        PermissionPolicy(execute_allow=("pytest",))
    with pytest.raises(ValueError, match="program name"):
        PermissionPolicy(commands={"/bin/sh": CommandRule(args=ANY)})
    assert "[permissions.commands.pytest]" in EXECUTE_ALLOW_REPLACED


def test_opencode_permission_allows_only_exact_argument_free_commands() -> None:
    config = opencode_permission(PermissionPolicy(commands={"pytest": CommandRule(args=ANY)}, fetch="ask"))
    assert config["edit"] == {"*": "allow", ".git": "deny", ".git/*": "deny", "*/.git": "deny", "*/.git/*": "deny"}
    assert config["external_directory"] == "deny"
    assert config["webfetch"] == "ask"
    bash = config["bash"]
    # opencode matches rules last-wins: the catch-all first, then exact commands, never "<cmd> *".
    assert next(iter(bash.items())) == ("*", "deny")
    assert {"ls", "pwd", "git status", "git diff", "pytest"} <= bash.keys()
    assert not any(pattern.endswith("*") for pattern in bash if pattern != "*")
    assert set(bash.values()) == {"deny", "allow"}


def test_ask_is_a_verdict_of_its_own(tmp_path: Path) -> None:
    verdict = decide(PermissionPolicy(edit="ask"), PermissionRequest("edit", paths=("a.py",)), tmp_path)
    assert (verdict.allowed, verdict.ask) == (False, True)
    # Outside the worktree nobody is asked.
    outside = decide(PermissionPolicy(edit="ask"), PermissionRequest("edit", paths=("/etc/passwd",)), tmp_path)
    assert (outside.allowed, outside.ask) == (False, False)


def test_agent_and_project_overrides_apply_in_that_order() -> None:
    policy = PermissionPolicy(
        execute="deny",
        agents={"opencode-acp": PermissionOverride(execute="ask", edit="ask")},
        projects={"web": PermissionOverride(execute="allow", commands={"npm": CommandRule(args=ANY)})},
    )
    assert policy.effective("other", "other").execute == "deny"
    agent = policy.effective("opencode-acp", None)
    assert (agent.execute, agent.edit) == ("ask", "ask")
    both = policy.effective("opencode-acp", "web")
    assert (both.execute, both.edit) == ("allow", "ask")
    assert "npm" in both.rules and "npm" not in agent.rules
    assert both.agents == {} and both.projects == {}


def test_bad_overrides_and_ask_settings_are_refused() -> None:
    with pytest.raises(ValueError, match=r"permissions.agents.x: permissions.edit must be one of"):
        PermissionPolicy(agents={"x": PermissionOverride(edit="sometimes")})
    with pytest.raises(ValueError, match="ask_timeout must be positive"):
        PermissionPolicy(ask_timeout=0)
    with pytest.raises(ValueError, match="questions must be ask or deny"):
        PermissionPolicy(questions="allow")
