"""Worktree settings (config section ``[worktrees]``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The orchestrator's configuration places a relative root under its data_dir.
DEFAULT_ROOT = Path("worktrees")
# Each node's bare clones of the projects that have a remote, likewise under data_dir.
DEFAULT_CLONES = Path("clones")
# A file whose patch is larger is listed but its patch text is replaced by a note.
DEFAULT_MAX_FILE_BYTES = 1024 * 1024
# Patch text stored per change; files past it are listed but their patches are left out.
DEFAULT_MAX_TOTAL_BYTES = 8 * 1024 * 1024
# Worktrees of sessions unused this long (and without open changes or running turns) are reaped.
DEFAULT_REAP_IDLE_AFTER = 7 * 24 * 3600.0
# How often the service's reaper looks.
DEFAULT_REAP_INTERVAL = 600.0
# While a turn runs, a worktree_changed frame at most this often (seconds; 0: none).
DEFAULT_LIVE_DIFF_INTERVAL = 1.0
# Who commits what a reviewer accepts as a commit or onto a branch (author and committer).
DEFAULT_COMMIT_NAME = "Switchyard"
DEFAULT_COMMIT_EMAIL = "switchyard@localhost"
# Spare worktrees kept ready per project (worktrees.spares), for projects that started a session
# within spare_idle seconds.
DEFAULT_SPARES = 1
DEFAULT_SPARE_IDLE = 3600.0


@dataclass(frozen=True)
class WorktreeSettings:
    root: Path = DEFAULT_ROOT
    clones: Path = DEFAULT_CLONES
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES
    reap_idle_after: float = DEFAULT_REAP_IDLE_AFTER
    reap_interval: float = DEFAULT_REAP_INTERVAL
    live_diff_interval: float = DEFAULT_LIVE_DIFF_INTERVAL
    commit_name: str = DEFAULT_COMMIT_NAME
    commit_email: str = DEFAULT_COMMIT_EMAIL
    spares: int = DEFAULT_SPARES
    spare_idle: float = DEFAULT_SPARE_IDLE

    def __post_init__(self) -> None:
        if self.max_file_bytes <= 0 or self.max_total_bytes <= 0:
            raise ValueError("max_file_bytes and max_total_bytes must be positive")
        if self.reap_idle_after <= 0 or self.reap_interval <= 0:
            raise ValueError("reap_idle_after and reap_interval must be positive")
        if self.live_diff_interval < 0:
            raise ValueError("live_diff_interval must be 0 (off) or positive")
        if not self.commit_name.strip() or "@" not in self.commit_email or "<" in self.commit_email + self.commit_name:
            raise ValueError("commit_name must be a name and commit_email an address")
        if self.spares < 0 or self.spare_idle <= 0:
            raise ValueError("spares must not be negative and spare_idle must be positive")
