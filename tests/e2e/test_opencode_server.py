"""The opencode_server backend against the real ``opencode serve`` (pinned 1.18.33) and FakeModel.

One warm server is shared by the whole module (a module-scoped pool with ``servers = 1``), as it
would be in the service: all tests' worktrees belong to one project (project 1, under one
directory), the only project that server may serve; tests that need other turn limits give their
backend its own settings. Every test uses its own Switchyard session id and worktree directory.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx
import pytest

from backends.base import (
    AgentAdvertised,
    BackendEvent,
    HistoryMessage,
    OutcomeStatus,
    PermissionDecision,
    Status,
    TextDelta,
    ToolCall,
    ToolStatus,
    Turn,
    TurnOutcome,
)
from backends.commands import ANY, CommandRule
from backends.opencode_env import OpencodeSettings
from backends.opencode_pool import OpencodePool, OpencodePoolSettings, ProjectPlace, ServerState, marked_processes
from backends.opencode_server import OpencodeServerBackend
from backends.permissions import PermissionPolicy
from testkit.fake_model import FakeModel, RecordedRequest, Reply, message_text
from testkit.fake_model import ToolCall as ScriptedToolCall
from testkit.repos import sample_repo
from testkit.rows import add_repo_session, start_turn
from worktrees import WorktreeSettings
from worktrees.manager import WorktreeManager

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leftover_processes")]

_session_ids = itertools.count(1000)
SLEEP_ALLOWED = PermissionPolicy(commands={"sleep": CommandRule(args=ANY)})


@pytest.fixture(scope="module")
def fake_model() -> Iterator[FakeModel]:
    with FakeModel() as model:
        yield model


@asynccontextmanager
async def one_server_pool(
    fake_model: FakeModel, root: Path, warm: Path | None = None, **settings: Any
) -> AsyncIterator[OpencodePool]:
    """A pool of one server; with ``warm``, already serving project 1 whose worktrees are there."""
    opencode = OpencodeSettings(base_url=fake_model.base_url, models=("fake-model",))
    async with OpencodePool(OpencodePoolSettings(servers=1, min_servers=1, **settings), opencode, root) as pool:
        if warm is not None:
            async with pool.lease(ProjectPlace(1, warm), 0, str(warm)):
                pass
        yield pool
    # Nothing any server started (bash tool commands included) outlives the pool.
    assert pool.leftover_pids() == []


@pytest.fixture(scope="module")
def project_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where project 1's worktrees live."""
    return tmp_path_factory.mktemp("project-1").resolve()


@pytest.fixture(scope="module")
async def oc_pool(
    fake_model: FakeModel, tmp_path_factory: pytest.TempPathFactory, project_dir: Path
) -> AsyncIterator[OpencodePool]:
    """The module's warm server (started before, so not counted against, each test's processes)."""
    async with one_server_pool(fake_model, tmp_path_factory.mktemp("opencode-pool"), project_dir) as pool:
        yield pool
    assert marked_processes(lambda m: m.startswith(f"{os.getpid()}.")) == {}


@dataclass
class Run:
    outcome: TurnOutcome
    events: list[BackendEvent] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, TextDelta))

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [e for e in self.events if isinstance(e, ToolCall)]


def make_turn(workdir: Path, text: str, session_id: int, **changes: Any) -> Turn:
    return Turn(task_id=next(_session_ids), session_id=session_id, project_id=1, input=text, workdir=workdir, **changes)


async def run(backend: OpencodeServerBackend, turn: Turn, events: list[BackendEvent] | None = None) -> Run:
    collected = [] if events is None else events

    async def emit(event: BackendEvent) -> None:
        collected.append(event)

    outcome = await backend.run_turn(turn, emit)
    return Run(outcome, collected)


async def wait_until(predicate: Any, timeout: float = 20.0, what: str = "condition") -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.05)


def mentions(word: str, request: RecordedRequest) -> bool:
    return word in request.last_user_text


_worktree_numbers = itertools.count(1)


