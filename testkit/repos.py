"""Real git repositories for tests and benchmarks."""

from __future__ import annotations

import subprocess
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


def checkout_files(repo: Path) -> dict[str, bytes]:
    """Every file of a checkout and its index, byte for byte: to show a checkout was not touched."""
    state = {
        str(p.relative_to(repo)): p.read_bytes()
        for p in repo.rglob("*")
        if p.is_file() and ".git" not in p.relative_to(repo).parts
    }
    state[".git/index"] = (repo / ".git" / "index").read_bytes()
    return state
