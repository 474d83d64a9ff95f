"""Which modes a task may select: advertised ones that still ask for permission."""

from __future__ import annotations

import pytest

from backends.errors import BadModelError
from backends.modes import Mode, bypasses, check_mode
from backends.permissions import DEFAULT_DENIED_MODES

OFFERED = (
    Mode("default", "Default"),
    Mode("plan", "Plan"),
    Mode("acceptEdits", "Accept edits"),
    Mode("bypassPermissions", "Bypass Permissions"),
    Mode("auto", "YOLO mode"),
    Mode("danger", "--dangerously-skip-permissions"),
    Mode("full-auto", "Full auto"),
)


@pytest.mark.parametrize("mode", ["default", "plan", "acceptEdits"])
def test_advertised_modes_that_ask_are_allowed(mode: str) -> None:
    check_mode(DEFAULT_DENIED_MODES, mode, OFFERED, "agent")


@pytest.mark.parametrize(
    ("mode", "entry"),
    [("bypassPermissions", "bypass"), ("auto", "yolo"), ("danger", "skip-permissions"), ("full-auto", "full-auto")],
)
def test_modes_whose_id_or_name_says_they_skip_permissions_are_refused(mode: str, entry: str) -> None:
    with pytest.raises(BadModelError, match=f"matches '{entry}' in permissions.denied_modes"):
        check_mode(DEFAULT_DENIED_MODES, mode, OFFERED, "agent")


def test_a_mode_the_agent_does_not_offer_is_refused() -> None:
    with pytest.raises(BadModelError, match=r"agent offers no mode 'build' \(its modes: "):
        check_mode(DEFAULT_DENIED_MODES, "build", OFFERED, "agent")
    with pytest.raises(BadModelError, match=r"its modes: none"):
        check_mode(DEFAULT_DENIED_MODES, "plan", (), "agent")


def test_matching_ignores_case_spaces_and_punctuation() -> None:
    assert bypasses(("skip-permissions",), "Skip Permissions") == "skip-permissions"
    assert bypasses(("bypass",), "x", "BYPASS_PERMISSIONS") == "bypass"
    assert bypasses(DEFAULT_DENIED_MODES, "plan", "Plan") is None
    assert bypasses((), "bypassPermissions") is None
