"""Status files a live process publishes for ``switchyard pool``: ``<prefix><owner pid>.<nonce>.json``.

Written atomically (a temporary file renamed over the old one); readers skip, and
:func:`remove_stale` deletes, the files of owners that are no longer running. All blocking: call
from async code through ``anyio.to_thread``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SUFFIX = ".json"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (one of another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_gone(owner: str) -> bool:
    """Whether the process of an ``<owner pid>.<nonce>`` name has ended (a malformed name is no one's)."""
    pid = owner.split(".", 1)[0]
    return pid.isdigit() and not pid_alive(int(pid))


def write_status(path: Path, payload: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)


def read_status(root: Path, prefix: str) -> list[dict[str, Any]]:
    """The payloads of ``root/<prefix>*.json`` whose owner (``owner_pid``) is alive, by file name."""
    found = []
    for path in sorted(root.glob(f"{prefix}*{SUFFIX}")):
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(payload, dict) and pid_alive(int(payload.get("owner_pid", 0))):
            found.append(payload)
    return found


def remove_stale(root: Path, prefix: str) -> None:
    """Delete the status files under ``root`` whose owner process is gone."""
    for path in root.glob(f"{prefix}*{SUFFIX}"):
        if owner_gone(path.name.removeprefix(prefix)):
            path.unlink(missing_ok=True)