def worktree_parent(tmp_path: Path) -> Path:
    path = tmp_path / "project"
    path.mkdir()
    return path


def worktree(project: Path, name: str = "wt") -> Path:
    """A new worktree directory of the project whose worktrees are in ``project``."""
    path = project / f"{name}-{next(_worktree_numbers)}"
    path.mkdir()
    return path


# ---------------------------------------------------------------------------- warm reuse


async def test_two_turns_reuse_the_server_and_the_opencode_session(
    oc_pool: OpencodePool, fake_model: FakeModel, project_dir: Path
) -> None:
    backend = OpencodeServerBackend(oc_pool)
    wt, session = worktree(project_dir), next(_session_ids)
    first = await run(backend, make_turn(wt, "hello one", session))
    assert first.outcome.status is OutcomeStatus.COMPLETED, first.outcome
    assert first.text == "Fake reply to: hello one"
    assert first.outcome.usage is not None and first.outcome.usage.total > 0
    assert first.outcome.agent_session is not None

    second = await run(backend, make_turn(wt, "hello two", session, agent_session=first.outcome.agent_session))
    assert second.outcome.status is OutcomeStatus.COMPLETED, second.outcome
    assert second.text == "Fake reply to: hello two"
    assert second.outcome.agent_session == first.outcome.agent_session
    # The same opencode session: the model got the first exchange as history.
    request = next(r for r in reversed(fake_model.chat_requests) if r.last_user_text == "hello two")
    assert any("hello one" in str(m.get("content")) for m in request.messages)
    assert request.working_directory == str(wt.resolve())


async def test_a_changed_config_or_a_lost_server_gets_a_new_opencode_session(
    oc_pool: OpencodePool, project_dir: Path
) -> None:
    backend = OpencodeServerBackend(oc_pool)
    wt, session = worktree(project_dir), next(_session_ids)
    first = (await run(backend, make_turn(wt, "hi", session))).outcome
    assert first.agent_session is not None
    stale_hash = dataclasses.replace(first.agent_session, config_hash="0" * 64)
    lost_server = dataclasses.replace(first.agent_session, server_key="gone/1")
    other_agent = await run(backend, make_turn(wt, "hi", session, agent_session=first.agent_session, mode_id="plan"))
    for previous in (stale_hash, lost_server):
        again = (await run(backend, make_turn(wt, "hi", session, agent_session=previous))).outcome
        assert again.status is OutcomeStatus.COMPLETED, again
        assert again.agent_session is not None
        assert again.agent_session.upstream_session_id != first.agent_session.upstream_session_id
    assert other_agent.outcome.agent_session is not None
    assert other_agent.outcome.agent_session.config_hash != first.agent_session.config_hash
    assert other_agent.outcome.agent_session.upstream_session_id != first.agent_session.upstream_session_id


async def test_a_new_opencode_session_gets_the_earlier_history_as_context(
    oc_pool: OpencodePool, fake_model: FakeModel, project_dir: Path
) -> None:
    history = (HistoryMessage("user", "What is the code word?"), HistoryMessage("assistant", "It is PELICAN."))
    turn = make_turn(worktree(project_dir), "and again?", next(_session_ids), history=history)
    result = await run(OpencodeServerBackend(oc_pool), turn)
    assert result.outcome.status is OutcomeStatus.COMPLETED, result.outcome
    request = next(r for r in reversed(fake_model.chat_requests) if r.last_user_text == "and again?")
    assert "assistant: It is PELICAN." in request.system_text


def user_texts(fake_model: FakeModel, last: str) -> list[str]:
    request = next(r for r in reversed(fake_model.chat_requests) if r.last_user_text == last)
    return [message_text(m) for m in request.messages if m.get("role") == "user"]


