"""The composition root: configuration, the command line, and the processes it starts."""

from __future__ import annotations

from orchestrator.app.cli import main
from orchestrator.app.config import Config, load_config

__all__ = ["Config", "load_config", "main"]
