"""End-to-end tests start real processes (dispatchers, gateways, the opencode binary). Modules that
run agents use ``no_leftover_processes``: no agent process may outlive its test. (Not autouse: a
test that restarts PostgreSQL leaves the new server running, on purpose.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testkit.fake_model import FakeModel
from tests.leftovers import no_leftovers

# The gateway tests' fixtures (a real in-process gateway, projects, a scoped token), shared.
from tests.ws_gateway.conftest import gateway, projects, session_id, token  # noqa: F401


@pytest.fixture
def no_leftover_processes() -> Iterator[None]:
    with no_leftovers():
        yield


@pytest.fixture(scope="module")
def fake_model() -> Iterator[FakeModel]:
    """The fake OpenAI-compatible model on 127.0.0.1, one per module."""
    with FakeModel(models=("fake-model",)) as model:
        yield model
