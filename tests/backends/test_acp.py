"""The ACP track with real processes: the scripted fake agent and the real ``opencode acp``."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import anyio
import pytest
from acp.schema import AllowedOutcome, DeniedOutcome, PermissionOption, ToolCallUpdate

from backends.acp import AcpBackend, TurnClient
from backends.approval import ApprovalAnswer, ApprovalRequest, QuestionAnswer, QuestionRequest
from backends.base import (
    AgentAdvertised,
    AgentCommands,
    BackendEvent,
    HistoryMessage,
    OutcomeStatus,
    PermissionDecision,
    Plan,
    ReasoningDelta,
    ToolCall,
    ToolStatus,
    Turn,
    TurnOutcome,
    Usage,
)
from backends.commands import ANY, CommandRule
from backends.opencode_env import OpencodeSettings
from backends.permissions import PermissionPolicy
from backends.processes import descendants, process_table
from backends.pty import PtyBackend
from backends.registry import PRESETS, AgentSpec
from testkit import fake_acp_agent_command
from testkit.fake_model import FakeModel
from tests.backends.recorder import Recorder

pytestmark = pytest.mark.anyio

FAKE = AgentSpec("fake", "acp", tuple(fake_acp_agent_command()))


def turn(workdir: Path | None, text: str, *, model: str | None = None, mode: str | None = None) -> Turn:
    return Turn(
        task_id=1, session_id=1, project_id=1, input=text, agent="fake", model=model, mode_id=mode, workdir=workdir
    )


async def run(
    text: str, workdir: Path | None, policy: PermissionPolicy | None = None, **kw: str
) -> tuple[TurnOutcome, Recorder]:
    emit = Recorder()
    outcome = await AcpBackend(FAKE, policy).run_turn(turn(workdir, text, **kw), emit)
    return outcome, emit


# ---------------------------------------------------------------------------- the fake agent


async def test_updates_become_events_in_order(worktree: Path) -> None:
    outcome, emit = await run("CHUNKS THOUGHT TOOL COMMANDS PLAN", worktree)
    assert outcome.status is OutcomeStatus.COMPLETED
    assert outcome.stop_reason == "end_turn"
    assert outcome.usage == Usage(100, 20)
    kinds = [type(e).__name__ for e in emit.events]
    assert kinds == (
        ["AgentAdvertised"]
        + ["TextDelta"] * 5
        + ["ReasoningDelta"] * 2
        + ["ToolCall"] * 3
        + ["AgentCommands", "Plan", "TextDelta", "Usage"]
    )
    assert emit.text.startswith("Hello from the fake agent. Done: chunks; thought; tool; commands; plan")
    assert [e.text for e in emit.of(ReasoningDelta)] == ["Let me think. ", "Thinking done. "]
    pending, running, done = emit.of(ToolCall)
    assert isinstance(done, ToolCall)
    assert [c.status for c in (pending, running, done)] == [
        ToolStatus.PENDING,
        ToolStatus.IN_PROGRESS,
        ToolStatus.COMPLETED,
    ]
    # Snapshots are merged: later updates keep what earlier ones said.
    assert done.name == "Run echo" and done.kind == "execute"
    assert done.input == {"command": "echo fake-tool"}
    assert done.output == {"output": "fake-tool\n", "exit": 0}
    assert done.locations == ({"path": str(worktree.resolve())},)
    [commands] = emit.of(AgentCommands)
    assert [c["name"] for c in commands.commands] == ["review", "init"]
    [plan] = emit.of(Plan)
    assert plan.entries[1] == {"content": "Change the code", "priority": "medium", "status": "in_progress"}


async def test_the_agent_runs_in_the_worktree(worktree: Path) -> None:
    outcome, emit = await run("CWD", worktree)
    assert outcome.status is OutcomeStatus.COMPLETED
    real = worktree.resolve()
    assert f"cwd={real} session_cwd={real}" in emit.text


async def test_a_command_the_rules_do_not_allow_is_denied_and_visible(worktree: Path) -> None:
    outcome, emit = await run("PERMISSION", worktree)
    assert outcome.status is OutcomeStatus.COMPLETED
    [decision] = emit.of(PermissionDecision)
    assert (decision.tool_call_id, decision.permission, decision.decision) == ("call_1", "execute", "denied")
    allowed = "cat, find, git, grep, head, ls, pwd, rg, tail, wc"
    assert decision.reason == f"'rm' is not an allowed program (allowed: {allowed}); permissions.execute is deny"
    assert "permission=selected:opt-reject" in emit.text
    assert emit.of(ToolCall)[-1].status is ToolStatus.FAILED


async def test_commands_and_edits_an_attacker_asks_for_are_judged_by_every_argument(worktree: Path) -> None:
    asks = {
        "git log -1 --output=../pwned": "git log: option --output is not allowed",
        "git diff --no-index /etc/passwd /dev/null": "git diff: option --no-index is not allowed",
        "cat ../../../api-token": "cat: '../../../api-token' is outside the worktree",
        "cat /proc/self/environ": "cat: '/proc/self/environ' is outside the worktree",
        "rg --pre ./x secret": "rg: option --pre is not allowed",
        "git status --short": "permissions.commands allow the command",
    }
    prompt = " ".join(f"ASK_EXEC {quote(c, safe='')}" for c in asks) + " ASK_EDIT .git ASK_EDIT .GIT/config"
    outcome, emit = await run(prompt, worktree)
    assert outcome.status is OutcomeStatus.COMPLETED
    decisions = emit.of(PermissionDecision)
    assert [d.decision for d in decisions] == ["denied"] * 5 + ["allowed"] + ["denied"] * 2
    for decision, reason in zip(decisions, asks.values(), strict=False):
        assert decision.reason.startswith(reason), (decision, reason)
    assert all("git metadata" in d.reason for d in decisions[-2:])
    assert not (worktree.parent / "pwned").exists()


async def test_an_allowed_command_gets_the_allow_once_option(worktree: Path) -> None:
    policy = PermissionPolicy(commands={"rm": CommandRule(args=ANY)})
    outcome, emit = await run("PERMISSION", worktree, policy)
    assert outcome.status is OutcomeStatus.COMPLETED
    [decision] = emit.of(PermissionDecision)
    assert decision.decision == "allowed"
    assert "permission=selected:opt-allow" in emit.text


async def test_files_are_written_and_read_inside_the_worktree(worktree: Path) -> None:
    absolute = worktree.resolve() / "abs.txt"
    outcome, emit = await run(f"WRITE src/new.txt hello WRITE {absolute} there READ README.md", worktree)
    assert outcome.status is OutcomeStatus.COMPLETED
    assert (worktree / "src" / "new.txt").read_text() == "hello"
    assert absolute.read_text() == "there"
    assert 'read README.md=ok "# demo\\n"' in emit.text
    assert not emit.of(PermissionDecision)


async def test_path_escapes_are_refused_and_nothing_is_written(worktree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (worktree / "link").symlink_to(outside)
    prompt = (
        f"WRITE ../x a WRITE {outside / 'y'} b WRITE link/z c WRITE link/secret.txt d "
        f"WRITE .git/config e READ link/secret.txt READ {outside / 'secret.txt'}"
    )
    outcome, emit = await run(prompt, worktree)
    assert outcome.status is OutcomeStatus.COMPLETED
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "secret"
    assert not (worktree.parent / "x").exists()
    assert emit.text.count("=error -32602") == 7
    decisions = emit.of(PermissionDecision)
    assert len(decisions) == 7
    assert all(d.decision == "denied" for d in decisions)
    assert [d.permission for d in decisions].count("fs/read_text_file") == 2
    assert "git metadata" in decisions[4].reason


async def test_edits_denied_by_policy_are_refused(worktree: Path) -> None:
    outcome, emit = await run("WRITE a.txt x", worktree, PermissionPolicy(edit="deny"))
    assert outcome.status is OutcomeStatus.COMPLETED
    assert not (worktree / "a.txt").exists()
    assert "write a.txt=error -32602 permissions.edit is deny" in emit.text


async def test_non_json_lines_are_skipped(worktree: Path) -> None:
    outcome, emit = await run("MALFORMED CHUNKS", worktree)
    assert outcome.status is OutcomeStatus.COMPLETED
    assert emit.text.startswith("between garbage Hello from")


async def test_a_crash_fails_the_turn_with_the_stderr_tail(worktree: Path) -> None:
    outcome, emit = await run("CHUNKS CRASH", worktree)
    assert outcome.status is OutcomeStatus.FAILED
    assert outcome.stop_reason == "agent_crashed"
    assert outcome.error is not None
    assert "exited with code 3" in outcome.error and "fake agent: simulated crash" in outcome.error
    assert emit.text == "Hello from the fake agent. about to crash "


async def test_cancel_sends_session_cancel_and_ends_the_agent(worktree: Path) -> None:
    emit = Recorder()
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(AcpBackend(FAKE).run_turn, turn(worktree, "CHUNKS WAIT_CANCEL"), emit)
            await emit.wait_for(lambda: "agent. " in emit.text)
            scope.cancel()
    assert scope.cancelled_caught
    # The agent saw session/cancel and its last words were still delivered.
    assert emit.text.endswith("Cancelled: chunks; waiting")


async def test_mode_and_model_go_through_session_config_options(worktree: Path) -> None:
    outcome, _ = await run("CHUNKS", worktree, model="fake/large", mode="plan")
    assert outcome.status is OutcomeStatus.COMPLETED
    bad_model, _ = await run("CHUNKS", worktree, model="gpt-nonexistent")
    assert bad_model.stop_reason == "bad_input"
    assert bad_model.error is not None and "gpt-nonexistent" in bad_model.error
    bad_mode, _ = await run("CHUNKS", worktree, mode="yolo")
    assert bad_mode.stop_reason == "bad_input"
    assert bad_mode.error == "fake offers no mode 'yolo' (its modes: bypassPermissions, default, plan)"


async def test_a_mode_that_bypasses_permission_requests_is_refused(worktree: Path) -> None:
    # The agent does advertise it; a client may still not select it.
    outcome, emit = await run("RUN touch%20bypassed", worktree, mode="bypassPermissions")
    assert (outcome.status, outcome.stop_reason) == (OutcomeStatus.FAILED, "bad_input")
    assert outcome.error is not None and "lets it act without asking" in outcome.error
    assert "'bypass' in permissions.denied_modes" in outcome.error
    assert not (worktree / "bypassed").exists() and not emit.text
    # Configurable: an operator who empties the list may choose it.
    allowed, _ = await run("CHUNKS", worktree, PermissionPolicy(denied_modes=("yolo",)), mode="bypassPermissions")
    assert allowed.status is OutcomeStatus.COMPLETED


async def test_an_allow_option_that_switches_to_a_bypassing_mode_is_never_chosen(worktree: Path) -> None:
    send, receive = anyio.create_memory_object_stream[BackendEvent](10)
    client = TurnClient(worktree, PermissionPolicy(), send)
    call = ToolCallUpdate(tool_call_id="c1", kind="switch_mode", title="Ready to code?")
    options = [
        PermissionOption(option_id="bypassPermissions", kind="allow_always", name="Yes, and bypass permissions"),
        PermissionOption(option_id="default", kind="allow_once", name="Yes, and ask before edits"),
        PermissionOption(option_id="plan", kind="reject_once", name="No, keep planning"),
    ]
    chosen = await client.request_permission(options=options, session_id="s", tool_call=call)
    assert chosen.outcome == AllowedOutcome(outcome="selected", option_id="default")
    only_bypass = [options[0], options[2]]
    refused = await client.request_permission(options=only_bypass, session_id="s", tool_call=call)
    assert refused.outcome == DeniedOutcome(outcome="cancelled")
    send.close()
    receive.close()


async def test_the_agent_timeout_cancels_the_prompt(worktree: Path) -> None:
    emit = Recorder()
    spec = AgentSpec("fake", "acp", FAKE.command, timeout=1.0)
    outcome = await AcpBackend(spec).run_turn(turn(worktree, "SLEEP 60"), emit)
    assert outcome.status is OutcomeStatus.FAILED
    assert outcome.stop_reason == "timeout"


async def test_missing_agent_or_worktree_fails_clearly(worktree: Path) -> None:
    missing = await AcpBackend(AgentSpec("ghost", "acp", ("no-such-acp-agent",))).run_turn(
        turn(worktree, "hi"), Recorder()
    )
    assert missing.stop_reason == "agent_unavailable"
    no_worktree, _ = await run("hi", None)
    assert no_worktree.stop_reason == "bad_input"


# ---------------------------------------------------------------------------- real opencode acp


def opencode_backend(base_url: str, policy: PermissionPolicy | None = None) -> AcpBackend:
    settings = OpencodeSettings(base_url=base_url, models=("fake-model",))
    return AcpBackend(PRESETS["opencode-acp"], policy, opencode=settings)


async def test_opencode_acp_writes_a_file_in_the_worktree(worktree: Path) -> None:
    emit = Recorder()
    async with FakeModel(models=("fake-model",)) as fm:
        outcome = await opencode_backend(fm.base_url).run_turn(
            turn(worktree, "WRITE_FILE notes/out.txt TOKEN-ACP-1", model="fake-model"), emit
        )
    assert outcome.status is OutcomeStatus.COMPLETED, outcome.error
    assert (worktree / "notes" / "out.txt").read_text() == "TOKEN-ACP-1\n"
    kinds = [type(e).__name__ for e in emit.events]
    # The intro text, the write tool asked and allowed, its completion, the final text, usage.
    first_tool, decision = kinds.index("ToolCall"), kinds.index("PermissionDecision")
    assert kinds.index("TextDelta") < first_tool < decision < len(kinds) - 1
    assert kinds[-1] == "Usage"
    [allowed] = emit.of(PermissionDecision)
    assert allowed.decision == "allowed" and allowed.permission == "edit"
    final = emit.of(ToolCall)[-1]
    assert final.status is ToolStatus.COMPLETED
    assert "Done. Tool said: Wrote file successfully." in emit.text


async def wait_for_descendant(cmdline: bytes) -> int:
    """The pid of a process below this one running ``cmdline``, once there is one."""
    with anyio.fail_after(60):
        while True:
            table = process_table()
            for pid in descendants([os.getpid()], table):
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{pid}/cmdline").read_bytes() == cmdline:
                        return pid
            await anyio.sleep(0.05)


async def test_opencode_acp_cancel_stops_its_tool_processes(worktree: Path) -> None:
    emit = Recorder()
    async with FakeModel(models=("fake-model",)) as fm:
        backend = opencode_backend(fm.base_url, PermissionPolicy(commands={"sleep": CommandRule(args=ANY)}))
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(backend.run_turn, turn(worktree, "SLEEP_TOOL"), emit)
                sleep_pid = await wait_for_descendant(b"sleep\x0030\x00")
                scope.cancel()
    assert scope.cancelled_caught
    # opencode runs `sleep 30` in a session of its own (setsid); it must not outlive the turn.
    info = process_table().get(sleep_pid)
    assert info is None or info.zombie
    [decision] = emit.of(PermissionDecision)
    assert decision.decision == "allowed" and decision.permission == "execute"
    final = [e for e in emit.of(ToolCall) if e.name == "sleep 30"][-1]
    assert final.status in (ToolStatus.COMPLETED, ToolStatus.FAILED)


async def test_a_program_that_is_no_acp_agent_fails_with_its_stderr(worktree: Path) -> None:
    code = "import sys; print('hello, I am a CLI'); sys.stderr.write('usage: cli [options]\\n'); sys.exit(2)"
    outcome = await AcpBackend(AgentSpec("cli", "acp", (sys.executable, "-c", code))).run_turn(
        turn(worktree, "hi"), Recorder()
    )
    assert outcome.stop_reason == "agent_crashed"
    assert outcome.error is not None
    assert "exited with code 2 during session setup" in outcome.error and "usage: cli" in outcome.error


async def test_permission_requests_during_a_cancel_are_answered_cancelled(worktree: Path) -> None:
    send, receive = anyio.create_memory_object_stream[BackendEvent](10)
    client = TurnClient(worktree, PermissionPolicy(), send)
    options = [
        PermissionOption(option_id="yes", kind="allow_once", name="Allow"),
        PermissionOption(option_id="no", kind="reject_once", name="Reject"),
    ]
    call = ToolCallUpdate(tool_call_id="c1", kind="read", title="read README.md")
    allowed = await client.request_permission(options=options, session_id="s", tool_call=call)
    assert allowed.outcome == AllowedOutcome(outcome="selected", option_id="yes")
    client.cancelling = True
    cancelled = await client.request_permission(options=options, session_id="s", tool_call=call)
    assert cancelled.outcome == DeniedOutcome(outcome="cancelled")
    decisions = [receive.receive_nowait(), receive.receive_nowait()]
    assert [d.decision for d in decisions if isinstance(d, PermissionDecision)] == ["allowed", "cancelled"]
    send.close()
    receive.close()


# ---------------------------------------------------------------------------- asking a person


class ScriptedAsker:
    """An asker that answers from a list (a person, in the service: orchestrator.dispatch.approvals)."""

    def __init__(self, *answers: ApprovalAnswer) -> None:
        self.answers = list(answers)
        self.asked: list[ApprovalRequest] = []

    async def permission(self, request: ApprovalRequest) -> ApprovalAnswer:
        self.asked.append(request)
        return self.answers.pop(0)

    async def question(self, request: QuestionRequest) -> QuestionAnswer:
        raise AssertionError("ACP agents ask no questions")


async def run_asked(
    text: str, workdir: Path, asker: ScriptedAsker | None, **policy: str
) -> tuple[TurnOutcome, Recorder]:
    emit = Recorder()
    asked = replace(turn(workdir, text), asker=asker)
    outcome = await AcpBackend(FAKE, PermissionPolicy(**policy)).run_turn(asked, emit)
    return outcome, emit


async def test_ask_goes_to_a_person_with_the_options_the_agent_offered(worktree: Path) -> None:
    asker = ScriptedAsker(ApprovalAnswer(True, "opt-allow", "allowed by token:ann"))
    outcome, emit = await run_asked("PERMISSION", worktree, asker, execute="ask")
    assert outcome.status is OutcomeStatus.COMPLETED
    [asked] = asker.asked
    assert (asked.tool_kind, asked.command, asked.title, asked.tool_call_id) == (
        "execute",
        "rm -rf build",
        "rm -rf build",
        "call_1",
    )
    assert [(o.option_id, o.kind) for o in asked.options] == [
        ("opt-allow", "allow_once"),
        ("opt-reject", "reject_once"),
    ]
    assert "permission=selected:opt-allow" in emit.text
    assert emit.of(PermissionDecision) == [PermissionDecision("call_1", "execute", "allowed", "allowed by token:ann")]
    # The tool call reached the frames before the question about it.
    kinds = [type(e).__name__ for e in emit.events]
    assert kinds.index("ToolCall") < kinds.index("PermissionDecision")


async def test_without_an_asker_ask_is_a_denial(worktree: Path) -> None:
    outcome, emit = await run_asked("PERMISSION WRITE a.txt x", worktree, None, execute="ask", edit="ask")
    assert outcome.status is OutcomeStatus.COMPLETED
    assert [d.decision for d in emit.of(PermissionDecision)] == ["denied", "denied"]
    assert all("nobody can be asked" in d.reason for d in emit.of(PermissionDecision))
    assert not (worktree / "a.txt").exists()


async def test_a_file_write_is_asked_and_done_only_when_allowed(worktree: Path) -> None:
    asker = ScriptedAsker(
        ApprovalAnswer(True, "allow", "allowed by token:ann"), ApprovalAnswer(False, "reject", "denied by token:ann")
    )
    outcome, emit = await run_asked("WRITE yes.txt 1 WRITE no.txt 2", worktree, asker, edit="ask")
    assert outcome.status is OutcomeStatus.COMPLETED
    assert [(a.permission, a.paths) for a in asker.asked] == [
        ("fs/write_text_file", ("yes.txt",)),
        ("fs/write_text_file", ("no.txt",)),
    ]
    assert (worktree / "yes.txt").read_text() == "1" and not (worktree / "no.txt").exists()
    assert "write no.txt=error -32602 denied by token:ann" in emit.text


# ---------------------------------------------------------------------------- options, sessions


async def test_agent_options_set_the_sessions_config_options(worktree: Path) -> None:
    for options, expected in (({"effort": "high"}, "effort:high"), ({"thought_level": "medium"}, "effort:medium")):
        emit = Recorder()
        outcome = await AcpBackend(FAKE).run_turn(replace(turn(worktree, "OPTIONS"), agent_options=options), emit)
        assert outcome.status is OutcomeStatus.COMPLETED, outcome
        assert expected in emit.text
    for options, reason in (
        ({"effort": "extreme"}, "option 'effort' must be one of low, medium, high, not 'extreme'"),
        ({"colour": "red"}, "fake has no option 'colour' (it offers: effort, mode, model)"),
    ):
        refused = await AcpBackend(FAKE).run_turn(replace(turn(worktree, "OPTIONS"), agent_options=options), Recorder())
        assert (refused.status, refused.stop_reason) == (OutcomeStatus.FAILED, "bad_input")
        assert reason in (refused.error or "")


async def test_the_session_tells_what_the_agent_offers(worktree: Path) -> None:
    _, emit = await run("hello", worktree)
    [offered] = emit.of(AgentAdvertised)
    assert offered.models == ("fake/small", "fake/large")
    assert [m["id"] for m in offered.modes] == ["default", "plan"]
    assert [o["id"] for o in offered.config_options] == ["mode", "model", "effort"]


async def test_an_agent_that_cannot_resume_gets_the_earlier_turns_as_context(worktree: Path) -> None:
    history = (HistoryMessage("user", "the word is OWL"), HistoryMessage("assistant", "Noted: OWL."))
    emit = Recorder()
    outcome = await AcpBackend(FAKE).run_turn(replace(turn(worktree, "which word?"), history=history), emit)
    assert outcome.status is OutcomeStatus.COMPLETED
    assert "Earlier conversation in this session" in emit.text and "user: the word is OWL" in emit.text
    # Its agent keeps its own state: the upstream session is returned (there is nothing to resume, though).
    assert outcome.agent_session is not None


async def test_the_pty_track_refuses_agent_options(worktree: Path) -> None:
    spec = AgentSpec("echo", "pty", ("echo",))
    outcome = await PtyBackend(spec).run_turn(
        replace(turn(worktree, "hi"), agent_options={"effort": "high"}), Recorder()
    )
    assert (outcome.status, outcome.stop_reason) == (OutcomeStatus.FAILED, "bad_input")
