"""Real git repositories for tests and benchmarks."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
    "PATH": "/usr/local/bin:/usr/bin:/bin",
}

LINES = "".join(f"line {i}\n" for i in range(1, 21))
BINARY = bytes(range(256)) * 4


def git(cwd: Path, *args: str) -> str:
    """Run git in ``cwd`` with a fixed identity and no user or system configuration."""
    result = subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True, check=True)
    return result.stdout.strip()


def git_repo(path: Path) -> Path:
    """A git repository with one commit holding README.md ("# demo")."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / "README.md").write_text("# demo\n")
    git(path, "add", ".")
    git(path, "commit", "-qm", "init")
    return path


def sample_repo(path: Path) -> Path:
    """A repository with one commit: text files, a binary file, a .gitignore, a subdirectory."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / "a.txt").write_text(LINES)
    (path / "keep.txt").write_text("keep\n")
    (path / "gone.txt").write_text("to be deleted\n")
    (path / "old_name.txt").write_text("".join(f"rename me {i}\n" for i in range(30)))
    (path / "image.bin").write_bytes(BINARY)
    (path / ".gitignore").write_text("*.log\nbuild/\n")
    (path / "src").mkdir()
    (path / "src" / "main.py").write_text("print('hi')\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


def bare_remote(checkout: Path, path: Path) -> Path:
    """A bare repository cloned from ``checkout``: a project's git remote (several machines)."""
    git(checkout.parent, "clone", "-q", "--bare", str(checkout), str(path))
    return path


def tree_digest(root: Path, *, skip: Iterable[Path] = ()) -> str:
    """A sha256 of everything under ``root`` (names, modes, contents, link targets), ``skip`` left out.

    Two equal digests mean nothing under ``root`` was created, changed or removed.
    """
    skipped = [Path(os.path.realpath(p)) for p in skip]
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if Path(os.path.realpath(here / d)) not in skipped)
        for name in sorted([*filenames, *(d for d in dirnames if (here / d).is_symlink())]):
            path = here / name
            info = path.lstat()
            digest.update(f"{path.relative_to(root)}\0{info.st_mode:o}\0".encode())
            if path.is_symlink():
                digest.update(os.readlink(path).encode())
            elif path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()


def checkout_files(repo: Path) -> dict[str, bytes]:
    """Every file of a checkout and its index, byte for byte: to show a checkout was not touched."""
    state = {
        str(p.relative_to(repo)): p.read_bytes()
        for p in repo.rglob("*")
        if p.is_file() and ".git" not in p.relative_to(repo).parts
    }
    state[".git/index"] = (repo / ".git" / "index").read_bytes()
    return state
