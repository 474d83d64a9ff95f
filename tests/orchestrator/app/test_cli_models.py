"""`switchyard models`: what the native endpoint offers, or one clear line when it cannot say."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest

from kernel.net import free_port
from testkit import SWITCHYARD
from testkit.fake_model import FakeModel

SWITCHYARD = [*SWITCHYARD, "models"]


@pytest.fixture
def fm() -> Iterator[FakeModel]:
    with FakeModel(models=("small", "big")) as model:
        yield model


def models(base_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD")}
    env = {**clean, "SWITCHYARD__NATIVE__BASE_URL": base_url, "SWITCHYARD__NATIVE__MODEL": "big", **env}
    return subprocess.run([*SWITCHYARD, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_lists_the_endpoint_models_and_marks_the_default(fm: FakeModel) -> None:
    result = models(fm.base_url, SWITCHYARD__NATIVE__API_KEY_ENV="TEST_MODELS_KEY", TEST_MODELS_KEY="sk-cli")
    assert (result.returncode, result.stdout, result.stderr) == (0, "small\nbig  (default)\n", "")
    (request,) = fm.requests
    assert (request.method, request.path, request.headers["authorization"]) == ("GET", "/v1/models", "Bearer sk-cli")
    result = models(fm.base_url, "--json")
    assert json.loads(result.stdout) == ["small", "big"]


def test_unreachable_endpoint_is_one_line() -> None:
    result = models(f"http://127.0.0.1:{free_port()}/v1")
    assert result.returncode == 1
    assert result.stderr.startswith("switchyard: error: cannot reach http://127.0.0.1:")
    assert len(result.stderr.splitlines()) == 1
