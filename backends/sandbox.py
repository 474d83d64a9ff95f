"""Every agent process in a bubblewrap sandbox: it can write its worktree and nothing else.

:meth:`Sandbox.command` wraps an agent's argv in ``bwrap`` (the mechanism Codex CLI uses on
Linux):

- the whole filesystem read-only (``--ro-bind / /``), a fresh ``/dev``, a private ``/tmp``;
- hidden (an empty tmpfs over a directory, ``/dev/null`` over a file): the protected paths the
  service names (its data directory — database password, API token, every project's worktrees,
  the opencode pool's sandboxes — and its config file), the pool's own directory, and
  ``[sandbox] hidden`` (by default the service user's credentials: ``~/.ssh``, ``~/.aws``, ...
  and container runtime sockets);
- then re-exposed: read-only the project's git directory (git in the worktree reads its objects
  and refs there), the agent's executable and ``[sandbox] read_only``; writable the session's
  worktree (for a pool server: its project's worktrees) and the agent's private HOME. The
  worktree's ``.git`` file stays read-only;
- its own PID namespace (``--unshare-pid``, a fresh ``/proc``): the agent sees only its own
  processes, cannot signal Switchyard, and when the agent exits the kernel kills whatever it left
  (a double fork included); ``--die-with-parent``; no capabilities (``--cap-drop ALL``, so a
  root service does not hand its agents root powers), its own IPC namespace. The network is kept:
  agents reach their model.

:func:`probe` checks once per process that ``bwrap`` exists and can create its namespaces, and
says so in one line. With ``[sandbox] required = true`` (the default) an agent whose sandbox
cannot be made does not start (:class:`SandboxUnavailable`, the turn fails ``agent_unavailable``
with that line); with ``required = false`` it runs unsandboxed after a warning.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread

from backends.errors import BackendError
from kernel import get_logger

log = get_logger("backends.sandbox")

PROBE_TIMEOUT = 10.0
# The service user's credentials and container sockets: present ones are hidden from agents.
DEFAULT_HIDDEN: tuple[str, ...] = (
    "~/.ssh",
    "~/.gnupg",
    "~/.aws",
    "~/.azure",
    "~/.config/gcloud",
    "~/.config/gh",
    "~/.kube",
    "~/.docker",
    "~/.netrc",
    "~/.pgpass",
    "~/.git-credentials",
    "~/.npmrc",
    "~/.pypirc",
    "/run/docker.sock",
    "/run/containerd",
    "/run/podman",
)
TMP = Path("/tmp")  # noqa: S108 - inside the sandbox /tmp is a private tmpfs
NAMESPACES = ("--unshare-pid", "--unshare-ipc", "--die-with-parent", "--cap-drop", "ALL")


class SandboxUnavailable(BackendError):
    """The sandbox is required but cannot be made here; the message is the probe's line."""


@dataclass(frozen=True)
class SandboxSettings:
    """``[sandbox]``: the bubblewrap sandbox around every agent process."""

    # false: run agents unsandboxed (after a warning) where bwrap cannot be used.
    required: bool = True
    # The bwrap executable: a path or a name on PATH.
    bwrap: str = "bwrap"
    # Also hidden from agents; ~ is the service user's home. Missing paths are skipped.
    hidden: tuple[str, ...] = DEFAULT_HIDDEN
    # Made readable again after hiding (e.g. an agent installed under a hidden directory).
    read_only: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.bwrap:
            raise ValueError("sandbox.bwrap must name the bwrap executable")
        for path in (*self.hidden, *self.read_only):
            if not path.startswith(("/", "~")):
                raise ValueError(f"sandbox paths must be absolute (or start with ~): {path!r}")


@dataclass(frozen=True)
class SandboxProbe:
    usable: bool
    # One line for the operator: what runs, or why not.
    line: str
    executable: str = ""