async def test_the_opencode_session_survives_a_restart_of_the_pool(fake_model: FakeModel, tmp_path: Path) -> None:
    """The server's data slot outlives the server: after a restart the session goes on where it was."""
    root, wt, session = tmp_path / "restarted", worktree(worktree_parent(tmp_path)), next(_session_ids)
    async with one_server_pool(fake_model, root) as before:
        first = await run(OpencodeServerBackend(before), make_turn(wt, "the word is HERON", session))
    assert first.outcome.agent_session is not None
    history = (HistoryMessage("user", "the word is HERON"), HistoryMessage("assistant", first.text))
    async with one_server_pool(fake_model, root) as after:
        turn = make_turn(wt, "which word was it?", session, agent_session=first.outcome.agent_session, history=history)
        second = await run(OpencodeServerBackend(after), turn)
    assert second.outcome.status is OutcomeStatus.COMPLETED, second.outcome
    assert second.outcome.agent_session == first.outcome.agent_session
    # opencode itself remembered the first turn; Switchyard did not have to hand it the history.
    assert user_texts(fake_model, "which word was it?") == ["the word is HERON", "which word was it?"]
    request = next(r for r in reversed(fake_model.chat_requests) if r.last_user_text == "which word was it?")
    assert "Earlier conversation" not in request.system_text


async def test_the_effort_option_picks_a_variant_of_the_model(
    oc_pool: OpencodePool, fake_model: FakeModel, project_dir: Path
) -> None:
    backend = OpencodeServerBackend(oc_pool)
    wt, session = worktree(project_dir), next(_session_ids)
    result = await run(backend, make_turn(wt, "think hard", session, agent_options={"effort": "high"}))
    assert result.outcome.status is OutcomeStatus.COMPLETED, result.outcome
    request = next(r for r in reversed(fake_model.chat_requests) if r.last_user_text == "think hard")
    assert request.body.get("reasoning_effort") == "high", request.body
    [offered] = [e for e in result.events if isinstance(e, AgentAdvertised)]
    assert offered.models == ("local/fake-model",)
    assert [o["id"] for o in offered.config_options] == ["effort"]
    assert "build" in [m["id"] for m in offered.modes]

    for options, message in (
        ({"effort": "extreme"}, "must be one of low, medium, high"),
        ({"color": "red"}, "no option"),
    ):
        refused = await run(backend, make_turn(wt, "think hard", session, agent_options=options))
        assert (refused.outcome.status, refused.outcome.stop_reason) == (OutcomeStatus.FAILED, "bad_input")
        assert message in (refused.outcome.error or "")


async def test_two_sessions_in_two_worktrees_run_concurrently_on_one_server(
    oc_pool: OpencodePool, fake_model: FakeModel, project_dir: Path
) -> None:
    backend = OpencodeServerBackend(oc_pool)
    pieces = {name: [f"{name}-{i} " for i in range(8)] for name in ("ALPHA", "BRAVO")}
    for name, text in pieces.items():
        fake_model.enqueue(Reply(text=text, chunk_delay=0.05), when=partial(mentions, name))
    runs: dict[str, Run] = {}
    workdirs = {name: worktree(project_dir, name) for name in pieces}

    async def one(name: str) -> None:
        runs[name] = await run(backend, make_turn(workdirs[name], f"{name} please", next(_session_ids)))

    async with anyio.create_task_group() as tg:
        for name in pieces:
            tg.start_soon(one, name)
    for name, text in pieces.items():
        assert runs[name].outcome.status is OutcomeStatus.COMPLETED, runs[name].outcome
        assert runs[name].text == "".join(text)
    keys = {r.outcome.agent_session.server_key for r in runs.values() if r.outcome.agent_session}
    assert len(keys) == 1 and len(oc_pool.servers) == 1


# ---------------------------------------------------------------------------- files, permissions


