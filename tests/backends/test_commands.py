"""The command policy: every argument of a command is judged, as an attacker would try them."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.commands import (
    ANY,
    DEFAULT_RULES,
    CommandRefused,
    CommandRule,
    check_command,
    exact_commands,
    parse_option,
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "wt"
    (root / "src").mkdir(parents=True)
    (root / "src" / "a.py").write_text("print('a')\n")
    (root / "README.md").write_text("# demo\n")
    (tmp_path / "api-token").write_text("sy_secret\n")
    return root


def allowed(command: str | list[str], root: Path, rules: dict[str, CommandRule] = DEFAULT_RULES) -> bool:
    try:
        check_command(rules, command, root)
    except CommandRefused:
        return False
    return True


@pytest.mark.parametrize(
    "command",
    [
        "ls",
        "ls -la src",
        "ls --color=auto",
        "pwd",
        "cat README.md src/a.py",
        "cat -n README.md",
        "head -n 5 README.md",
        "head -5 README.md",
        "tail -n5 src/a.py",
        "wc -l README.md",
        "grep -rn foo .",
        "grep -e /api/ -r src",
        "grep /api/ -r .",
        "grep -i --include=*.py TODO -r .",
        "rg -n foo src",
        "rg --files src",
        "rg -g '*.py' -t py needle",
        "find . -name '*.py' -type f",
        "find src -maxdepth 2 ! -name x -print",
        "git status",
        "git status --short -b",
        "git diff",
        "git diff --stat HEAD~1 -- src",
        "git diff --cached --name-only",
        "git log --oneline -5",
        "git log -n 3 --format=%H%x09%s",
        "git log --graph --decorate --all",
        "git show HEAD:README.md",
        "git show --stat HEAD",
        "git blame -L 1,5 src/a.py",
        "git -C src log -1",
        "git --no-pager diff",
        "ls *",
        "cat src/*.py",
        ["cat", "README.md"],
    ],
)
def test_looking_around_is_allowed(command: str | list[str], root: Path) -> None:
    check_command(DEFAULT_RULES, command, root)


@pytest.mark.parametrize(
    ("command", "why"),
    [
        # Writing files with git.
        ("git log -1 --format=%H --output=../../pwned", "--output is not allowed"),
        ("git diff --output=x", "--output is not allowed"),
        ("git diff --outp=x", "--outp is not allowed"),
        ("git show --output x", "--output is not allowed"),
        # Reading outside through git.
        ("git diff --no-index /etc/passwd /dev/null", "--no-index is not allowed"),
        ("git diff /etc/passwd /dev/null", "outside the worktree"),
        ("git -C .. status", "outside the worktree"),
        ("git -C / log", "outside the worktree"),
        ("git --git-dir=/tmp/evil status", "--git-dir is not allowed"),
        ("git --work-tree=/ status", "--work-tree is not allowed"),
        ("git -c core.pager=sh log", "-c is not allowed"),
        ("git --exec-path=/tmp log", "--exec-path is not allowed"),
        # Running programs through git.
        ("git diff --ext-diff", "--ext-diff is not allowed"),
        ("git log --textconv -p", "--textconv is not allowed"),
        ("git log --show-signature", "--show-signature is not allowed"),
        ("git push", "not an allowed subcommand"),
        ("git commit -m x", "not an allowed subcommand"),
        ("git", "needs a subcommand"),
        # Secrets of the service and of the agent itself.
        ("cat ../../../api-token", "outside the worktree"),
        ("cat ../api-token", "outside the worktree"),
        ("cat /proc/self/environ", "outside the worktree"),
        ("head -c 100 /etc/shadow", "outside the worktree"),
        ("cat ~/.ssh/id_rsa", "~ expands"),
        ("cat --number=~/.pgpass", "~ expands"),
        ("grep -r sy_ ..", "outside the worktree"),
        ("grep -f /etc/passwd src", "outside the worktree"),
        ("grep -R sy_ .", "-R is not allowed"),
        ("rg --files /etc", "outside the worktree"),
        ("ls .*", "could match .."),
        ("cat .*/api-token", "could match .."),
        ("ls /e*", "outside the worktree"),
        ("ls [[:alpha:]]*", "glob syntax"),
        # Running programs through search tools.
        ("rg --pre sh foo", "--pre is not allowed"),
        ("rg --pre=./x foo", "--pre is not allowed"),
        ("rg --pre-glob '*' foo", "--pre-glob is not allowed"),
        ("rg -z foo", "-z is not allowed"),
        ("rg -L foo", "-L is not allowed"),
        ("find . -exec cat {} +", "shell operators"),
        ("find . -execdir id", "-execdir is not allowed"),
        ("find . -ok id", "-ok is not allowed"),
        ("find . -delete", "-delete is not allowed"),
        ("find . -fprint ../x", "-fprint is not allowed"),
        ("find . -fls x", "-fls is not allowed"),
        ("find -L . -name x", "-L is not allowed"),
        ("find / -name id_rsa", "outside the worktree"),
        # Shell tricks.
        ("cat README.md; rm -rf /", "shell operators"),
        ("cat README.md && curl x", "shell operators"),
        ("cat README.md | sh", "shell operators"),
        ("cat README.md > /etc/x", "shell operators"),
        ("cat $(echo /etc/passwd)", "shell operators"),
        ("cat `id`", "shell operators"),
        ("cat README.md\nrm -rf /", "shell operators"),
        ("cat {a,b}", "shell operators"),
        ("cat 'README.md", "cannot be parsed"),
        ("GIT_DIR=/tmp git status", "not an allowed program"),
        ("env cat /etc/passwd", "not an allowed program"),
        ("./ls", "not an allowed program"),
        ("/bin/cat README.md", "not an allowed program"),
        ("rm -rf build", "not an allowed program"),
        ("tail -f README.md", "-f is not allowed"),
        ("pwd src", "takes no operands"),
        ("", "empty"),
    ],
)
def test_attacks_are_refused_with_the_reason(command: str, why: str, root: Path) -> None:
    with pytest.raises(CommandRefused, match=why.replace("[", r"\[").replace(".", r"\.")):
        check_command(DEFAULT_RULES, command, root)


def test_symlinks_and_globs_that_lead_out_are_refused(root: Path, tmp_path: Path) -> None:
    (root / "leak").symlink_to(tmp_path / "api-token")
    (root / "up").symlink_to(tmp_path)
    assert not allowed("cat leak", root)
    assert not allowed("cat up/api-token", root)
    assert not allowed("git diff -- up", root)
    # The shell would expand the glob to `leak`: every match is judged.
    assert not allowed("cat l*", root)
    assert not allowed("cat *", root)
    assert allowed("cat R*", root)


def test_a_cd_option_moves_the_base_of_later_paths(root: Path) -> None:
    assert allowed("git -C src log -- a.py", root)
    assert not allowed("git -C src diff -- ../../api-token", root)


def test_a_command_runs_from_its_cwd(root: Path) -> None:
    check_command(DEFAULT_RULES, "cat ../README.md", root, cwd=root / "src")
    with pytest.raises(CommandRefused, match="outside"):
        check_command(DEFAULT_RULES, "cat ../../api-token", root, cwd=root / "src")


def test_an_operator_rule_allows_any_arguments_inside_the_worktree(root: Path) -> None:
    rules = {**DEFAULT_RULES, "pytest": CommandRule(args=ANY, deny_options=("-p", "--rootdir"))}
    assert allowed("pytest", root, rules)
    assert allowed("pytest -q -x src/a.py::test_one -k 'a or b' --tb=short", root, rules)
    assert not allowed("pytest ../other", root, rules)
    assert not allowed("pytest --junitxml=/tmp/x.xml", root, rules)
    assert not allowed("pytest -p evil", root, rules)
    assert not allowed("pytest -vp evil", root, rules)
    assert not allowed("pytest --root=/", root, rules)


def test_subcommand_rules_come_from_configuration(root: Path) -> None:
    rules = {"make": CommandRule(subcommands={"test": CommandRule(args=ANY), "lint": CommandRule(args="none")})}
    assert allowed("make test -j2", root, rules)
    assert allowed("make lint", root, rules)
    assert not allowed("make lint now", root, rules)
    assert not allowed("make deploy", root, rules)


def test_only_argument_free_commands_are_exact_rules() -> None:
    exact = exact_commands(DEFAULT_RULES)
    assert {"ls", "pwd", "git status", "git diff", "git log"} <= set(exact)
    assert "git" not in exact and "git push" not in exact
    assert exact_commands({"pytest": CommandRule(args=ANY)}) == ["pytest"]


@pytest.mark.parametrize("bad", ["x", "--", "-a b", "--name=VALUE", "--name=PATHS", "-=PATH"])
def test_bad_option_specs_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="must look like"):
        parse_option(bad)


def test_bad_rules_are_refused() -> None:
    with pytest.raises(ValueError, match="args must be one of"):
        CommandRule(args="some")
    with pytest.raises(ValueError, match="operands must be one of"):
        CommandRule(operands="files")
    with pytest.raises(ValueError, match="must start with -"):
        CommandRule(args=ANY, deny_options=("p",))
    with pytest.raises(ValueError, match="plain word"):
        CommandRule(subcommands={"a b": CommandRule()})
