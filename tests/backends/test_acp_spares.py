"""Pre-started ACP agents (backends.acp_spares) with real processes: the scripted fake agent, and
the real ``opencode acp`` against FakeModel for a spare's data becoming the session's."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from backends.acp import AcpBackend
from backends.acp_spares import AgentSpares, PreStarted, SpareKey
from backends.base import AgentAdvertised, AgentSession, OutcomeStatus, Turn, TurnOutcome
from backends.errors import AgentConfigError
from backends.opencode_env import OpencodeSettings
from backends.registry import PRESETS, AgentConfig, AgentSpec, build_specs
from testkit import fake_acp_agent_command
from testkit.fake_model import FakeModel
from testkit.repos import git, git_repo
from tests.backends.recorder import Recorder

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leftover_processes")]

FAKE = AgentSpec("fake", "acp", tuple(fake_acp_agent_command()))
WAIT_S = 60


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project's worktrees directory: the spares' working directory."""
    return (tmp_path / "worktrees" / "1").resolve()


@pytest.fixture
async def spares(tmp_path: Path) -> AsyncIterator[AgentSpares]:
    async with AgentSpares(tmp_path / "agent-state") as kept:
        yield kept


def make_turn(workdir: Path, text: str, session_id: int = 1) -> Turn:
    return Turn(task_id=1, session_id=session_id, project_id=1, input=text, agent="fake", workdir=workdir)


async def run(backend: AcpBackend, turn: Turn) -> tuple[TurnOutcome, Recorder]:
    emit = Recorder()
    return await backend.run_turn(turn, emit), emit


async def wait_until(predicate: Callable[[], object], what: str) -> None:
    try:
        with anyio.fail_after(WAIT_S):
            while not predicate():
                await anyio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def ready_one(spares: AgentSpares, key: SpareKey, not_pid: int | None = None) -> PreStarted:
    await wait_until(lambda: [s for s in spares.ready(key) if s.agent.process.pid != not_pid], "a ready spare")
    (spare,) = spares.ready(key)
    return spare


def cwd_report(worktree: Path, cwd: Path) -> str:
    return f"cwd={cwd} session_cwd={worktree}"


async def test_a_spare_is_taken_by_the_next_turn_and_replaced(spares: AgentSpares, project: Path) -> None:
    backend = AcpBackend(FAKE, spares=spares)
    key = SpareKey("fake", project, None, None)
    first = git_repo(project / "10")
    # Nothing was used yet: the first turn starts its own agent (in its worktree) ...
    outcome, emit = await run(backend, make_turn(first, "CWD", 10))
    assert outcome.status is OutcomeStatus.COMPLETED, outcome.error
    assert cwd_report(first, first) in emit.text
    # ... and from then on one is kept ready, initialized, in the project's directory.
    spare = await ready_one(spares, key)
    assert spare.agent.init is not None and spare.agent.alive

    second = git_repo(project / "11")
    outcome, emit = await run(backend, make_turn(second, "CWD", 11))
    assert outcome.status is OutcomeStatus.COMPLETED, outcome.error
    # The spare served it: its process runs in the project's directory, its session in the worktree.
    assert cwd_report(second, project) in emit.text
    assert spare.claimed and spare.released.is_set() and not spare.agent.alive
    # One process per turn, as before: a new one replaces it.
    replacement = await ready_one(spares, key, not_pid=spare.agent.process.pid)
    assert replacement is not spare


async def test_a_spare_that_died_while_waiting_is_replaced_and_the_turn_still_runs(
    spares: AgentSpares, project: Path
) -> None:
    backend = AcpBackend(FAKE, spares=spares)
    key = SpareKey("fake", project, None, None)
    worktree = git_repo(project / "20")
    assert (await run(backend, make_turn(worktree, "hi", 20)))[0].status is OutcomeStatus.COMPLETED
    spare = await ready_one(spares, key)
    os.kill(spare.agent.process.pid, signal.SIGKILL)
    replacement = await ready_one(spares, key, not_pid=spare.agent.process.pid)
    outcome, emit = await run(backend, make_turn(git_repo(project / "21"), "CWD", 21))
    assert outcome.status is OutcomeStatus.COMPLETED, outcome.error
    assert replacement.claimed and cwd_report(project / "21", project) in emit.text

    # Killed just before a turn takes it (the event loop may not know yet): the turn starts its own.
    doomed = await ready_one(spares, key, not_pid=replacement.agent.process.pid)
    os.kill(doomed.agent.process.pid, signal.SIGKILL)
    worktree = git_repo(project / "22")
    outcome, emit = await run(backend, make_turn(worktree, "CWD", 22))
    assert outcome.status is OutcomeStatus.COMPLETED, outcome.error
    assert not doomed.claimed and cwd_report(worktree, worktree) in emit.text


async def test_spares_are_per_project_and_model_and_stop_when_unused(tmp_path: Path, project: Path) -> None:
    async with AgentSpares(idle=1.0) as spares:
        backend = AcpBackend(FAKE, spares=spares)
        worktree = git_repo(project / "30")
        assert (await run(backend, make_turn(worktree, "hi", 30)))[0].status is OutcomeStatus.COMPLETED
        spare = await ready_one(spares, SpareKey("fake", project, None, None))
        # Another model is another key: nothing ready for it.
        assert spares.ready(SpareKey("fake", project, None, "other")) == []
        # Unused for `idle`, the spare is shut down.
        await wait_until(lambda: not spares.snapshot(), "the idle key to be dropped")
        assert not spare.agent.alive