async def test_a_written_file_lands_in_the_worktree_and_the_pending_change(
    fake_model: FakeModel, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    repo = sample_repo(tmp_path / "project")
    manager = WorktreeManager(pool, WorktreeSettings(root=tmp_path / "worktrees"))
    async with pool.acquire() as conn:
        session = await add_repo_session(conn, repo)
        task = await start_turn(conn, session)
    wt = await manager.ensure(session)
    input_ = "WRITE_FILE notes/agent.txt TOKEN-42"
    turn = Turn(
        task_id=task, session_id=session, project_id=wt.project_id, input=input_, workdir=wt.path, git_dir=wt.git_dir
    )
    # A pool of its own: a real project's server (its worktrees and git directory) for this turn.
    async with one_server_pool(fake_model, tmp_path / "pool") as oc_pool:
        result = await run(OpencodeServerBackend(oc_pool), turn)
    assert result.outcome.status is OutcomeStatus.COMPLETED, result.outcome
    assert (wt.path / "notes" / "agent.txt").read_text() == "TOKEN-42\n"
    write = result.tool_calls[-1]
    assert (write.name, write.kind, write.status) == ("write", "edit", ToolStatus.COMPLETED)
    assert write.locations == ({"path": str(wt.path.resolve() / "notes" / "agent.txt")},)
    decisions = [e for e in result.events if isinstance(e, PermissionDecision)]
    assert [(d.permission, d.decision) for d in decisions] == [("edit", "allowed")]
    change = await manager.record_turn(session, task_id=task, agent="opencode")
    assert change is not None
    assert [f["path"] for f in change.files] == ["notes/agent.txt"]
    assert "+TOKEN-42" in await manager.get_diff(change.id)


async def test_the_policy_answers_permission_requests(oc_pool: OpencodePool, project_dir: Path) -> None:
    backend = OpencodeServerBackend(oc_pool)  # the default policy denies `sleep 30`
    result = await run(backend, make_turn(worktree(project_dir), "SLEEP_TOOL", next(_session_ids)))
    assert result.outcome.status is OutcomeStatus.COMPLETED, result.outcome
    decisions = [e for e in result.events if isinstance(e, PermissionDecision)]
    assert [(d.permission, d.decision) for d in decisions] == [("bash", "denied")]
    assert decisions[0].tool_call_id == result.tool_calls[-1].tool_call_id
    assert result.tool_calls[-1].status is ToolStatus.FAILED
    assert "permissions.execute is deny" in result.text


async def test_a_subagent_asks_the_turn_for_its_permissions(
    oc_pool: OpencodePool, fake_model: FakeModel, project_dir: Path
) -> None:
    delegate = ScriptedToolCall(
        "task", {"description": "write a file", "prompt": "WRITE_FILE child.txt FROM-CHILD", "subagent_type": "general"}
    )
    fake_model.enqueue(Reply(text="Delegating.", tool_calls=(delegate,)), when=partial(mentions, "DELEGATE"))
    wt = worktree(project_dir)
    result = await run(OpencodeServerBackend(oc_pool), make_turn(wt, "DELEGATE", next(_session_ids)))
    assert result.outcome.status is OutcomeStatus.COMPLETED, result.outcome
    assert (wt / "child.txt").read_text() == "FROM-CHILD\n"
    decisions = [(e.permission, e.decision) for e in result.events if isinstance(e, PermissionDecision)]
    assert decisions == [("task", "allowed"), ("edit", "allowed")]
    # The subagent's own text is not the turn's; the task tool call carries its result.
    assert "FROM-CHILD" not in result.text
    assert result.tool_calls[-1].name == "task" and result.tool_calls[-1].status is ToolStatus.COMPLETED


async def test_an_unknown_opencode_agent_fails_clearly(oc_pool: OpencodePool, project_dir: Path) -> None:
    result = await run(
        OpencodeServerBackend(oc_pool), make_turn(worktree(project_dir), "hi", next(_session_ids), mode_id="nope")
    )
    assert result.outcome.status is OutcomeStatus.FAILED
    assert result.outcome.stop_reason == "bad_input"
    assert result.outcome.error == "opencode offers no mode 'nope' (its modes: build, plan)"


async def test_bad_input_fails_without_a_server(oc_pool: OpencodePool, tmp_path: Path) -> None:
    backend = OpencodeServerBackend(oc_pool)
    no_dir = await run(backend, Turn(task_id=1, session_id=next(_session_ids), project_id=1, input="x"))
    assert (no_dir.outcome.stop_reason, no_dir.outcome.status) == ("bad_input", OutcomeStatus.FAILED)
    bad_model = await run(backend, make_turn(tmp_path, "x", next(_session_ids), model="other/model"))
    assert bad_model.outcome.stop_reason == "bad_input"
    assert "not configured for opencode" in (bad_model.outcome.error or "")


# ---------------------------------------------------------------------------- failures


async def test_a_hanging_model_trips_the_watchdog_and_the_session_stays_usable(
    oc_pool: OpencodePool, project_dir: Path
) -> None:
    backend = OpencodeServerBackend(oc_pool, settings=dataclasses.replace(oc_pool.settings, watchdog=2.0))
    wt, session = worktree(project_dir), next(_session_ids)
    hung = await run(backend, make_turn(wt, "HANG", session))
    assert hung.outcome.status is OutcomeStatus.FAILED
    assert hung.outcome.stop_reason == "inactivity_timeout"
    assert "watchdog" in (hung.outcome.error or "")
    # Aborted, not left running: the next turn of the session works.
    after = await run(backend, make_turn(wt, "hello after", session, agent_session=hung.outcome.agent_session))
    assert after.outcome.status is OutcomeStatus.COMPLETED, after.outcome
    assert after.outcome.agent_session == hung.outcome.agent_session


async def test_a_model_failing_with_500_is_aborted_after_the_retry_cap(
    oc_pool: OpencodePool, fake_model: FakeModel, project_dir: Path
) -> None:
    backend = OpencodeServerBackend(oc_pool, settings=dataclasses.replace(oc_pool.settings, retry_cap=1))
    wt, session = worktree(project_dir), next(_session_ids)
    before = len(fake_model.chat_requests)
    result = await run(backend, make_turn(wt, "FAIL_500", session))
    assert result.outcome.status is OutcomeStatus.FAILED
    assert (result.outcome.stop_reason, result.outcome.transient) == ("model_error", True)
    assert "FAIL_500" in (result.outcome.error or "") and "retry_cap" in (result.outcome.error or "")
    retries = [e for e in result.events if isinstance(e, Status) and e.state == "retrying"]
    assert len(retries) == 1
    assert len([r for r in fake_model.chat_requests[before:] if r.last_user_text == "FAIL_500"]) >= 2
    after = await run(backend, make_turn(wt, "hello after", session, agent_session=result.outcome.agent_session))
    assert after.outcome.status is OutcomeStatus.COMPLETED, after.outcome


def sleeping_tools(marker: str) -> list[int]:
    """Live ``sleep 30`` processes started by the server with this marker."""
    found = []
    for pid in marked_processes(lambda m: m == marker):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"sleep\x0030"):
            found.append(pid)
    return found


