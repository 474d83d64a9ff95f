"""Real stand-ins shared by the tests and the benchmarks (never imported by Switchyard itself).

An OpenAI-compatible fake model server on 127.0.0.1, a scripted ACP agent executable, a scripted
backend, temporary PostgreSQL clusters, git repositories and the rows tests start from.
"""

from __future__ import annotations

import sys
from pathlib import Path

FAKE_ACP_AGENT = Path(__file__).with_name("fake_acp_agent.py")
# ``switchyard`` as a child process, with the running interpreter.
SWITCHYARD = [sys.executable, "-m", "orchestrator"]


def fake_acp_agent_command() -> list[str]:
    """The argv that starts the fake ACP agent with the running interpreter."""
    return [sys.executable, str(FAKE_ACP_AGENT)]
