"""Routing tasks.agent to a backend, and refusing what cannot run."""

from __future__ import annotations

import pytest

from backends.errors import BackendError
from backends.noop import NoopBackend
from orchestrator.dispatch.routing import Router
from orchestrator.errors import TaskRejected
from testkit.scripted_backend import ScriptedBackend


def test_native_noop_and_configured_agents() -> None:
    native = ScriptedBackend(execution_path="native")
    built: list[str] = []

    def agent() -> ScriptedBackend:
        built.append("acp")
        return ScriptedBackend(execution_path="acp")

    router = Router(native=lambda: native, agents={"acp-agent": agent})
    assert router.route(None) is native and router.route("native") is native
    assert isinstance(router.route("noop"), NoopBackend)
    first = router.route("acp-agent")
    assert router.route("acp-agent") is first and built == ["acp"]  # built once, kept warm
    assert router.agent_names == ["acp-agent", "native", "noop"]


def test_unknown_and_unavailable_agents_are_refused_with_a_reason() -> None:
    def broken() -> ScriptedBackend:
        raise BackendError("binary not found")

    router = Router(agents={"broken": broken}, unavailable={"gone": "not installed"})
    with pytest.raises(TaskRejected) as unknown:
        router.route("nope")
    assert unknown.value.reason == "unknown_agent" and "'nope'" in unknown.value.message
    assert "broken, gone, noop" in unknown.value.message
    for name, detail in [("gone", "not installed"), ("broken", "binary not found"), (None, "not configured")]:
        with pytest.raises(TaskRejected) as refused:
            router.route(name)
        assert refused.value.reason == "agent_unavailable" and detail in refused.value.message


class Closable(ScriptedBackend):
    def __init__(self) -> None:
        super().__init__(execution_path="native")
        self.closed = 0

    async def aclose(self) -> None:
        self.closed += 1


@pytest.mark.anyio
async def test_aclose_closes_the_backends_built_so_far_and_later_routes_build_anew() -> None:
    built: list[Closable] = []

    def native() -> Closable:
        built.append(Closable())
        return built[-1]

    router = Router(native=native)
    first = router.route(None)
    router.route("noop")  # has no aclose
    await router.aclose()
    assert [b.closed for b in built] == [1]
    assert router.route(None) is not first and len(built) == 2
    await router.aclose()
    await router.aclose()  # nothing built since: nothing closed twice
    assert [b.closed for b in built] == [1, 1]


def test_reserved_names_cannot_be_configured() -> None:
    with pytest.raises(ValueError, match="reserved"):
        Router(agents={"noop": ScriptedBackend})