async def test_cancelling_a_turn_aborts_the_opencode_session(oc_pool: OpencodePool, project_dir: Path) -> None:
    backend = OpencodeServerBackend(oc_pool, SLEEP_ALLOWED)
    wt, session = worktree(project_dir), next(_session_ids)
    events: list[BackendEvent] = []
    marker = oc_pool.servers[0].marker
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, backend, make_turn(wt, "SLEEP_TOOL", session), events)
            await wait_until(lambda: sleeping_tools(marker))
            scope.cancel()
    assert scope.cancelled_caught
    server = oc_pool.servers[0]
    # The abort was sent in the backend's finally: opencode stops the tool and goes idle.
    await wait_until(lambda: not sleeping_tools(marker), timeout=10)
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert calls and calls[-1].name == "bash"
    # Nothing of this worktree's instance is busy any more.
    assert await server.request("GET", "/session/status", directory=str(wt.resolve())) == {}


async def test_killing_the_server_mid_turn_fails_the_turn_and_the_next_turn_recovers(
    fake_model: FakeModel, tmp_path: Path
) -> None:
    # A pool of its own: this test kills its server.
    async with one_server_pool(fake_model, tmp_path / "pool") as pool:
        await crash_and_recover(pool, worktree_parent(tmp_path))


async def crash_and_recover(oc_pool: OpencodePool, project_dir: Path) -> None:
    backend = OpencodeServerBackend(oc_pool, SLEEP_ALLOWED)
    wt, session = worktree(project_dir), next(_session_ids)
    warm = (await run(backend, make_turn(wt, "hi", session))).outcome
    assert warm.agent_session is not None
    server = oc_pool.servers[0]
    assert server.pid is not None and server.slot == warm.agent_session.server_key
    result: list[Run] = []

    async def sleeper() -> None:
        result.append(await run(backend, make_turn(wt, "SLEEP_TOOL", session, agent_session=warm.agent_session)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(sleeper)
        await wait_until(lambda: sleeping_tools(server.marker))
        os.kill(server.pid, signal.SIGKILL)
    crashed = result[0].outcome
    assert crashed.status is OutcomeStatus.FAILED
    assert crashed.stop_reason == "agent_crashed"
    assert "SIGKILL" in (crashed.error or ""), crashed.error
    # The bash tool's sleep ran in a session of its own; it went with the server.
    await wait_until(lambda: not marked_processes(lambda m: m == server.marker), timeout=10)

    recovered = await run(backend, make_turn(wt, "hello again", session, agent_session=crashed.agent_session))
    assert recovered.outcome.status is OutcomeStatus.COMPLETED, recovered.outcome
    assert recovered.text == "Fake reply to: hello again"
    # The replacement server took over the crashed one's data slot: the opencode session lives on.
    assert recovered.outcome.agent_session is not None
    assert oc_pool.servers[0] is not server
    assert recovered.outcome.agent_session == warm.agent_session


async def test_a_dropped_stream_is_reopened_and_reconciled(
    oc_pool: OpencodePool, fake_model: FakeModel, monkeypatch: pytest.MonkeyPatch, project_dir: Path
) -> None:
    backend = OpencodeServerBackend(oc_pool)
    wt, session = worktree(project_dir), next(_session_ids)
    warm = (await run(backend, make_turn(wt, "hi", session))).outcome
    server = oc_pool.servers[0]
    pieces = [f"piece-{i} " for i in range(10)]
    fake_model.enqueue(Reply(text=pieces, chunk_delay=0.15), when=partial(mentions, "STREAMY"))
    real_events = server.events
    opened = []

    class Breaking:
        """The first stream breaks like a dropped connection after the first text delta."""

        def __init__(self, source: Any) -> None:
            self.source = source

        async def aiter_sse(self) -> AsyncIterator[Any]:
            async for sse in self.source.aiter_sse():
                yield sse
                if '"message.part.delta"' in sse.data:
                    raise httpx.ReadError("connection dropped (test)")

    @asynccontextmanager
    async def flaky(directory: str) -> AsyncIterator[Any]:
        opened.append(directory)
        async with real_events(directory) as source:
            yield Breaking(source) if len(opened) == 1 else source

    monkeypatch.setattr(server, "events", flaky)
    result = await run(backend, make_turn(wt, "STREAMY", session, agent_session=warm.agent_session))
    assert result.outcome.status is OutcomeStatus.COMPLETED, result.outcome
    assert len(opened) == 2
    # Every piece exactly once: what the first stream showed, what the message list had, what the
    # second stream added.
    assert result.text == "".join(pieces)


async def test_a_session_worktree_is_disposed_on_request(oc_pool: OpencodePool, project_dir: Path) -> None:
    backend = OpencodeServerBackend(oc_pool)
    wt, session = worktree(project_dir), next(_session_ids)
    done = (await run(backend, make_turn(wt, "hi", session))).outcome
    assert done.status is OutcomeStatus.COMPLETED
    server = oc_pool.servers[0]
    directory = str(wt.resolve())
    assert directory in server.directories and session in server.sessions
    await oc_pool.dispose_directory(wt)
    assert directory not in server.directories and session not in server.sessions
    # The opencode session survives in the server's database: the next turn still reuses it.
    again = (await run(backend, make_turn(wt, "hi again", session, agent_session=done.agent_session))).outcome
    assert again.status is OutcomeStatus.COMPLETED, again
    assert again.agent_session == done.agent_session


async def test_idle_instances_are_disposed_busy_ones_kept_and_the_next_turn_loads_it_again(
    oc_pool: OpencodePool, fake_model: FakeModel, project_dir: Path
) -> None:
    backend = OpencodeServerBackend(oc_pool)
    idle_wt, busy_wt = worktree(project_dir), worktree(project_dir)
    idle_session, busy_session = next(_session_ids), next(_session_ids)
    done = (await run(backend, make_turn(idle_wt, "hi", idle_session))).outcome
    assert done.status is OutcomeStatus.COMPLETED
    server = oc_pool.servers[0]
    idle, busy = str(idle_wt.resolve()), str(busy_wt.resolve())
    fake_model.enqueue(Reply(text=["slow", " reply"], chunk_delay=2.0), when=partial(mentions, "SLOWLY"))
    async with anyio.create_task_group() as tg:
        slow: list[Run] = []

        async def turn() -> None:
            slow.append(await run(backend, make_turn(busy_wt, "SLOWLY", busy_session)))

        tg.start_soon(turn)
        await wait_until(lambda: server.busy[busy], what="the slow turn running")
        # Everything idle goes, however recent (other tests' instances too); the running turn's stays.
        assert await oc_pool.dispose_idle(0.0) >= 1
        assert idle not in server.directories and busy in server.directories
        # The Switchyard session still sticks to its server.
        assert server.sessions[idle_session] == idle
    assert slow[0].outcome.status is OutcomeStatus.COMPLETED, slow[0].outcome
    assert slow[0].text == "slow reply"
    # The opencode session was kept: the next turn loads the instance again and continues it.
    again = await run(backend, make_turn(idle_wt, "hi again", idle_session, agent_session=done.agent_session))
    assert again.outcome.status is OutcomeStatus.COMPLETED, again.outcome
    assert again.outcome.agent_session == done.agent_session
    assert idle in server.directories
    status = server.status()
    assert status.instances == len(server.directories) and status.spares == 0


async def test_a_grown_idle_server_is_restarted_on_its_slot_with_its_loaded_instances(
    fake_model: FakeModel, tmp_path: Path
) -> None:
    """Disposed instances do not give memory back: a server that grew past idle_growth_mb and had
    no turn for idle_restart_after is replaced on the same data slot; what it still had loaded is
    loaded again, and its sessions go on with their opencode sessions."""
    parent = worktree_parent(tmp_path)
    # Maintenance passes are run by hand here (check()).
    settings = {"idle_growth_mb": 1, "idle_restart_after": 0.0, "health_interval": 3600.0}
    async with one_server_pool(fake_model, tmp_path / "pool", parent, **settings) as pool:
        (old,) = pool.servers
        await pool.check()  # settles: the size it grows from
        assert old.settled_rss > 0 and pool.servers == [old]
        backend = OpencodeServerBackend(pool)
        kept_wt, kept = worktree(parent), next(_session_ids)
        first = await run(backend, make_turn(kept_wt, "the word is OTTER", kept))
        assert first.outcome.status is OutcomeStatus.COMPLETED, first.outcome
        others = [worktree(parent) for _ in range(4)]
        for wt in others:
            assert (
                await run(backend, make_turn(wt, "hi", next(_session_ids)))
            ).outcome.status is OutcomeStatus.COMPLETED
            await pool.dispose_directory(wt)
        await pool.check()
        assert old.rss_bytes - old.settled_rss > 2**20
        await wait_until(old.exited.is_set, what="the old server gone")
        (new,) = pool.servers
        await wait_until(lambda: new.state is ServerState.READY, what="the replacement ready")
        assert new is not old and new.slot == old.slot and kept in new.sessions
        directory = str(kept_wt.resolve())
        await wait_until(lambda: directory in new.directories, what="the kept instance loaded again")
        again = await run(
            backend, make_turn(kept_wt, "which word was it?", kept, agent_session=first.outcome.agent_session)
        )
        assert again.outcome.status is OutcomeStatus.COMPLETED, again.outcome
        assert again.outcome.agent_session == first.outcome.agent_session
        assert user_texts(fake_model, "which word was it?") == ["the word is OTTER", "which word was it?"]


async def test_a_spare_directory_is_warmed_on_the_projects_ready_server_and_kept_until_a_turn_takes_it(
    oc_pool: OpencodePool, fake_model: FakeModel, project_dir: Path, tmp_path: Path
) -> None:
    server = oc_pool.servers[0]
    spare = worktree(project_dir, "spare")
    directory = str(spare.resolve())
    assert await oc_pool.warm(server.place, directory)
    assert directory in server.directories and directory in server.spares
    assert server.status().spares == 1
    assert await oc_pool.warm(server.place, directory)  # already loaded: nothing more
    # Never disposed while it is a spare, and never a reason to start a server for another project.
    assert await oc_pool.dispose_idle(0.0) >= 0 and directory in server.spares
    other_project = ProjectPlace(2, tmp_path)
    assert not await oc_pool.warm(other_project, str(tmp_path))
    assert oc_pool.servers == [server]
    # The session whose worktree it becomes is served there; from then on it is an instance like any other.
    session = next(_session_ids)
    result = await run(OpencodeServerBackend(oc_pool), make_turn(spare, "hello spare", session))
    assert result.outcome.status is OutcomeStatus.COMPLETED, result.outcome
    assert result.outcome.agent_session is not None and result.outcome.agent_session.server_key == server.slot
    assert directory not in server.spares and directory in server.directories


async def test_a_stream_lost_for_good_aborts_the_prompt_on_the_live_server(
    oc_pool: OpencodePool, project_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reconnects run out while the server lives: the turn fails (transient) and opencode is told
    to stop, so it does not keep editing the worktree while the retry prompts the session."""
    backend = OpencodeServerBackend(oc_pool, SLEEP_ALLOWED)
    wt, session = worktree(project_dir), next(_session_ids)
    warm = (await run(backend, make_turn(wt, "hi", session))).outcome
    assert warm.agent_session is not None
    (server,) = [s for s in oc_pool.servers if s.slot == warm.agent_session.server_key]
    real_events = server.events

    class Dead:
        """Every stream breaks after its first event of the session, once the tool runs."""

        def __init__(self, source: Any) -> None:
            self.source = source

        async def aiter_sse(self) -> AsyncIterator[Any]:
            async for sse in self.source.aiter_sse():
                yield sse
                if sleeping_tools(server.marker):
                    raise httpx.ReadError("connection dropped for good (test)")

    @asynccontextmanager
    async def broken(directory: str) -> AsyncIterator[Any]:
        async with real_events(directory) as source:
            yield Dead(source)

    monkeypatch.setattr(server, "events", broken)
    monkeypatch.setattr("backends.opencode_server.RECONNECT_DELAYS", (0.05, 0.05))
    result = await run(backend, make_turn(wt, "SLEEP_TOOL", session, agent_session=warm.agent_session))
    assert result.outcome.status is OutcomeStatus.FAILED, result.outcome
    assert (result.outcome.stop_reason, result.outcome.transient) == ("agent_crashed", True)
    assert "lost the event stream" in (result.outcome.error or "")
    assert not server.exited.is_set()
    # Aborted: opencode stops the tool and the session is idle for the retry.
    await wait_until(lambda: not sleeping_tools(server.marker), timeout=10)
    assert await server.request("GET", "/session/status", directory=str(wt.resolve())) == {}
