"""Test fakes: an OpenAI-compatible model server and a scripted ACP agent executable."""

from __future__ import annotations

import sys
from pathlib import Path

FAKE_ACP_AGENT = Path(__file__).with_name("fake_acp_agent.py")


def fake_acp_agent_command() -> list[str]:
    """The argv that starts the fake ACP agent with the running interpreter."""
    return [sys.executable, str(FAKE_ACP_AGENT)]