async def test_without_spare_every_turn_starts_its_own(spares: AgentSpares, project: Path) -> None:
    backend = AcpBackend(AgentSpec("fake", "acp", FAKE.command, spare=0), spares=spares)
    for session in (40, 41):
        worktree = git_repo(project / str(session))
        outcome, emit = await run(backend, make_turn(worktree, "CWD", session))
        assert outcome.status is OutcomeStatus.COMPLETED and cwd_report(worktree, worktree) in emit.text
    assert spares.snapshot() == []


async def test_no_spare_outlives_the_service(tmp_path: Path, project: Path) -> None:
    async with AgentSpares() as spares:
        backend = AcpBackend(FAKE, spares=spares)
        assert (await run(backend, make_turn(git_repo(project / "50"), "hi", 50)))[0].status is OutcomeStatus.COMPLETED
        spare = await ready_one(spares, SpareKey("fake", project, None, None))
    assert not spare.agent.alive  # and no_leftover_processes finds nothing of its tree


def test_spare_is_configured_per_agent() -> None:
    assert PRESETS["opencode-acp"].spare == 1
    assert build_specs({"opencode-acp": AgentConfig(spare=0)})["opencode-acp"].spare == 0
    with pytest.raises(AgentConfigError, match=r"agents\.opencode-acp\.spare"):
        build_specs({"opencode-acp": AgentConfig(spare=-1)})


@pytest.mark.slow
async def test_an_opencode_spares_data_becomes_the_new_sessions_and_its_follow_up_resumes_it(
    tmp_path: Path, project: Path
) -> None:
    state = tmp_path / "agent-state"
    async with FakeModel(models=("fake-model",)) as fm, AgentSpares(state) as spares:
        settings = OpencodeSettings(base_url=fm.base_url, models=("fake-model",))
        backend = AcpBackend(PRESETS["opencode-acp"], opencode=settings, state_dir=state, spares=spares)
        key = SpareKey("opencode-acp", project, None, "fake-model")

        def opencode_turn(session: int, text: str, agent_session: AgentSession | None = None) -> Turn:
            turn = make_turn(project / str(session), text, session)
            return replace(turn, agent="opencode-acp", model="fake-model", agent_session=agent_session)

        git_repo(project / "60")
        first, _ = await run(backend, opencode_turn(60, "hello"))
        assert first.status is OutcomeStatus.COMPLETED, first.error
        spare = await ready_one(spares, key)
        assert spare.data_dir is not None and spare.data_dir.parent == state / "opencode-acp" / ".spares"

        git_repo(project / "61")
        taken, emit = await run(backend, opencode_turn(61, "hello spare"))
        assert taken.status is OutcomeStatus.COMPLETED, taken.error
        assert spare.claimed and "Fake reply to: hello spare" in emit.text
        # Its data directory is now the session's ...
        assert (state / "opencode-acp" / "61" / "opencode").is_dir() and not spare.data_dir.exists()
        assert taken.agent_session is not None
        # ... so the follow-up (its own process: the session has data) resumes the same session.
        follow_up, _ = await run(backend, opencode_turn(61, "again", agent_session=taken.agent_session))
        assert follow_up.status is OutcomeStatus.COMPLETED, follow_up.error
        assert follow_up.agent_session == taken.agent_session
        assert not [s for s in spares.ready(key) if s.claimed]
    # A spare's data directory goes with it.
    assert list((state / "opencode-acp" / ".spares").iterdir()) == []


async def test_an_opencode_spare_warms_the_next_spare_worktree_without_asking_the_users_model(
    tmp_path: Path, project: Path
) -> None:
    state = tmp_path / "agent-state"
    spare_worktree = project / "spare-1"
    git_repo(spare_worktree)
    directories = [spare_worktree]
    async with (
        FakeModel(models=("fake-model",)) as fm,
        AgentSpares(state, directories=lambda root: [d for d in directories if d.parent == root]) as spares,
    ):
        settings = OpencodeSettings(base_url=fm.base_url, models=("fake-model",))
        backend = AcpBackend(PRESETS["opencode-acp"], opencode=settings, state_dir=state, spares=spares)
        key = SpareKey("opencode-acp", project, None, "fake-model")
        git_repo(project / "70")
        turn = replace(make_turn(project / "70", "hello"), agent="opencode-acp", model="fake-model", session_id=70)
        first, _ = await run(backend, turn)  # no spare yet: it starts the key's spares
        assert first.status is OutcomeStatus.COMPLETED, first.error
        spare = await ready_one(spares, key)
        # It warmed the spare worktree with a prompt the refusing endpoint took; the user's model
        # saw none of it (no warm-up prompt, no title request for it).
        assert spare.warmed == spare_worktree
        assert spares.endpoint is not None and spares.endpoint.requests >= 1
        assert not [r for r in fm.chat_requests if "Switchyard warm-up" in str(r.body)]
        # Nothing was written there: the spare worktree stays one a new session may take.
        assert git(spare_worktree, "status", "--porcelain", "--ignored", "--untracked-files=all") == ""
        seen = len(fm.chat_requests)
        # The new session whose worktree it is takes it, and its turn goes to the user's model.
        taken, emit = await run(
            backend,
            replace(make_turn(spare_worktree, "hello spare"), agent="opencode-acp", model="fake-model", session_id=71),
        )
        assert taken.status is OutcomeStatus.COMPLETED, taken.error
        assert spare.claimed and "Fake reply to: hello spare" in emit.text
        assert any(r.last_user_text == "hello spare" for r in fm.chat_requests[seen:])
        # The warm-up model is nobody's to choose: the session does not advertise it.
        (advertised,) = emit.of(AgentAdvertised)
        assert advertised.models == (settings.model_ref("fake-model"),) and "switchyard-warmup" not in str(advertised)
