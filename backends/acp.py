"""The ``acp`` track: an external agent run once over the Agent Client Protocol.

One turn spawns the agent in the session worktree (its own session, so its tree can be killed),
talks to it with the ``acp`` SDK's client side over stdio, and ends it:

1. ``initialize`` advertising ``fs.readTextFile`` and ``fs.writeTextFile`` (no terminals), then
   the session: the Switchyard session's earlier upstream session is continued with
   ``session/resume`` (or ``session/load``, whose replayed history is not emitted again) when the
   agent advertises it, else ``session/new`` in the worktree with no MCP servers, and the prompt
   then carries a bounded transcript of the earlier turns. The task's mode, its model (without a
   ``model_flag``) and its agent options are set through the session's config options, checked
   against what the session advertised (which is also emitted, for the catalogue);
2. ``session/prompt`` with the task's input, streaming until its response:
   ``agent_message_chunk`` → ``TextDelta``, ``agent_thought_chunk`` → ``ReasoningDelta``,
   ``tool_call``/``tool_call_update`` → merged ``ToolCall`` snapshots, ``plan`` → ``Plan``,
   ``available_commands_update`` → ``AgentCommands``; other updates are ignored. The response's
   stop reason and (unstable) usage end the turn;
3. permission requests are answered by the :class:`PermissionPolicy` (``allow_once`` or
   ``reject_once``, never "always", so every request is judged); where it says ``ask``, a person
   decides through the turn's asker (backends.approval) with the options the agent offered.
   Each decision is shown as a ``PermissionDecision``. ``fs/*`` requests are served only inside
   the worktree (:mod:`backends.confine`), a refusal being an error to the agent and a
   ``PermissionDecision``; a write a person approved as a permission request is not asked again;
4. the end, however it comes: ``session/cancel`` if the prompt is still running (pending and later
   permission requests are answered ``cancelled``) and a grace period for the agent to wind down,
   stdin closed, then the whole process tree terminated (:mod:`backends.processes`).

Lines on stdout that are not JSON objects are skipped (:class:`NdjsonStdio`). An agent that
exits or closes stdout mid-turn fails the turn (``agent_crashed``) with the tail of its stderr;
stderr is never logged. Events are queued synchronously in the order the SDK delivers them and
emitted by one task, so frames keep the agent's order even when ``emit`` waits; after a cancel,
what the agent sent while winding down is still emitted (for ``DRAIN_GRACE`` seconds at most).
An opencode agent keeps its data per Switchyard session (``state_dir``), so its next turn can
resume the same upstream session.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager, suppress
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.to_thread
from acp import PROTOCOL_VERSION, Client, RequestError, text_block
from acp.client.connection import ClientSideConnection
from acp.schema import (
    AgentMessageChunk,
    AgentPlanUpdate,
    AgentThoughtChunk,
    AllowedOutcome,
    AvailableCommandsUpdate,
    ContentToolCallContent,
    DeniedOutcome,
    InitializeResponse,
    LoadSessionResponse,
    NewSessionResponse,
    PermissionOption,
    PromptResponse,
    ReadTextFileResponse,
    RequestPermissionResponse,
    ResumeSessionResponse,
    SessionConfigOptionBoolean,
    SessionConfigOptionSelect,
    SessionConfigSelectGroup,
    SessionModeState,
    TextContentBlock,
    ToolCallProgress,
    ToolCallStart,
    ToolCallUpdate,
    WriteTextFileResponse,
)
from anyio.streams.memory import MemoryObjectSendStream
from pydantic import BaseModel, ValidationError

from backends.acp_process import AgentProcess
from backends.acp_spares import SPARES_DIR, AgentSpares, SpareKey
from backends.approval import OPTION_KINDS, ApprovalAnswer, ApprovalRequest, Asker, AskOption
from backends.base import (
    CONTEXT_OVERFLOW,
    AgentAdvertised,
    AgentCommands,
    AgentSession,
    BackendEvent,
    Emit,
    PermissionDecision,
    Plan,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolStatus,
    Turn,
    TurnOutcome,
    Usage,
    is_context_overflow,
    transcript,
)
from backends.confine import read_text, write_text
from backends.errors import BackendError, BadAgentOptionError, BadModelError
from backends.launch import Launch, OneShotBackend, prepare
from backends.modes import Mode, bypasses, check_mode
from backends.permissions import PermissionPolicy, PermissionRequest, Verdict, decide
from backends.registry import AgentSpec
from backends.warmup import WARMUP_PROVIDER
from kernel import get_logger

log = get_logger("backends.acp")
# What a pre-started agent's warm-up model is called (backends.warmup).
WARMUP_PREFIX = f"{WARMUP_PROVIDER}/"

# initialize + session/new + config options.
STARTUP_TIMEOUT = 60.0
# After session/cancel, how long the agent gets to answer the prompt with "cancelled".
CANCEL_GRACE = 5.0
# After the turn, how long emitting its unfinished tool calls may take.
EXIT_GRACE = 2.0
# A cancelled turn still emits what the agent sent while winding down, for at most this long.
DRAIN_GRACE = 5.0
# Every agent is asked: opencode decides nothing by itself, the policy decides.
OPENCODE_ASK_EVERYTHING = {"*": "ask"}

# Keys of a tool call's rawInput that name a file or directory it touches.
PATH_KEYS = ("path", "filePath", "filepath", "file_path", "cwd", "workdir", "directory")
# Keys of a command's rawInput that say where it runs.
CWD_KEYS = ("cwd", "workdir")
ALLOW_KINDS = ("allow_once", "allow_always")
REJECT_KINDS = ("reject_once", "reject_always")
# What a file access the policy says "ask" for offers a person (no agent options exist for it).
FS_OPTIONS = (AskOption("allow", "allow_once", "Allow once"), AskOption("reject", "reject_once", "Reject"))
SessionSetup = NewSessionResponse | ResumeSessionResponse | LoadSessionResponse
ConfigOption = SessionConfigOptionSelect | SessionConfigOptionBoolean


class AcpBackend(OneShotBackend):
    execution_path = "acp"
    takes_agent_options = True

    def __init__(self, spec: AgentSpec, policy: PermissionPolicy | None = None, *, spares: AgentSpares | None = None,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(spec, policy, **kwargs)
        # The service's pre-started agents (None: every turn starts its own process).
        self.spares = spares

    async def run_in(self, turn: Turn, workdir: Path, emit: Emit) -> TurnOutcome:
        root = Path(await anyio.to_thread.run_sync(workdir.resolve))
        data_dir = self.session_state(turn)
        resumable = data_dir is not None
        if self.spares is not None:
            key = SpareKey(self.spec.name, root.parent, turn.git_dir, turn.model)
            spare = await self.spares.take(self, key, data_dir, root)
            if spare is not None:
                try:
                    return await _AcpTurn(self, turn, root, emit, resumable=resumable).drive(spare.agent)
                finally:
                    await spare.release(data_dir)
        async with self.launch(turn.model, root, turn.git_dir, data_dir) as launch:
            try:
                agent = await AgentProcess.start(launch, root, self.spec.name)
            except (OSError, ValueError) as exc:
                return TurnOutcome.failed("agent_unavailable", f"cannot start {launch.argv[0]}: {exc}")
            async with anyio.create_task_group() as services:
                services.start_soon(agent.serve)
                try:
                    outcome = await _AcpTurn(self, turn, root, emit, resumable=resumable).drive(agent)
                finally:
                    services.cancel_scope.cancel()
        return outcome

    def launch(
        self,
        model: str | None,
        workdir: Path,
        git_dir: Path | None,
        data_dir: Path | None,
        warmup_url: str | None = None,
    ) -> AbstractAsyncContextManager[Launch]:
        """The agent's launch in ``workdir`` (a worktree, or for a spare its project's directory)."""
        return prepare(
            self.spec,
            model,
            workdir=workdir,
            sandbox=self.sandbox,
            git_dir=git_dir,
            opencode=replace(self.opencode, permission=OPENCODE_ASK_EVERYTHING),
            parent_env=self.parent_env,
            data_dir=data_dir,
            warmup_url=warmup_url,
        )

    def spare_state(self, name: str) -> Path | None:
        """A spare's own data directory (opencode agents with a state_dir), for the session that takes it."""
        if self.state_dir is None or not self.spec.opencode:
            return None
        return self.state_dir / self.spec.name / SPARES_DIR / name

    def config_hash(self, root: Path) -> str:
        """What must not change for an upstream session to be continued: the agent and the worktree."""
        facts = {"agent": self.spec.name, "command": list(self.spec.command), "cwd": str(root)}
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


