"""A one-shot agent's launch: where the model and the prompt go, what environment it gets."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from backends.errors import AgentNotFoundError, BadModelError
from backends.launch import END_OF_OPTIONS, opencode_model, prepare
from backends.opencode_env import OpencodeSettings
from backends.processes import RUN_MARKER
from backends.registry import PRESETS, AgentSpec
from backends.sandbox import Sandbox

pytestmark = pytest.mark.anyio

PYTHON = AgentSpec("py", "pty", (sys.executable, "-c", "pass"), model_flag="--model", pass_env=("KEEP",))
OPENCODE = OpencodeSettings(models=("small", "large"))
SANDBOX = Sandbox()
WORKDIR = Path("/tmp")


async def test_the_prompt_goes_last_after_the_end_of_options() -> None:
    parent = {"PATH": "/usr/bin", "KEEP": "1", "SECRET_TOKEN": "x"}
    async with prepare(
        PYTHON, "m1", prompt="--rm -rf /", workdir=WORKDIR, sandbox=SANDBOX, parent_env=parent
    ) as launch:
        assert launch.argv[-4:] == ("--model", "m1", END_OF_OPTIONS, "--rm -rf /")
        assert launch.env["KEEP"] == "1" and "SECRET_TOKEN" not in launch.env
        assert launch.env[RUN_MARKER] == launch.run_id and launch.session_model is None


async def test_a_prompt_flag_takes_the_prompt_as_one_argument() -> None:
    spec = dataclasses.replace(PYTHON, prompt_flag="--message")
    async with prepare(spec, None, prompt="hello world", workdir=WORKDIR, sandbox=SANDBOX, parent_env={}) as launch:
        assert launch.argv[-1] == "--message=hello world"


async def test_without_a_model_flag_an_acp_agent_gets_its_model_in_the_session() -> None:
    spec = dataclasses.replace(PYTHON, transport="acp", model_flag=None)
    async with prepare(spec, "m2", workdir=WORKDIR, sandbox=SANDBOX, parent_env={}) as launch:
        assert launch.session_model == "m2" and "m2" not in launch.argv


async def test_opencode_gets_a_sandbox_removed_after_the_turn_and_its_model_first() -> None:
    async with prepare(
        PRESETS["opencode-acp"], "local/large", opencode=OPENCODE, workdir=WORKDIR, sandbox=SANDBOX, parent_env={}
    ) as launch:
        home = Path(launch.env["HOME"])
        assert home.is_relative_to(Path(launch.env["XDG_DATA_HOME"]).parent)
        config = json.loads(launch.env["OPENCODE_CONFIG_CONTENT"])
        assert config["model"] == "local/large"
        assert list(config["provider"]["local"]["models"]) == ["large", "small"]
        sandbox = home.parent
        assert sandbox.exists()
    assert not sandbox.exists()


async def test_bad_models_and_missing_agents_fail_before_anything_is_created() -> None:
    with pytest.raises(BadModelError, match="not configured for opencode"):
        opencode_model(OPENCODE, "other/large")
    with pytest.raises(BadModelError):
        opencode_model(OPENCODE, "huge")
    assert opencode_model(OPENCODE, None) == "local/small"
    missing = AgentSpec("gone", "pty", ("no-such-agent-binary",))
    with pytest.raises(AgentNotFoundError, match="not an executable"):
        async with prepare(missing, None, workdir=WORKDIR, sandbox=SANDBOX, parent_env={}):
            pass
