"""Which agent mode a task may select (``tasks.mode_id``).

A mode must be one the agent advertised (ACP ``session/new``: its ``modes`` and its config option
of category ``mode``; opencode: its primary agents), and must not be one that lets the agent act
without asking: a mode whose id or name contains an entry of ``permissions.denied_modes``
(compared in lower case without spaces and punctuation, so ``bypassPermissions``, ``Bypass
permissions`` and ``bypass-permissions`` all match ``bypass``). A refused mode fails the task
``bad_input`` with the reason. Permission options an agent offers that would switch it into
such a mode are never chosen either.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from backends.errors import BadModelError

_NOT_ALNUM = re.compile(r"[^a-z0-9]")


@dataclass(frozen=True)
class Mode:
    id: str
    name: str = ""


def _normal(text: str) -> str:
    return _NOT_ALNUM.sub("", text.lower())


def bypasses(denied: Sequence[str], *labels: str) -> str | None:
    """The entry of ``denied`` that any of ``labels`` (a mode's id, name) contains, if any."""
    for label in labels:
        text = _normal(label)
        for entry in denied:
            if _normal(entry) and _normal(entry) in text:
                return entry
    return None


def check_mode(denied: Sequence[str], requested: str, offered: Iterable[Mode], agent: str) -> None:
    """Raise :class:`BadModelError` unless ``requested`` is an offered mode that asks for permission."""
    modes = {mode.id: mode for mode in offered}
    mode = modes.get(requested)
    if mode is None:
        known = ", ".join(sorted(modes)) or "none"
        raise BadModelError(f"{agent} offers no mode {requested!r} (its modes: {known})")
    entry = bypasses(denied, mode.id, mode.name)
    if entry is not None:
        raise BadModelError(
            f"mode {requested!r} of {agent} lets it act without asking for permission "
            f"(matches {entry!r} in permissions.denied_modes)"
        )
