"""The backends package's exception tree; BackendError is its root."""

from __future__ import annotations


class BackendError(Exception):
    """Root of every error a backend raises on purpose."""


class OpencodeNotFoundError(BackendError):
    """The opencode executable is not configured, not on PATH and not in the project's .tools/."""