@functools.lru_cache(maxsize=8)
def probe(bwrap: str) -> SandboxProbe:
    """Whether ``bwrap`` exists and can create the sandbox's namespaces here (cached per process)."""
    found = shutil.which(bwrap)
    if found is None:
        return SandboxProbe(False, f"sandbox: bwrap not found ({bwrap!r}); install the bubblewrap package")
    true = shutil.which("true") or "/bin/true"
    check = [found, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", *NAMESPACES, "--", true]
    try:
        result = subprocess.run(check, capture_output=True, text=True, timeout=PROBE_TIMEOUT, check=False)
        version = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=PROBE_TIMEOUT).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return SandboxProbe(False, f"sandbox: {found} cannot be run: {exc}")
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
        return SandboxProbe(False, f"sandbox: {found} cannot create its namespaces here: {reason}")
    return SandboxProbe(True, f"sandbox: {version.strip() or 'bubblewrap'} ({found})", found)


class Sandbox:
    """How agent processes are wrapped; one per service (see the module docstring)."""

    def __init__(self, settings: SandboxSettings | None = None, protected: Sequence[Path] = ()) -> None:
        self.settings = settings or SandboxSettings()
        # The service's own secrets and state: hidden whatever the settings say.
        self.protected = tuple(protected)
        self._probed: SandboxProbe | None = None
        self._warned = False

    async def check(self) -> SandboxProbe:
        """The probe (in a thread the first time); raises SandboxUnavailable when it is required."""
        result = self._probed
        if result is None:
            result = self._probed = await anyio.to_thread.run_sync(probe, self.settings.bwrap)
        if not result.usable:
            if self.settings.required:
                raise SandboxUnavailable(f"{result.line} (sandbox.required = true)")
            if not self._warned:
                self._warned = True
                log.warning("sandbox.unavailable", reason=result.line)
        return result

    def startup_line(self) -> str:
        """One line for ``switchyard up``: the sandbox in use, or what happens without one (blocking)."""
        result = probe(self.settings.bwrap)
        if result.usable:
            return result.line
        if self.settings.required:
            return f"{result.line}; agents will not start (sandbox.required = true)"
        return f"{result.line}; agents run WITHOUT a sandbox (sandbox.required = false)"

    def command(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        writable: Iterable[Path] = (),
        read_only: Iterable[Path] = (),
        hidden: Iterable[Path] = (),
        frozen: Iterable[Path] = (),
    ) -> list[str]:
        """``argv`` wrapped in bwrap; ``frozen`` paths inside writable ones stay read-only (blocking).

        Call after :meth:`check` said the sandbox is usable.
        """
        executable = probe(self.settings.bwrap).executable
        args = [executable, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", str(TMP)]
        covered = [TMP]
        concealed = _existing((*self.protected, *hidden, *map(_expand, self.settings.hidden)))
        for path in concealed:
            if not _within(path, covered):
                covered.append(path)
                args += _hide(path)
        exposed = _existing((*read_only, *map(_expand, self.settings.read_only), *_program_roots(argv[0])))
        for path in exposed:
            args += ["--ro-bind", str(path), str(path)]
        # Hidden wins: a hidden path inside (or equal to) one made readable again is hidden again.
        for path in concealed:
            if _within(path, exposed):
                args += _hide(path)
        for path in _existing(writable):
            args += ["--bind", str(path), str(path)]
        for path in _existing(frozen):
            args += ["--ro-bind", str(path), str(path)]
        return [*args, *NAMESPACES, "--chdir", str(cwd), "--", *argv]


def _program_roots(program: str) -> list[Path]:
    """A program installed under /tmp (a clone there with its .venv and .tools) would vanish under
    the private /tmp: its top directory there, to show again read-only (hidden paths stay hidden)."""
    found = shutil.which(program) or program
    roots = []
    for path in (Path(os.path.abspath(found)), Path(os.path.realpath(found))):
        if path.is_relative_to(TMP) and path != TMP:
            roots.append(TMP / path.relative_to(TMP).parts[0])
    return roots


def _hide(path: Path) -> list[str]:
    return ["--tmpfs", str(path)] if path.is_dir() else ["--ro-bind", os.devnull, str(path)]


def _within(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def _expand(path: str) -> Path:
    return Path(os.path.expanduser(path))


def _existing(paths: Iterable[Path]) -> list[Path]:
    """Real paths of those that exist, each once, in order (bwrap mounts onto real paths)."""
    seen: dict[Path, None] = {}
    for path in paths:
        if os.path.lexists(path):
            seen.setdefault(Path(os.path.realpath(path)), None)
    return list(seen)