class _AcpTurn:
    """One turn: the agent process, the connection, the event queue and the way it all ends."""

    def __init__(self, backend: AcpBackend, turn: Turn, root: Path, emit: Emit, *, resumable: bool) -> None:
        self.spec = backend.spec
        self.turn = turn
        self.root = root
        self.emit = emit
        self.send, self.receive = anyio.create_memory_object_stream[BackendEvent | anyio.Event](math.inf)
        policy = backend.policy.effective(self.spec.name, turn.project_name)
        self.client = TurnClient(root, policy, self.send, turn.asker)
        # Only an agent whose data outlives the turn (opencode with a state_dir; any other agent
        # keeps its own) has a session worth continuing.
        self.config_hash = backend.config_hash(root) if resumable or not self.spec.opencode else None
        self.agent_session: AgentSession | None = None
        # No upstream session to continue: the prompt carries the earlier turns.
        self.context = ""
        self.forward_scope = anyio.CancelScope(shield=True)

    async def drive(self, agent: AgentProcess) -> TurnOutcome:
        """The turn on ``agent`` (started for it, or pre-started), which is shut down at its end."""
        # TurnClient implements what the advertised capabilities need; the SDK refuses the rest.
        agent.relay.target = cast(Client, self.client)
        try:
            return await self._converse_and_forward(agent)
        finally:
            with anyio.CancelScope(shield=True):
                await self._shut_down(agent)

    async def _converse_and_forward(self, agent: AgentProcess) -> TurnOutcome:
        """The dialogue, while one task emits the queued events; returns once all are emitted."""
        async with anyio.create_task_group() as forwarding:
            forwarding.start_soon(self._forward)
            try:
                outcome = await self._converse(agent)
            except BaseException:
                # Cancelled: what the agent sent while winding down is still emitted, for a while.
                self.forward_scope.deadline = anyio.current_time() + DRAIN_GRACE
                raise
            finally:
                self.send.close()
        return outcome

    # ----------------------------------------------------------------------------- the dialogue

    async def _converse(self, agent: AgentProcess) -> TurnOutcome:
        conn = agent.conn
        try:
            with anyio.fail_after(STARTUP_TIMEOUT):
                session_id = await self._start_session(agent)
        except TimeoutError:
            return TurnOutcome.failed("agent_start_timeout", f"{self.spec.name} did not start a session in time")
        except (BadModelError, BadAgentOptionError) as exc:
            return TurnOutcome.failed("bad_input", str(exc), agent_session=self.agent_session)
        except Exception as exc:
            return await self._failure(exc, agent, "session setup")
        if session_id is None:
            return TurnOutcome.failed("protocol_error", f"{self.spec.name} speaks another ACP version")
        try:
            response = await self._prompt(conn, session_id)
        except Exception as exc:
            return await self._failure(exc, agent, "session/prompt")
        if response is None:
            error = f"{self.spec.name} gave no result in {self.spec.timeout:g}s"
            return TurnOutcome.failed("timeout", error, agent_session=self.agent_session)
        return self._outcome(response)

    async def _start_session(self, agent: AgentProcess) -> str | None:
        conn = agent.conn
        init = await agent.initialize()
        if init.protocol_version != PROTOCOL_VERSION:
            return None
        continued = await self._continue_session(conn, init)
        if continued is None:
            session = await conn.new_session(cwd=str(self.root), mcp_servers=[])
            session_id, setup = session.session_id, cast(SessionSetup, session)
            self.context = transcript(self.turn.history)
        else:
            session_id, setup = continued
        if self.config_hash is not None:
            self.agent_session = AgentSession(session_id, self.config_hash)
        options = list(setup.config_options or ())
        self.client.queue(advertised(options, setup.modes, self.client.policy.denied_modes))
        if self.turn.mode_id:
            check_mode(self.client.policy.denied_modes, self.turn.mode_id, advertised_modes(setup), self.spec.name)
            await self._select(conn, session_id, options, setup.modes, "mode", self.turn.mode_id)
        if agent.launch.session_model:
            await self._select(conn, session_id, options, setup.modes, "model", agent.launch.session_model)
        for key, value in self.turn.agent_options.items():
            config_id = check_option(self.spec.name, options, key, value)
            try:
                await conn.set_config_option(config_id=config_id, session_id=session_id, value=value)
            except RequestError as exc:
                raise BadAgentOptionError(f"{self.spec.name} refused {key} = {value!r}: {exc}") from None
        return session_id

    async def _continue_session(
        self, conn: ClientSideConnection, init: InitializeResponse
    ) -> tuple[str, SessionSetup] | None:
        """The earlier upstream session, resumed (or loaded) if the agent can; None: start anew."""
        previous = self.turn.agent_session
        if previous is None or previous.config_hash != self.config_hash:
            return None
        capabilities = init.agent_capabilities
        sessions = capabilities.session_capabilities if capabilities else None
        upstream = previous.upstream_session_id
        try:
            if sessions is not None and sessions.resume is not None:
                resumed = await conn.resume_session(session_id=upstream, cwd=str(self.root), mcp_servers=[])
                return upstream, resumed
            if capabilities is not None and capabilities.load_session:
                # The agent replays the conversation as updates: history, not this turn's output.
                self.client.replaying = True
                try:
                    loaded = await conn.load_session(session_id=upstream, cwd=str(self.root), mcp_servers=[])
                finally:
                    self.client.replaying = False
                return upstream, loaded or LoadSessionResponse()
        except RequestError as exc:
            fields = {"agent": self.spec.name, "session": upstream, "error": str(exc)}
            log.info("acp.session_not_continued", **fields)
        return None

    async def _select(
        self,
        conn: ClientSideConnection,
        session_id: str,
        options: Sequence[ConfigOption],
        modes: SessionModeState | None,
        category: str,
        value: str,
    ) -> None:
        """Set the session's config option of ``category`` (``mode`` falls back to session/set_mode)."""
        for option in options:
            if option.category == category:
                try:
                    await conn.set_config_option(config_id=option.id, session_id=session_id, value=value)
                except RequestError as exc:
                    raise BadModelError(f"{self.spec.name} refused {category} {value!r}: {exc}") from None
                return
        if category == "mode" and modes is not None:
            try:
                await conn.set_session_mode(session_id=session_id, mode_id=value)
            except RequestError as exc:
                raise BadModelError(f"{self.spec.name} refused mode {value!r}: {exc}") from None
            return
        raise BadModelError(f"{self.spec.name} offers no way to choose a {category} (asked for {value!r})")

    async def _prompt(self, conn: ClientSideConnection, session_id: str) -> PromptResponse | None:
        """``session/prompt``, None after ``spec.timeout``; ended early, the agent gets ``session/cancel``."""
        result: list[PromptResponse | Exception] = []
        done = anyio.Event()
        # Shielded so a cancelled turn can still receive the agent's "cancelled" answer.
        prompt_scope = anyio.CancelScope(shield=True)

        async def prompt() -> None:
            with prompt_scope:
                blocks: list[Any] = [text_block(self.context)] if self.context else []
                blocks.append(text_block(self.turn.input))
                try:
                    result.append(await conn.prompt(session_id=session_id, prompt=blocks))
                except Exception as exc:
                    result.append(exc)
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(prompt)
            try:
                with anyio.move_on_after(self.spec.timeout) as deadline:
                    await done.wait()
            finally:
                if not done.is_set():
                    with anyio.CancelScope(shield=True):
                        await self._cancel(conn, session_id, done)
                        prompt_scope.cancel()
        if deadline.cancelled_caught or not result:
            return None
        if isinstance(result[0], Exception):
            raise result[0]
        return result[0]

    async def _cancel(self, conn: ClientSideConnection, session_id: str, done: anyio.Event) -> None:
        self.client.cancel_asks()
        with anyio.move_on_after(CANCEL_GRACE):
            with suppress(Exception):
                await conn.cancel(session_id=session_id)
            await done.wait()

    def _outcome(self, response: PromptResponse) -> TurnOutcome:
        usage = None
        if response.usage is not None:
            usage = Usage(response.usage.input_tokens, response.usage.output_tokens)
            self.client.queue(usage)
        if response.stop_reason == "cancelled":
            return TurnOutcome.cancelled(usage=usage)
        return TurnOutcome.completed(response.stop_reason, usage=usage, agent_session=self.agent_session)

    async def _failure(self, exc: Exception, agent: AgentProcess, during: str) -> TurnOutcome:
        name = self.spec.name
        if isinstance(exc, RequestError):
            reason = "agent_auth_required" if exc.code == -32000 else "agent_error"
            message = f"{name} answered {during} with error {exc.code}: {exc}"
            if is_context_overflow(f"{exc} {json.dumps(exc.data, default=str)}"):
                reason = CONTEXT_OVERFLOW
            return TurnOutcome.failed(reason, message, agent_session=self.agent_session)
        if isinstance(exc, ValidationError):
            return TurnOutcome.failed("protocol_error", f"{name} sent an invalid {during} result: {exc}")
        if not isinstance(exc, ConnectionError):
            raise exc
        # The connection is gone: the agent exited or closed stdout. Its stderr says why.
        status, stderr = await agent.exited()
        return TurnOutcome.failed("agent_crashed", f"{name} {status} during {during}: {stderr}")

    # ----------------------------------------------------------------------------- plumbing

    async def _forward(self) -> None:
        with self.forward_scope, self.receive:
            async for event in self.receive:
                if isinstance(event, anyio.Event):
                    event.set()  # everything queued before it has been emitted
                else:
                    await self.emit(event)

    async def _shut_down(self, agent: AgentProcess) -> None:
        """End the agent's process tree; then show the tool calls it left open as failed."""
        self.client.cancel_asks()
        await agent.shut_down()
        for call in self.client.unfinished():
            with suppress(Exception), anyio.move_on_after(EXIT_GRACE):
                await self.emit(call)


