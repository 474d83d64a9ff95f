"""Which commands an agent may run, judged by every argument, not by the first words.

A command arrives as a shell line (``"git log -3 --stat"``) or an argv. A line is refused when it
uses any shell operator or expansion (``; & | < > $ ` ( ) { } \\``, a newline) or cannot be
split by :mod:`shlex`; otherwise it is split the way the shell would. The program (the first
word, a bare name) must have a :class:`CommandRule`, and the rule must accept every argument:

- an option (``-x``, ``--name``, ``--name=value``) must be listed in the rule's ``options``
  (with ``args = "any"``: must not be in ``deny_options``). An entry says what follows it:
  ``"-l"`` takes nothing, ``"--format="`` takes a value (``--format=X`` or ``--format X``),
  ``"--color[=]"`` takes one only as ``--color=X``, ``"-f=PATH"`` takes a path, ``"-C=DIR"``
  takes a directory the later arguments are relative to. Single-letter flags may be combined
  (``-la``) unless the program does not do that (``find``);
- an operand is a path, and so is the value of a ``=PATH`` option: it must resolve, symlinks
  followed, inside the worktree (:func:`backends.confine.confine`) — except a search pattern
  (``pattern = true``: grep's first operand) and plain option values;
- ``~`` (expanded by the shell) is refused, and a glob is expanded here as the shell would expand
  it, every match confined; a glob that could match ``..`` is refused;
- a rule with ``subcommands`` needs one of them as its first operand (``git status``), whose own
  rule judges the rest.

The default rules (:data:`DEFAULT_RULES`) cover looking around: ``ls``, ``cat``, ``head``,
``tail``, ``wc``, ``pwd``, ``grep``, ``rg``, ``find`` and ``git status|diff|log|show|blame``,
without the options that write files, run programs or reach outside (``--output``, ``--ext-diff``,
``--no-index``, ``-c``, ``--git-dir``, ``rg --pre``, ``find -exec`` and the like). Operators add
programs with ``[permissions.commands.<program>]``; ``args = "any"`` allows any arguments with
every path still confined. A program that runs project code (a test runner, ``make``) can do
anything the agent's sandbox allows: allow one only with the sandbox on.

Blocking (paths are resolved); call from async code through ``anyio.to_thread``.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

from backends.confine import confine
from backends.errors import BackendError

NONE = "none"
LISTED = "listed"
ANY = "any"
ARGS_MODES = (NONE, LISTED, ANY)
OPERAND_MODES = ("paths", NONE)

# Chaining, pipes, redirection, substitution, expansion: a line using any of these could do more
# than its words say.
SHELL_OPERATORS = re.compile(r"[;&|<>`$(){}\\\n\r]")
GLOB_CHARS = re.compile(r"[*?\[]")
# Glob syntax Python's glob reads differently from bash: POSIX classes, ^ negation.
UNSAFE_GLOB = re.compile(r"\[:|\[\^")
# The shell expands ~ at the start of a word and after = or : (bash, in assignment-like words).
TILDE = re.compile(r"(^|[=:])~")
OPTION_SPEC = re.compile(r"^(?P<name>--?[A-Za-z0-9][A-Za-z0-9-]*)(?P<value>=|\[=\]|=PATH|=DIR)?$")

ValueKind = Literal["none", "required", "optional", "path", "dir"]
_VALUE_KINDS: dict[str | None, ValueKind] = {
    None: "none",
    "=": "required",
    "[=]": "optional",
    "=PATH": "path",
    "=DIR": "dir",
}


@dataclass(frozen=True)
class OptionSpec:
    name: str
    value: ValueKind


def parse_option(text: str) -> OptionSpec:
    match = OPTION_SPEC.match(text)
    if match is None:
        raise ValueError(f"option {text!r} must look like -x, --name, --name=, --name[=], --name=PATH or --name=DIR")
    return OptionSpec(match["name"], _VALUE_KINDS[match["value"]])


@dataclass(frozen=True)
class CommandRule:
    """``[permissions.commands.<program>]``: how one program (or subcommand) may be run."""

    # "listed": only `options`; "any": every option but `deny_options`; "none": no arguments.
    args: str = LISTED
    options: tuple[str, ...] = ()
    deny_options: tuple[str, ...] = ()
    # "paths": operands are paths inside the worktree; "none": no operands.
    operands: str = "paths"
    # The first operand is a search pattern (grep, rg), unless one of `pattern_options` is given.
    pattern: bool = False
    pattern_options: tuple[str, ...] = ()
    # -<number> is a count (head -5, git log -3).
    numbers: bool = False
    # Single-letter flags may be combined (-la); find's -name style options may not.
    clusters: bool = True
    # Allowed subcommands and their rules; the first operand must be one of them.
    subcommands: dict[str, CommandRule] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.args not in ARGS_MODES:
            raise ValueError(f"args must be one of {', '.join(ARGS_MODES)}, not {self.args!r}")
        if self.operands not in OPERAND_MODES:
            raise ValueError(f"operands must be one of {', '.join(OPERAND_MODES)}, not {self.operands!r}")
        for text in (*self.options, *self.pattern_options):
            parse_option(text)
        for text in self.deny_options:
            if not text.startswith("-"):
                raise ValueError(f"deny_options entry {text!r} must start with -")
        for name in self.subcommands:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
                raise ValueError(f"subcommand {name!r} must be a plain word")

    @cached_property
    def specs(self) -> dict[str, OptionSpec]:
        return {spec.name: spec for spec in map(parse_option, self.options)}

    @cached_property
    def pattern_names(self) -> frozenset[str]:
        return frozenset(parse_option(text).name for text in self.pattern_options)


class CommandRefused(BackendError):
    """A command the policy does not allow; the message says which argument and why."""


@dataclass
class _Context:
    root: Path
    cwd: Path
    # A shell line (globs and ~ are expanded by the shell) rather than an argv.
    shell: bool


def check_command(
    rules: Mapping[str, CommandRule], command: str | Sequence[str], root: Path, cwd: Path | None = None
) -> None:
    """Raise :class:`CommandRefused` unless ``rules`` allow ``command`` for an agent in ``root``.

    ``cwd`` (default ``root``) is where the command runs; relative paths are taken from there.
    """
    shell = isinstance(command, str)
    if isinstance(command, str):
        if SHELL_OPERATORS.search(command):
            raise CommandRefused("the command uses shell operators or expansions (; & | < > $ ` ( ) { } \\)")
        try:
            words = shlex.split(command)
        except ValueError as exc:
            raise CommandRefused(f"the command cannot be parsed: {exc}") from None
    else:
        words = list(command)
    if not words:
        raise CommandRefused("the command is empty")
    program = words[0]
    rule = rules.get(program)
    if rule is None or "/" in program:
        allowed = ", ".join(sorted(rules)) or "none"
        raise CommandRefused(f"{program!r} is not an allowed program (allowed: {allowed})")
    base = Path(os.path.realpath(root))
    start = base if cwd is None else confine(base, cwd)
    context = _Context(base, start, shell)
    if shell:
        for word in words:
            _check_expansions(word, context)
    _check_args(rule, words[1:], context, program)


def exact_commands(rules: Mapping[str, CommandRule]) -> list[str]:
    """The argument-free commands (``ls``, ``git status``) the rules allow, for static allow-lists."""
    found = []
    for program, rule in sorted(rules.items()):
        candidates = [[program], *([program, sub] for sub in sorted(rule.subcommands))]
        for argv in candidates:
            try:
                _check_args(rule, argv[1:], _Context(Path("/"), Path("/"), False), program)
            except CommandRefused:
                continue
            found.append(" ".join(argv))
    return found


def _check_args(rule: CommandRule, args: Sequence[str], context: _Context, what: str) -> None:
    if rule.args == NONE and args:
        raise CommandRefused(f"{what} takes no arguments here")
    operands: list[tuple[str, Path]] = []
    patterned = False
    words = iter(args)
    options_done = False
    for arg in words:
        if options_done or arg == "-" or not arg.startswith("-"):
            if rule.subcommands and not operands:
                sub = rule.subcommands.get(arg)
                if sub is None:
                    allowed = ", ".join(sorted(rule.subcommands))
                    raise CommandRefused(f"{what} {arg}: not an allowed subcommand (allowed: {allowed})")
                _check_args(sub, list(words), context, f"{what} {arg}")
                return
            operands.append((arg, context.cwd))
        elif arg == "--":
            options_done = True
        elif rule.args == ANY:
            _check_any_option(rule, arg, context, what)
        else:
            for spec, value in _options(rule, arg, words, what):
                patterned |= spec.name in rule.pattern_names
                if spec.value in ("path", "dir") and value is not None:
                    resolved = _confined(value, context, what)
                    if spec.value == "dir":
                        context.cwd = resolved
    if rule.subcommands:
        raise CommandRefused(f"{what} needs a subcommand ({', '.join(sorted(rule.subcommands))})")
    if operands and (rule.operands == NONE or rule.args == NONE):
        raise CommandRefused(f"{what} takes no operands here")
    paths = operands[1:] if rule.pattern and not patterned else operands
    for operand, cwd in paths:
        _confined(operand, _Context(context.root, cwd, context.shell), what)


def _options(rule: CommandRule, arg: str, rest: Iterator[str], what: str) -> Iterator[tuple[OptionSpec, str | None]]:
    """The options in one argument (a cluster holds several), each with its value if it takes one."""
    if rule.numbers and arg[1:].isdigit():
        return
    if arg.startswith("--") or not rule.clusters:
        name, eq, value = arg.partition("=")
        spec = _spec(rule, name, what)
        if spec.value == "none":
            if eq:
                raise CommandRefused(f"{what}: option {name} takes no value")
            yield spec, None
        elif spec.value == "optional":
            yield spec, value if eq else None
        else:
            yield spec, value if eq else _value(rest, name, what)
        return
    for i, letter in enumerate(arg[1:], start=1):
        spec = _spec(rule, f"-{letter}", what)
        attached = arg[i + 1 :]
        if spec.value == "none":
            yield spec, None
            continue
        if spec.value == "optional":
            yield spec, attached or None
        else:
            yield spec, attached or _value(rest, spec.name, what)
        return


def _spec(rule: CommandRule, name: str, what: str) -> OptionSpec:
    spec = rule.specs.get(name)
    if spec is None:
        raise CommandRefused(f"{what}: option {name} is not allowed")
    return spec


def _value(rest: Iterator[str], name: str, what: str) -> str:
    value = next(rest, None)
    if value is None:
        raise CommandRefused(f"{what}: option {name} needs a value")
    return value


def _check_any_option(rule: CommandRule, arg: str, context: _Context, what: str) -> None:
    name, eq, value = arg.partition("=")
    for denied in rule.deny_options:
        if name.startswith("--"):
            # Long options may be abbreviated (argparse, getopt_long): --out counts as --output.
            refused = denied.startswith(name) and len(name) > 2
        elif len(denied) == 2:
            # A single letter may sit anywhere in a cluster (-vp counts as -p).
            refused = denied[1] in name[1:]
        else:
            refused = name == denied
        if refused:
            raise CommandRefused(f"{what}: option {denied} is not allowed")
    if eq:
        _confined(value, context, what)


def _confined(path: str, context: _Context, what: str) -> Path:
    try:
        return confine(context.root, context.cwd / path)
    except BackendError as exc:
        raise CommandRefused(f"{what}: {path!r} is outside the worktree") from exc


def _check_expansions(word: str, context: _Context) -> None:
    """What the shell would make of ``word`` beyond its text: ~ and globs."""
    if TILDE.search(word):
        raise CommandRefused(f"{word!r}: ~ expands to a home directory outside the worktree")
    if not GLOB_CHARS.search(word):
        return
    if UNSAFE_GLOB.search(word):
        raise CommandRefused(f"{word!r}: this glob syntax is not allowed ([: and [^)")
    if any(part.startswith(".") and GLOB_CHARS.search(part) for part in word.split("/")):
        raise CommandRefused(f"{word!r}: a glob starting with . could match ..")
    for match in glob.glob(word, root_dir=context.cwd):
        _confined(match, context, f"the glob {word!r}")


# ---------------------------------------------------------------------------- the default rules

# Options of git's diff machinery shared by diff, log and show. Left out on purpose: --output
# (writes a file), --ext-diff and --textconv (run configured programs), --no-index (reads any two
# files). Values whose separate form git does not take are written `[=]`, so a word after them is
# judged as an operand.
_GIT_DIFF_OPTIONS = (
    "-p", "-u", "--patch", "-s", "--no-patch", "--raw", "--patch-with-raw", "--patch-with-stat",
    "--stat[=]", "--numstat", "--shortstat", "--compact-summary", "--dirstat[=]", "--summary",
    "--name-only", "--name-status", "-z", "--color[=]", "--no-color", "--word-diff[=]",
    "--color-words[=]", "--no-renames", "-M[=]", "--find-renames[=]", "-C[=]", "--find-copies[=]",
    "-B[=]", "--break-rewrites[=]", "--check", "--full-index", "--binary", "--abbrev[=]", "-U[=]",
    "--unified[=]", "-W", "--function-context", "-w", "--ignore-all-space", "-b",
    "--ignore-space-change", "--ignore-blank-lines", "--ignore-space-at-eol", "--minimal",
    "--patience", "--histogram", "--diff-algorithm[=]", "--diff-filter[=]", "-R", "-a", "--text",
    "--no-ext-diff", "--no-textconv", "--src-prefix[=]", "--dst-prefix[=]", "--no-prefix",
    "-S=", "-G=", "--pickaxe-all", "--pickaxe-regex", "--relative[=]", "--exit-code", "--quiet",
    "--submodule[=]", "--ignore-submodules[=]",
)  # fmt: skip
_GIT_LOG_OPTIONS = (
    "--oneline", "--graph", "--decorate[=]", "--no-decorate", "--all", "--branches[=]", "--tags[=]",
    "--remotes[=]", "--format[=]", "--pretty[=]", "--abbrev-commit", "--no-abbrev-commit", "--date[=]",
    "--relative-date", "--since[=]", "--until[=]", "--after[=]", "--before[=]", "--author[=]",
    "--committer[=]", "--grep[=]", "-i", "--regexp-ignore-case", "-E", "--extended-regexp", "-F",
    "--fixed-strings", "--all-match", "--invert-grep", "-n=", "--max-count[=]", "--skip[=]",
    "--reverse", "--first-parent", "--merges", "--no-merges", "--follow", "--topo-order",
    "--date-order", "--author-date-order", "--left-right", "--cherry-pick", "--cherry-mark",
    "--boundary", "--source", "--full-history", "--simplify-by-decoration", "--parents",
    "--children", "--cc", "-m", "--no-walk[=]",
)  # fmt: skip
_GREP_OPTIONS = (
    "-i", "--ignore-case", "-v", "--invert-match", "-n", "--line-number", "-r", "--recursive", "-l",
    "--files-with-matches", "-L", "--files-without-match", "-c", "--count", "-w", "--word-regexp",
    "-x", "--line-regexp", "-E", "--extended-regexp", "-F", "--fixed-strings", "-G",
    "--basic-regexp", "-P", "--perl-regexp", "-o", "--only-matching", "-s", "--no-messages", "-q",
    "--quiet", "--silent", "-h", "--no-filename", "-H", "--with-filename", "-b", "--byte-offset",
    "-a", "--text", "-I", "-z", "--null-data", "-Z", "--null", "-T", "--initial-tab",
    "--line-buffered", "--color[=]", "--colour[=]", "-A=", "--after-context[=]", "-B=",
    "--before-context[=]", "-C=", "--context[=]", "-m=", "--max-count[=]", "-e=", "--regexp[=]",
    "-f=PATH", "--file[=]", "--include[=]", "--exclude[=]", "--exclude-dir[=]",
    "--binary-files[=]", "--label[=]",
)  # fmt: skip
# Left out: --pre/--pre-glob (run a program per file), -z/--search-zip (runs decompressors),
# -L/--follow (follows links out of the worktree), --hostname-bin (runs a program).
_RG_OPTIONS = (
    "-i", "--ignore-case", "-S", "--smart-case", "-s", "--case-sensitive", "-v", "--invert-match",
    "-w", "--word-regexp", "-x", "--line-regexp", "-F", "--fixed-strings", "-P", "--pcre2", "-U",
    "--multiline", "--multiline-dotall", "-n", "--line-number", "-N", "--no-line-number", "-l",
    "--files-with-matches", "--files-without-match", "-c", "--count", "--count-matches", "-o",
    "--only-matching", "-q", "--quiet", "-H", "--with-filename", "-I", "--no-filename",
    "--column", "--heading", "--no-heading", "--hidden", "-u", "--unrestricted",
    "--no-ignore", "--no-ignore-vcs", "--no-ignore-parent", "--no-messages", "--json", "--vimgrep",
    "--trim", "-0", "--null", "-a", "--text", "--binary", "--files", "--type-list", "--stats",
    "--no-config", "--sort=", "--sortr=", "-A=", "--after-context=", "-B=", "--before-context=",
    "-C=", "--context=", "-m=", "--max-count=", "-e=", "--regexp=", "-f=PATH", "--file=PATH",
    "-g=", "--glob=", "--iglob=", "-t=", "--type=", "-T=", "--type-not=", "--type-add=",
    "--max-depth=", "-d=", "-M=", "--max-columns=", "--max-filesize=", "--color=", "--colors=",
    "-r=", "--replace=", "--ignore-file=PATH", "--engine=",
)  # fmt: skip
# Left out: -exec, -execdir, -ok, -okdir (run programs), -delete, -fprint, -fprint0, -fprintf,
# -fls (write files), -L and -follow (follow links out of the worktree).
_FIND_OPTIONS = (
    "-H", "-P", "-name=", "-iname=", "-path=", "-ipath=", "-wholename=", "-iwholename=", "-regex=",
    "-iregex=", "-regextype=", "-lname=", "-ilname=", "-type=", "-xtype=", "-maxdepth=", "-mindepth=",
    "-size=", "-mtime=", "-mmin=", "-atime=", "-amin=", "-ctime=", "-cmin=", "-newer=PATH",
    "-anewer=PATH", "-cnewer=PATH", "-samefile=PATH", "-perm=", "-user=", "-group=", "-links=",
    "-inum=", "-uid=", "-gid=", "-empty", "-readable", "-writable", "-executable", "-nouser",
    "-nogroup", "-true", "-false", "-not", "-and", "-or", "-a", "-o", "-print", "-print0",
    "-printf=", "-ls", "-prune", "-quit", "-depth", "-d", "-xdev", "-mount", "-noleaf",
    "-daystart",
)  # fmt: skip

_LS_OPTIONS = (
    "-a", "--all", "-A", "--almost-all", "-l", "-h", "--human-readable", "-R", "--recursive", "-1",
    "-d", "--directory", "-F", "--classify", "-t", "-S", "-r", "--reverse", "-s", "--size", "-i",
    "--inode", "-n", "--numeric-uid-gid", "-p", "-X", "-U", "-v", "-G", "--group-directories-first",
    "--color[=]", "--sort[=]", "--time-style[=]", "-I=", "--ignore[=]",
)  # fmt: skip
_GIT_STATUS_OPTIONS = (
    "-s", "--short", "-b", "--branch", "--porcelain[=]", "--long", "-v", "--verbose", "-u[=]",
    "--untracked-files[=]", "--ignored[=]", "-z", "--ignore-submodules[=]", "--show-stash",
    "--ahead-behind", "--no-ahead-behind", "--renames", "--no-renames",
)  # fmt: skip
_GIT_BLAME_OPTIONS = (
    "-L=", "-w", "-M[=]", "-C[=]", "-e", "--show-email", "-s", "-l", "-t", "-p", "--porcelain",
    "--line-porcelain", "--root", "--show-name", "-f", "--show-number", "-n", "-c", "--date[=]",
    "--abbrev[=]", "--color-lines", "--color-by-age", "--contents=PATH", "--reverse[=]",
    "--first-parent", "--incremental",
)  # fmt: skip

DEFAULT_RULES: dict[str, CommandRule] = {
    "pwd": CommandRule(options=("-L", "-P"), operands=NONE),
    "ls": CommandRule(options=_LS_OPTIONS),
    "cat": CommandRule(
        options=("-n", "--number", "-b", "--number-nonblank", "-A", "--show-all", "-E", "-T", "-v", "-s")
    ),
    "head": CommandRule(options=("-n=", "--lines[=]", "-c=", "--bytes[=]", "-q", "-v"), numbers=True),
    "tail": CommandRule(options=("-n=", "--lines[=]", "-c=", "--bytes[=]", "-q", "-v"), numbers=True),
    "wc": CommandRule(options=("-l", "--lines", "-w", "--words", "-c", "--bytes", "-m", "--chars", "-L")),
    "grep": CommandRule(
        options=_GREP_OPTIONS, pattern=True, pattern_options=("-e=", "--regexp[=]", "-f=PATH", "--file[=]")
    ),
    "rg": CommandRule(
        options=_RG_OPTIONS,
        pattern=True,
        pattern_options=("-e=", "--regexp=", "-f=PATH", "--file=PATH", "--files", "--type-list"),
    ),
    "find": CommandRule(options=_FIND_OPTIONS, clusters=False),
    "git": CommandRule(
        # -c, --git-dir, --work-tree, --exec-path, --namespace, --config-env and the rest are not
        # here; -C must name a directory inside the worktree.
        options=("-C=DIR", "--no-pager", "--no-optional-locks", "-P"),
        subcommands={
            "status": CommandRule(options=_GIT_STATUS_OPTIONS),
            "diff": CommandRule(options=(*_GIT_DIFF_OPTIONS, "--cached", "--staged", "--merge-base")),
            "log": CommandRule(options=(*_GIT_DIFF_OPTIONS, *_GIT_LOG_OPTIONS), numbers=True),
            "show": CommandRule(options=(*_GIT_DIFF_OPTIONS, *_GIT_LOG_OPTIONS), numbers=True),
            "blame": CommandRule(options=_GIT_BLAME_OPTIONS),
        },
    ),
}
