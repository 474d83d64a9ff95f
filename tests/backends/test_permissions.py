"""The permission policy: paths confined, kinds mapped, the execute allow-list, ask = deny."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.permissions import (
    PermissionOverride,
    PermissionPolicy,
    PermissionRequest,
    command_allowed,
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


def test_execute_follows_the_allow_list(root: Path) -> None:
    policy = PermissionPolicy(execute_allow=("git status", "pytest"))
    assert decide(policy, PermissionRequest("execute", command="git status --short"), root).allowed
    assert decide(policy, PermissionRequest("execute", command=["pytest", "-q"]), root).allowed
    denied = decide(policy, PermissionRequest("execute", command="git push"), root)
    assert not denied.allowed
    assert denied.reason == "permissions.execute is deny"
    assert not decide(policy, PermissionRequest("execute"), root).allowed


@pytest.mark.parametrize(
    "command",
    [
        "git status; rm -rf /",
        "git status && curl x",
        "git status | sh",
        "git status > /etc/x",
        "git status $(rm -rf /)",
        "git status `id`",
        "git status\nrm -rf /",
        "git 'status",
        "gitstatus",
        "",
    ],
)
def test_shell_operators_and_near_misses_never_match(command: str) -> None:
    assert not command_allowed(command, ("git status",))


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
    with pytest.raises(ValueError, match="execute_allow"):
        PermissionPolicy(execute_allow=("ls; rm",))
    with pytest.raises(ValueError, match="execute_allow"):
        PermissionPolicy(execute_allow=("",))


def test_opencode_permission_mirrors_the_policy() -> None:
    config = opencode_permission(PermissionPolicy(execute_allow=("git status",), fetch="ask"))
    assert config["edit"] == "allow"
    assert config["external_directory"] == "deny"
    assert config["webfetch"] == "ask"
    # opencode matches rules last-wins: the catch-all first, then the allowed prefixes.
    assert list(config["bash"].items()) == [("*", "deny"), ("git status", "allow"), ("git status *", "allow")]


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
        projects={"web": PermissionOverride(execute="allow", execute_allow=("npm",))},
    )
    assert policy.effective("other", "other").execute == "deny"
    agent = policy.effective("opencode-acp", None)
    assert (agent.execute, agent.edit) == ("ask", "ask")
    both = policy.effective("opencode-acp", "web")
    assert (both.execute, both.edit, both.execute_allow) == ("allow", "ask", ("npm",))
    assert both.agents == {} and both.projects == {}


def test_bad_overrides_and_ask_settings_are_refused() -> None:
    with pytest.raises(ValueError, match=r"permissions.agents.x: permissions.edit must be one of"):
        PermissionPolicy(agents={"x": PermissionOverride(edit="sometimes")})
    with pytest.raises(ValueError, match="ask_timeout must be positive"):
        PermissionPolicy(ask_timeout=0)
    with pytest.raises(ValueError, match="questions must be ask or deny"):
        PermissionPolicy(questions="allow")