class TurnClient:
    """The client side the agent talks to: session updates, permissions, confined files."""

    def __init__(
        self,
        root: Path,
        policy: PermissionPolicy,
        events: MemoryObjectSendStream[BackendEvent | anyio.Event],
        asker: Asker | None = None,
    ) -> None:
        self.root = root
        self.policy = policy
        self.events = events
        self.asker = asker
        self.cancelling = False
        # While session/load replays the conversation: updates are history, not this turn's.
        self.replaying = False
        self.tools: dict[str, ToolCall] = {}
        # Tool calls whose output came as rawOutput, which then wins over their content.
        self.raw_outputs: set[str] = set()
        # Requests waiting for a person; cancelled (answered "cancelled") when the turn ends.
        self.asking: set[anyio.CancelScope] = set()
        # Real paths a person allowed to be edited in this turn: the fs/* call that follows the
        # agent's permission request is not asked again.
        self.approved_paths: set[str] = set()

    def queue(self, event: BackendEvent | anyio.Event) -> bool:
        # Synchronous, so events keep the order in which the SDK hands them over.
        try:
            self.events.send_nowait(event)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return False
        return True

    def cancel_asks(self) -> None:
        """The turn is ending: nothing more is asked, and open questions are withdrawn."""
        self.cancelling = True
        for scope in self.asking:
            scope.cancel()

    def unfinished(self) -> list[ToolCall]:
        """Tool calls the agent left pending or running, marked failed (the turn is over)."""
        open_calls = [c for c in self.tools.values() if c.status in (ToolStatus.PENDING, ToolStatus.IN_PROGRESS)]
        return [replace(c, status=ToolStatus.FAILED) for c in open_calls]

    # ---------------------------------------------------------------- agent → client requests

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        if self.replaying:
            return
        for event in self._events(update):
            self.queue(event)

    async def request_permission(
        self, options: list[PermissionOption], session_id: str, tool_call: ToolCallUpdate, **kwargs: Any
    ) -> RequestPermissionResponse:
        call_id, permission = tool_call.tool_call_id, tool_call.kind or "other"
        cancelled = RequestPermissionResponse(outcome=DeniedOutcome(outcome="cancelled"))
        if self.cancelling:
            self.queue(PermissionDecision(call_id, permission, "cancelled", "the turn is being cancelled"))
            return cancelled
        request = permission_request(tool_call)
        verdict = await anyio.to_thread.run_sync(decide, self.policy, request, self.root)
        if verdict.ask and self.asker is not None:
            offered = tuple(
                AskOption(o.option_id, o.kind, o.name)
                for o in options
                if o.kind in OPTION_KINDS and not bypasses(self.policy.denied_modes, o.option_id, o.name)
            )
            asked = ApprovalRequest(
                permission=permission,
                tool_kind=request.kind,
                title=request.title,
                options=offered,
                tool_call_id=call_id,
                command=request.command if isinstance(request.command, str) else _join(request.command),
                paths=request.paths,
            )
            answer = await self._ask(asked)
            if answer is None:
                self.queue(PermissionDecision(call_id, permission, "cancelled", "the turn is being cancelled"))
                return cancelled
            if answer.allowed:
                self.approved_paths |= await anyio.to_thread.run_sync(_real_paths, self.root, request.paths)
            self.queue(
                PermissionDecision(call_id, permission, "allowed" if answer.allowed else "denied", answer.reason)
            )
            if answer.option_id is None:
                return cancelled
            return RequestPermissionResponse(outcome=AllowedOutcome(outcome="selected", option_id=answer.option_id))
        option = choose_option(verdict.allowed, options, self.policy.denied_modes)
        if option is None:
            # Neither a matching allow nor reject option: "cancelled" is the only other answer.
            reason = f"{verdict.reason}; the agent offered no matching option"
            self.queue(PermissionDecision(call_id, permission, "denied", reason))
            return cancelled
        self.queue(PermissionDecision(call_id, permission, "allowed" if verdict.allowed else "denied", verdict.reason))
        return RequestPermissionResponse(outcome=AllowedOutcome(outcome="selected", option_id=option))

    async def _ask(self, request: ApprovalRequest) -> ApprovalAnswer | None:
        """A person's answer; None when the turn ended first (the request is withdrawn)."""
        assert self.asker is not None
        with anyio.CancelScope() as scope:
            self.asking.add(scope)
            try:
                # What the agent sent before asking (the tool call) reaches clients first.
                emitted = anyio.Event()
                if self.queue(emitted):
                    await emitted.wait()
                return await self.asker.permission(request)
            finally:
                self.asking.discard(scope)
        return None

    async def write_text_file(self, content: str, path: str, session_id: str, **kwargs: Any) -> WriteTextFileResponse:
        await self._check("edit", "fs/write_text_file", path)
        try:
            await anyio.to_thread.run_sync(write_text, self.root, path, content)
        except BackendError as exc:
            self._refused("fs/write_text_file", str(exc))
            raise RequestError(-32602, str(exc), {"path": path}) from None
        except OSError as exc:
            raise RequestError.internal_error({"path": path, "details": exc.strerror or str(exc)}) from None
        return WriteTextFileResponse()

    async def read_text_file(
        self, path: str, session_id: str, limit: int | None = None, line: int | None = None, **kwargs: Any
    ) -> ReadTextFileResponse:
        await self._check("read", "fs/read_text_file", path)
        try:
            content = await anyio.to_thread.run_sync(read_text, self.root, path, line, limit)
        except BackendError as exc:
            self._refused("fs/read_text_file", str(exc))
            raise RequestError(-32602, str(exc), {"path": path}) from None
        except FileNotFoundError:
            raise RequestError.resource_not_found(path) from None
        except OSError as exc:
            raise RequestError.internal_error({"path": path, "details": exc.strerror or str(exc)}) from None
        return ReadTextFileResponse(content=content)

    async def _check(self, kind: str, method: str, path: str) -> None:
        request = PermissionRequest(kind, method, (path,))
        verdict = await anyio.to_thread.run_sync(decide, self.policy, request, self.root)
        if verdict.ask and not self.cancelling:
            real = await anyio.to_thread.run_sync(_real_paths, self.root, (path,))
            if real <= self.approved_paths:
                return  # a person allowed this edit when the agent asked for it
            if self.asker is not None:
                asked = ApprovalRequest(
                    permission=method, tool_kind=kind, title=f"{method} {path}", options=FS_OPTIONS, paths=(path,)
                )
                answer = await self._ask(asked)
                if answer is not None and answer.allowed:
                    self.approved_paths |= real
                    self.queue(PermissionDecision(None, method, "allowed", answer.reason))
                    return
                verdict = Verdict(False, answer.reason if answer else "the turn is being cancelled")
        if not verdict.allowed:
            self._refused(method, verdict.reason)
            raise RequestError(-32602, verdict.reason, {"path": path})

    def _refused(self, method: str, reason: str) -> None:
        self.queue(PermissionDecision(None, method, "denied", reason))

    # ---------------------------------------------------------------- updates → events

    def _events(self, update: Any) -> Iterable[BackendEvent]:
        if isinstance(update, AgentMessageChunk):
            if isinstance(update.content, TextContentBlock) and update.content.text:
                yield TextDelta(update.content.text)
        elif isinstance(update, AgentThoughtChunk):
            if isinstance(update.content, TextContentBlock) and update.content.text:
                yield ReasoningDelta(update.content.text)
        elif isinstance(update, ToolCallStart | ToolCallProgress):
            yield self._merge(update)
        elif isinstance(update, AgentPlanUpdate):
            yield Plan(_dump_all(update.entries))
        elif isinstance(update, AvailableCommandsUpdate):
            yield AgentCommands(_dump_all(update.available_commands))

    def _merge(self, update: ToolCallStart | ToolCallProgress) -> ToolCall:
        """The full snapshot after this update (``content`` replaces, it does not append)."""
        call_id = update.tool_call_id
        call = self.tools.get(call_id) or ToolCall(call_id, name=update.title or call_id)
        changes: dict[str, Any] = {}
        if update.title:
            changes["name"] = update.title
        if update.kind is not None:
            changes["kind"] = update.kind
        if update.status is not None:
            changes["status"] = ToolStatus(update.status)
        if update.raw_input is not None:
            changes["input"] = update.raw_input
        if update.raw_output is not None:
            changes["output"] = update.raw_output
            self.raw_outputs.add(call_id)
        elif update.content is not None and call_id not in self.raw_outputs:
            changes["output"] = _content_output(update.content)
        if update.locations is not None:
            changes["locations"] = tuple(_dump_all(update.locations))
        call = replace(call, **changes)
        self.tools[call_id] = call
        return call


def permission_request(tool_call: ToolCallUpdate) -> PermissionRequest:
    """An ACP tool call as the policy sees it: kind, paths (locations, rawInput, diffs), command, cwd."""
    paths = [loc.path for loc in tool_call.locations or ()]
    raw = tool_call.raw_input
    command: str | Sequence[str] | None = None
    cwd: str | None = None
    if isinstance(raw, dict):
        paths += [raw[key] for key in PATH_KEYS if isinstance(raw.get(key), str)]
        value = raw.get("command")
        if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            command = value
        cwd = next((raw[key] for key in CWD_KEYS if isinstance(raw.get(key), str)), None)
    for item in tool_call.content or ():
        path = getattr(item, "path", None)
        if isinstance(path, str):
            paths.append(path)
    return PermissionRequest(
        kind=tool_call.kind or "other", title=tool_call.title or "", paths=tuple(paths), command=command, cwd=cwd
    )


def advertised(
    options: Sequence[ConfigOption], modes: SessionModeState | None, denied_modes: Sequence[str] = ()
) -> AgentAdvertised:
    """What a session offers: its models and modes (config options of those categories, or the
    legacy mode state; not those a task may not select) and every config option, for the
    catalogue and agent options."""
    models = tuple(
        value
        for option in options
        if option.category == "model"
        for value in _values(option)
        if not value.startswith(WARMUP_PREFIX)
    )
    mode_list: list[dict[str, Any]] = [
        {"id": choice.value, "name": choice.name, **({"description": choice.description} if choice.description else {})}
        for option in options
        if option.category == "mode" and isinstance(option, SessionConfigOptionSelect)
        for choice in _choices(option)
    ]
    if not mode_list and modes is not None:
        mode_list = _dump_all(modes.available_modes)
    allowed = [m for m in mode_list if not bypasses(denied_modes, str(m["id"]), str(m.get("name", "")))]
    return AgentAdvertised(models, tuple(allowed), tuple(_without_warmup(_dump_all(options))))


def _without_warmup(options: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A pre-started agent's warm-up model (backends.warmup) is nobody's to choose: not listed
    (choices, and choices in groups, of every option)."""
    kept = []
    for option in options:
        if str(option.get("value", "")).startswith(WARMUP_PREFIX):
            continue
        choices = option.get("options")
        if isinstance(choices, list):
            option = {**option, "options": _without_warmup([c for c in choices if isinstance(c, dict)])}
        kept.append(option)
    return kept


def check_option(agent: str, options: Sequence[ConfigOption], key: str, value: str | bool) -> str:
    """The config option id for an agent option ``key`` (an option's id or its category) if
    ``value`` is one it accepts; else :class:`BadAgentOptionError` saying what it offers."""
    option = next((o for o in options if o.id == key), None) or next((o for o in options if o.category == key), None)
    if option is None:
        offered = ", ".join(sorted(o.id for o in options)) or "none"
        raise BadAgentOptionError(f"{agent} has no option {key!r} (it offers: {offered})")
    if isinstance(option, SessionConfigOptionBoolean):
        if not isinstance(value, bool):
            raise BadAgentOptionError(f"{agent} option {key!r} is true or false, not {value!r}")
        return option.id
    values = _values(option)
    if value not in values:
        raise BadAgentOptionError(f"{agent} option {key!r} must be one of {', '.join(values)}, not {value!r}")
    return option.id


def _choices(option: SessionConfigOptionSelect) -> list[Any]:
    flat: list[Any] = []
    for item in option.options:
        flat += item.options if isinstance(item, SessionConfigSelectGroup) else [item]
    return flat


def _values(option: ConfigOption) -> list[str]:
    return [c.value for c in _choices(option)] if isinstance(option, SessionConfigOptionSelect) else []


def _real_paths(root: Path, paths: Iterable[str]) -> set[str]:
    return {os.path.realpath(Path(root, p)) for p in paths}


def _join(command: Sequence[str] | None) -> str | None:
    return None if command is None else " ".join(command)


def choose_option(allowed: bool, options: Sequence[PermissionOption], denied_modes: Sequence[str] = ()) -> str | None:
    """The agent's option id for the verdict: a one-time allow or reject; None if it offers none.

    An allow option that would switch the agent into a permission-bypassing mode (a switch_mode
    request offers modes as options) is never chosen.
    """
    for kind in ALLOW_KINDS if allowed else REJECT_KINDS:
        for option in options:
            if option.kind == kind and not (allowed and bypasses(denied_modes, option.option_id, option.name)):
                return option.option_id
    return None


def advertised_modes(session: SessionSetup) -> list[Mode]:
    """The modes a session offers: its mode state and its config options of category mode."""
    modes = [Mode(m.id, m.name) for m in (session.modes.available_modes if session.modes else ())]
    for option in session.config_options or ():
        if isinstance(option, SessionConfigOptionSelect) and option.category == "mode":
            modes += [Mode(c.value, c.name) for c in _choices(option)]
    return modes


def _content_output(content: Sequence[Any]) -> Any:
    texts = [
        item.content.text
        for item in content
        if isinstance(item, ContentToolCallContent) and isinstance(item.content, TextContentBlock)
    ]
    if len(texts) == len(content):
        return "".join(texts)
    return _dump_all(content)


def _dump_all(models: Iterable[BaseModel]) -> list[dict[str, Any]]:
    return [m.model_dump(mode="json", by_alias=True, exclude_none=True) for m in models]
