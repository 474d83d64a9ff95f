"""The ``opencode_server`` track: turns run on a warm ``opencode serve`` from :class:`OpencodePool`.

One opencode session per Switchyard session, reused across turns while its ``config_hash``
(model, opencode agent, permissions, worktree, opencode version) and its server stay the same;
otherwise a new one is created and, when the Switchyard session already has history, that history
is handed to the new session as extra system context.

A turn, against one server and the session's worktree (every request names it as ``directory``):

1. open ``GET /event?directory=`` and wait for ``server.connected`` *before* prompting;
2. ``POST /session/{id}/prompt_async`` with a message id we chose, so the translator
   (:mod:`backends.opencode_events`) knows exactly which assistant messages answer it;
3. emit text, reasoning, tool snapshots and plans as they stream; answer ``permission.asked``
   (the pool's servers ask for every tool use, subagents' included) with the transport-neutral
   policy (:mod:`backends.permissions`), asking a person through the turn's asker where it says
   ``ask``, and ``question.asked`` (the question tool, on with ``[permissions] questions =
   "ask"``) with a person's answer, or reject it; the turn is over at ``session.idle``, failed if a
   ``session.error`` came first;
4. opencode retries a failing model forever: after ``retry_cap`` retries the turn is aborted;
5. a watchdog aborts a turn whose session shows no event for ``watchdog`` seconds (heartbeats and
   other sessions' events do not count; time spent waiting for a person neither); after
   ``QUIET_POLL`` seconds of silence it first asks ``GET /session/status``, in case the stream
   missed the idle;
6. a dropped stream is reopened and the turn reconciled from ``GET /session/{id}/message``; if the
   server process died instead, the turn fails at once with the server's exit status.

The task's agent option ``effort`` selects one of the model's variants (``GET /config/providers``),
sent as the prompt's ``variant``. What the server offers (models, opencode agents as modes, the
effort option) is emitted once per server as :class:`~backends.base.AgentAdvertised`.

Every way out of a prompted turn other than ``session.idle`` — the watchdog, the retry cap, a
stream lost for good while the server lives, cancellation (anyio: a cancel, the dispatcher's
timeout, shutdown, fencing) — sends ``POST /session/{id}/abort``, shielded and time-bounded.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import secrets
import string
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from httpx_sse import EventSource, ServerSentEvent, SSEError

from backends.approval import ApprovalRequest, AskOption, QuestionRequest
from backends.base import (
    CONTEXT_OVERFLOW,
    AgentAdvertised,
    AgentSession,
    Emit,
    PermissionDecision,
    Status,
    ToolCall,
    Turn,
    TurnOutcome,
    Usage,
    transcript,
)
from backends.errors import BadAgentOptionError, BadModelError, OpencodeServerError
from backends.launch import opencode_model
from backends.modes import Mode, check_mode
from backends.opencode_events import (
    EarlyError,
    Idle,
    PermissionAsked,
    QuestionAsked,
    Retrying,
    SessionError,
    TurnTranslator,
)
from backends.opencode_pool import OpencodePool, OpencodePoolSettings, OpencodeServer, ProjectPlace
from backends.permissions import PermissionPolicy, PermissionRequest, Verdict, decide
from backends.sandbox import SandboxUnavailable
from kernel import get_logger

log = get_logger("backends.opencode_server")

DEFAULT_AGENT = "build"
CONNECT_TIMEOUT = 10.0
ABORT_TIMEOUT = 5.0
# Silence (of this session) after which the status is polled in case the stream missed the idle.
QUIET_POLL = 30.0
RECONNECT_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0)
# How long a dropped stream waits for the server process to be seen exiting.
EXIT_GRACE = 1.0
STREAM_BUFFER = 1000
# What talking to a server that went away (or never answered in time) raises.
OPENCODE_ERRORS = (httpx.HTTPError, SSEError, OpencodeServerError, TimeoutError)

# opencode permission name -> ACP tool kind for the policy.
PERMISSION_KINDS = {
    "bash": "execute",
    "edit": "edit",
    "write": "edit",
    "patch": "edit",
    "read": "read",
    "list": "read",
    "glob": "search",
    "grep": "search",
    "codesearch": "search",
    "lsp": "search",
    "webfetch": "fetch",
    "websearch": "fetch",
    "task": "think",
    "todowrite": "think",
    "todoread": "think",
}
HTTP_NOT_FOUND = 404
# opencode agents a prompt may name (subagents are only started by other agents).
PRIMARY_AGENT_MODES = ("primary", "all")
# Metadata keys of a permission request that name a file or directory it touches.
PERMISSION_PATH_KEYS = ("filepath", "filePath", "path", "parentDir")
# What opencode's permission reply accepts, offered to a person as options.
REPLY_OPTIONS = (
    AskOption("once", "allow_once", "Allow once"),
    AskOption("always", "allow_always", "Always allow"),
    AskOption("reject", "reject_once", "Reject"),
)
# The agent option that picks one of the model's variants (reasoning effort), as opencode acp names it.
EFFORT_OPTION = "effort"
EFFORT_CATEGORY = "thought_level"
# The agent name of this track (registry preset, permission overrides).
AGENT = "opencode"


class Quiet(Enum):
    """The session said nothing until its next check (see _TurnRun._receive)."""

    QUIET = "quiet"


QUIET = Quiet.QUIET
_BASE62 = string.digits + string.ascii_letters
_message_counter = itertools.count()


class OpencodeServerBackend:
    """The Backend of the ``opencode_server`` transport; needs a running :class:`OpencodePool`."""

    execution_path = "opencode_server"
    needs_worktree = True

    def __init__(
        self, pool: OpencodePool, policy: PermissionPolicy | None = None, settings: OpencodePoolSettings | None = None
    ) -> None:
        self.pool = pool
        self.policy = policy or PermissionPolicy()
        # The turn limits (watchdog, retry_cap) come from here; default: the pool's settings.
        self.settings = settings or pool.settings
        # What each server (by key) offers: its model variants and opencode agents.
        self._offers: dict[str, AgentAdvertised] = {}

    async def run_turn(self, turn: Turn, emit: Emit) -> TurnOutcome:
        if turn.workdir is None:
            return TurnOutcome.failed("bad_input", "the opencode_server track runs in the session worktree; none given")
        try:
            model = opencode_model(self.pool.opencode, turn.model).split("/", 1)[1]
        except BadModelError as exc:
            return TurnOutcome.failed("bad_input", str(exc))
        directory = str(await anyio.to_thread.run_sync(turn.workdir.resolve))
        # The worktree is <root>/<project_id>/<session_id>: the project's servers may write its parent.
        place = ProjectPlace(turn.project_id, Path(directory).parent, turn.git_dir)
        previous = turn.agent_session
        try:
            async with self.pool.lease(
                place, turn.session_id, directory, previous.server_key if previous else None
            ) as server:
                run = _TurnRun(self, turn, emit, server, directory, model)
                return await run.run()
        except SandboxUnavailable as exc:
            return TurnOutcome.failed("agent_unavailable", str(exc))
        except OpencodeServerError as exc:
            return TurnOutcome.failed("agent_unavailable", str(exc), transient=True)

    async def offers(self, server: OpencodeServer, directory: str, modes: Sequence[Mode]) -> AgentAdvertised:
        """What ``server`` offers (asked once per server): models, opencode agents, the effort option."""
        found = self._offers.get(server.key)
        if found is None:
            providers = await server.request("GET", "/config/providers", directory=directory)
            found = offers(self.pool.opencode.provider_id, providers, modes)
            self._offers[server.key] = found
        return found

    def config_hash(self, model: str, agent: str, directory: str, version: str, policy: PermissionPolicy) -> str:
        """What must not change for an opencode session to be reused."""
        facts = {
            "model": self.pool.opencode.model_ref(model),
            "agent": agent,
            "policy": asdict(policy),
            "directory": directory,
            "version": version,
        }
        return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


class _TurnRun:
    """One turn against one server: session, stream, translation, watchdog, abort."""

    def __init__(
        self, backend: OpencodeServerBackend, turn: Turn, emit: Emit, server: OpencodeServer, directory: str, model: str
    ) -> None:
        self.backend = backend
        self.settings = backend.settings
        self.turn = turn
        self.emit = emit
        self.server = server
        self.directory = directory
        self.model = model
        self.agent = turn.mode_id or DEFAULT_AGENT
        self.policy = backend.policy.effective(turn.agent or AGENT, turn.project_name)
        self.variant: str | None = None
        self.session_id = ""
        self.agent_session: AgentSession | None = None
        self.translator: TurnTranslator | None = None
        self.prompted = False
        self.finished = False
        self.last_event = self.last_check = time.monotonic()
        self.stream_error = ""
        # Tool call id -> its input, so a permission request knows where its command runs.
        self.tool_inputs: dict[str, Any] = {}

    # ------------------------------------------------------------------------------ the turn

    async def run(self) -> TurnOutcome:
        config_hash = self.backend.config_hash(self.model, self.agent, self.directory, self.server.version, self.policy)
        try:
            modes = await self._modes()
            if self.turn.mode_id:
                check_mode(self.policy.denied_modes, self.turn.mode_id, modes, "opencode")
            offered = await self.backend.offers(self.server, self.directory, modes)
            await self.emit(offered)
            self.variant = effort_variant(offered, self.turn.agent_options)
        except (BadModelError, BadAgentOptionError) as exc:
            return TurnOutcome.failed("bad_input", str(exc))
        except (httpx.HTTPError, OpencodeServerError) as exc:
            return await self._lost(f"could not list what opencode offers: {exc}")
        try:
            fresh = await self._open_session(config_hash)
        except BadAgentOptionError as exc:
            return TurnOutcome.failed("bad_input", str(exc))
        except (httpx.HTTPError, OpencodeServerError) as exc:
            return await self._lost(f"could not open an opencode session: {exc}")
        self.agent_session = AgentSession(self.session_id, config_hash, self.server.slot)
        self.translator = TurnTranslator(self.session_id, new_message_id())
        try:
            outcome = await self._follow(self._prompt_body(fresh))
            self.finished = True
            return outcome
        finally:
            if self.prompted and not self.finished:
                # Cancelled (or crashed out): stop opencode working on a turn nobody waits for.
                await self._abort()

    async def _modes(self) -> tuple[Mode, ...]:
        """The opencode agents a task may select (primary ones, not hidden), cached per server."""
        if self.server.modes is None:
            agents = await self.server.request("GET", "/agent", directory=self.directory)
            self.server.modes = tuple(
                Mode(str(a["name"]), str(a.get("description") or ""))
                for a in agents if isinstance(a, Mapping) and a.get("name")
                and a.get("mode") in PRIMARY_AGENT_MODES and not a.get("hidden")
            )  # fmt: skip
        return self.server.modes

    async def _open_session(self, config_hash: str) -> bool:
        """Reuse the Switchyard session's opencode session if still valid; True if a new one was made."""
        previous = self.turn.agent_session
        if previous and previous.config_hash == config_hash and previous.server_key == self.server.slot:
            try:
                await self.server.request("GET", f"/session/{previous.upstream_session_id}", directory=self.directory)
            except OpencodeServerError:
                pass  # deleted or never known to this server: make a new one
            else:
                self.session_id = previous.upstream_session_id
                return False
        # A title of our own spares the model a title-generation request.
        body = {"title": f"Switchyard session {self.turn.session_id}"}
        created = await self.server.request("POST", "/session", directory=self.directory, json_body=body)
        self.session_id = str(created["id"])
        log.info(
            "opencode_server.session",
            task_id=self.turn.task_id,
            session=self.session_id,
            server=self.server.key,
        )
        return True

    def _prompt_body(self, fresh_session: bool) -> dict[str, Any]:
        assert self.translator is not None
        body: dict[str, Any] = {
            "messageID": self.translator.user_message_id,
            "parts": [{"type": "text", "text": self.turn.input}],
            "model": {"providerID": self.backend.pool.opencode.provider_id, "modelID": self.model},
            "agent": self.agent,
        }
        if self.variant is not None:
            body["variant"] = self.variant
        if fresh_session and self.turn.history:
            body["system"] = transcript(self.turn.history)
        return body

    async def _follow(self, prompt: dict[str, Any]) -> TurnOutcome:
        """Stream until the turn ends, reopening the stream (and reconciling) when it drops."""
        problem = ""
        for delay in (0.0, *RECONNECT_DELAYS):
            await anyio.sleep(delay)
            try:
                outcome = await self._stream_once(prompt)
            except OPENCODE_ERRORS as exc:
                problem = f"the event stream failed: {exc!r}"
            else:
                if outcome is not None:
                    return outcome
                problem = self.stream_error or "the event stream ended"
            with anyio.move_on_after(EXIT_GRACE):
                await self.server.exited.wait()
            if self.server.exited.is_set():
                return await self._lost(self.server.describe_exit())
            if not self.prompted:
                return await self._lost(f"opencode did not take the prompt: {problem}")
            log.warning("opencode_server.reconnect", session=self.session_id, why=problem)
        return await self._lost(f"lost the event stream of opencode session {self.session_id}: {problem}")

    async def _stream_once(self, prompt: dict[str, Any]) -> TurnOutcome | None:
        """One connection of the event stream: the outcome, or None when the stream ended first."""
        self.stream_error = ""
        async with self.server.events(self.directory) as source:
            send, receive = anyio.create_memory_object_stream[ServerSentEvent](STREAM_BUFFER)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._pump, source, send)
                try:
                    outcome = await self._on_stream(receive, prompt)
                except OPENCODE_ERRORS as exc:
                    # Caught here: out of the task group it would come wrapped in an ExceptionGroup.
                    self.stream_error = f"opencode stopped answering: {exc!r}"
                    outcome = None
                tg.cancel_scope.cancel()
        return outcome

    async def _pump(self, source: EventSource, send: MemoryObjectSendStream[ServerSentEvent]) -> None:
        """Read the SSE stream into a queue, so the reader can wait with timeouts without breaking it."""
        async with send:
            try:
                async for sse in source.aiter_sse():
                    await send.send(sse)
            except OPENCODE_ERRORS as exc:
                self.stream_error = f"the event stream broke: {exc!r}"

    async def _on_stream(
        self, events: MemoryObjectReceiveStream[ServerSentEvent], prompt: dict[str, Any]
    ) -> TurnOutcome | None:
        """On a fresh stream: prompt (first time) or catch up (after a drop), then follow it."""
        with anyio.fail_after(CONNECT_TIMEOUT):
            async for sse in events:
                if _decode(sse).get("type") == "server.connected":
                    break
            else:
                return None
        if not self.prompted:
            path = f"/session/{self.session_id}/prompt_async"
            await self.server.request("POST", path, directory=self.directory, json_body=prompt)
            self.prompted = True
            self.last_event = self.last_check = time.monotonic()
        else:
            outcome = await self._reconcile(catch_up=True)
            if outcome is not None:
                return outcome
        return await self._consume(events)

    async def _consume(self, events: MemoryObjectReceiveStream[ServerSentEvent]) -> TurnOutcome | None:
        """Handle events until the turn ends (an outcome) or the stream does (None)."""
        assert self.translator is not None
        while True:
            received = await self._receive(events)
            if received is None:
                return None
            if received is QUIET:
                outcome = await self._quiet()
            else:
                event = _decode(received)
                if self.translator.is_own(event):
                    self.last_event = time.monotonic()
                if event.get("type") == "server.instance.disposed":
                    return None
                outcome = await self._on_event(event)
            if outcome is not None:
                return outcome

    async def _receive(self, events: MemoryObjectReceiveStream[ServerSentEvent]) -> ServerSentEvent | Quiet | None:
        """The next event; QUIET when the session stayed silent until its next check; None at the end."""
        poll = min(self.settings.watchdog, QUIET_POLL)
        check_at = min(max(self.last_event, self.last_check) + poll, self.last_event + self.settings.watchdog)
        with anyio.move_on_after(max(check_at - time.monotonic(), 0)):
            try:
                return await events.receive()
            except anyio.EndOfStream:
                return None
        return QUIET

    async def _on_event(self, event: dict[str, Any]) -> TurnOutcome | None:
        """Emit or act on what one event means; an outcome once it ends the turn."""
        assert self.translator is not None
        for item in self.translator.handle(event):
            match item:
                case Idle():
                    return await self._finish()
                case PermissionAsked():
                    await self._answer(item)
                case QuestionAsked():
                    await self._question(item)
                case EarlyError():
                    outcome = await self._refused(item.error)
                    if outcome is not None:
                        return outcome
                case Retrying() if item.attempt > self.settings.retry_cap:
                    return await self._give_up(item)
                case Retrying():
                    await self.emit(Status("retrying", f"attempt {item.attempt}: {item.message}"))
                case ToolCall() if item.input is not None:
                    self.tool_inputs[item.tool_call_id] = item.input
                    await self.emit(item)
                case _:
                    await self.emit(item)
        return None

    # ------------------------------------------------------------------------------- endings

    async def _quiet(self) -> TurnOutcome | None:
        """This session was silent: did the stream miss the end? Else trip the watchdog at its limit."""
        self.last_check = time.monotonic()
        outcome = await self._reconcile(catch_up=False)
        if outcome is not None:
            return outcome
        silence = time.monotonic() - self.last_event
        if silence < self.settings.watchdog:
            return None
        await self._abort()
        return TurnOutcome.failed(
            "inactivity_timeout",
            f"opencode session {self.session_id} showed no activity for {silence:.0f} s "
            f"(opencode_pool.watchdog = {self.settings.watchdog:g} s); aborted",
            usage=self._usage(),
            agent_session=self.agent_session,
        )

    async def _reconcile(self, *, catch_up: bool, refusal: SessionError | None = None) -> TurnOutcome | None:
        """The outcome if the session is already idle; with ``catch_up``, emit what the stream missed.

        Idle without a trace of the prompt means opencode dropped it, or refused it with ``refusal``.
        """
        translator = self.translator
        assert translator is not None
        statuses = await self.server.request("GET", "/session/status", directory=self.directory)
        busy = isinstance(statuses, Mapping) and self.session_id in statuses
        if busy and not catch_up:
            return None
        messages = await self.server.request("GET", f"/session/{self.session_id}/message", directory=self.directory)
        for item in translator.reconcile(messages if isinstance(messages, list) else []):
            await self.emit(item)
        if busy:
            return None
        if not translator.started:
            why = f"refused the prompt: {refusal.name}: {refusal.message}" if refusal else "never started the prompt"
            return TurnOutcome.failed("agent_error", f"opencode {why}", agent_session=self.agent_session)
        return await self._finish()

    async def _refused(self, error: SessionError) -> TurnOutcome | None:
        """An error before the prompt started: a refusal if the prompt left no trace, else a leftover."""
        if error.name == "MessageAbortedError":
            return None  # the abort of an earlier turn; this one has not been aborted
        return await self._reconcile(catch_up=True, refusal=error)

    async def _finish(self) -> TurnOutcome:
        translator = self.translator
        assert translator is not None
        usage = self._usage()
        if usage is not None:
            await self.emit(usage)
        error = translator.error
        if error is None:
            return TurnOutcome.completed(translator.stop_reason, usage=usage, agent_session=self.agent_session)
        if error.name == "MessageOutputLengthError":
            return TurnOutcome.completed("max_tokens", usage=usage, agent_session=self.agent_session)
        reason, transient = _error_reason(error)
        return TurnOutcome.failed(
            reason, f"{error.name}: {error.message}", transient=transient, usage=usage, agent_session=self.agent_session
        )

    async def _give_up(self, retry: Retrying) -> TurnOutcome:
        await self._abort()
        return TurnOutcome.failed(
            "model_error",
            f"the model kept failing ({retry.message}); aborted after {self.settings.retry_cap} retries "
            f"(opencode_pool.retry_cap)",
            transient=True,
            usage=self._usage(),
            agent_session=self.agent_session,
        )

    async def _lost(self, error: str) -> TurnOutcome:
        """The server went away or stopped answering: this turn fails; the next one starts afresh.

        A server that still runs (only its event stream was lost) is told to abort the prompt,
        or it would go on editing the worktree unsupervised while the retry prompts the session.
        """
        log.warning("opencode_server.lost", task_id=self.turn.task_id, error=error)
        if self.prompted and not self.server.exited.is_set():
            await self._abort()
        self.finished = True
        return TurnOutcome.failed("agent_crashed", error, transient=True, agent_session=self.agent_session)

    async def _abort(self) -> None:
        """``POST /session/{id}/abort``, shielded and bounded: every way out of a prompted turn
        that did not end at ``session.idle`` comes through here (watchdog, retry cap, lost
        stream, cancellation, shutdown)."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(ABORT_TIMEOUT):
            try:
                await self.server.request(
                    "POST", f"/session/{self.session_id}/abort", directory=self.directory, http_timeout=ABORT_TIMEOUT
                )
            except (httpx.HTTPError, OpencodeServerError) as exc:
                fields = {"session": self.session_id, "error": str(exc)}
                log.warning("opencode_server.abort_failed", **fields)
        self.finished = True

    # ----------------------------------------------------------------------------- permissions

    async def _answer(self, asked: PermissionAsked) -> None:
        request = permission_request(asked, self.tool_inputs.get(asked.tool_call_id or ""))
        if asked.permission == "question":
            # The question tool itself: it goes to a person, or is not there at all.
            on = self.policy.asks_questions and self.turn.asker is not None
            verdict = Verdict(on, "permissions.questions is ask" if on else "permissions.questions is deny")
        else:
            verdict = await anyio.to_thread.run_sync(decide, self.policy, request, Path(self.directory))
        allowed, reason = verdict.allowed, verdict.reason
        reply = "once" if allowed else "reject"
        if verdict.ask and self.turn.asker is not None:
            answer = await self.turn.asker.permission(
                ApprovalRequest(
                    permission=asked.permission,
                    tool_kind=request.kind,
                    title=request.title,
                    options=REPLY_OPTIONS,
                    tool_call_id=asked.tool_call_id,
                    command=request.command if isinstance(request.command, str) else None,
                    paths=request.paths,
                    subjects=asked.patterns,
                    always=asked.always,
                )
            )
            allowed, reason, reply = answer.allowed, answer.reason, answer.option_id or "reject"
            self._waited()
        body: dict[str, str] = {"reply": reply}
        if not allowed:
            body["message"] = f"Not allowed: {reason}"
        decision: Literal["allowed", "denied", "cancelled"] = "allowed" if allowed else "denied"
        try:
            await self.server.request(
                "POST", f"/permission/{asked.request_id}/reply", directory=self.directory, json_body=body
            )
        except OpencodeServerError as exc:
            if exc.status != HTTP_NOT_FOUND:
                raise
            # Withdrawn meanwhile: opencode rejects a turn's other open requests when one is rejected.
            decision = "denied" if not allowed else "cancelled"
            reason = f"{reason} (opencode had already withdrawn the request)"
        await self.emit(PermissionDecision(asked.tool_call_id, asked.permission, decision, reason))

    async def _question(self, asked: QuestionAsked) -> None:
        """A person answers the model's question; nobody to ask (or no answer): it is rejected."""
        answers = None
        if self.turn.asker is not None and self.policy.asks_questions:
            answer = await self.turn.asker.question(QuestionRequest(asked.questions, asked.tool_call_id))
            answers = answer.answers
            self._waited()
        path = f"/question/{asked.request_id}/" + ("reject" if answers is None else "reply")
        body = None if answers is None else {"answers": [list(a) for a in answers]}
        await self.server.request("POST", path, directory=self.directory, json_body=body)

    def _waited(self) -> None:
        """Time spent waiting for a person is no silence of the session (the watchdog)."""
        self.last_event = self.last_check = time.monotonic()

    def _usage(self) -> Usage | None:
        assert self.translator is not None
        usage = self.translator.usage
        return usage if usage.total else None


# ---------------------------------------------------------------------------- helpers


def new_message_id() -> str:
    """A message id that sorts after every earlier one, the way opencode makes them.

    opencode orders a session's messages by id: ``msg_`` + 12 hex digits of
    ``(unix ms * 4096 + counter) mod 2**48`` + 14 random base62 characters.
    """
    stamp = (time.time_ns() // 1_000_000 * 0x1000 + next(_message_counter) % 0x1000) % 2**48
    return "msg_" + stamp.to_bytes(6, "big").hex() + "".join(secrets.choice(_BASE62) for _ in range(14))


def permission_request(asked: PermissionAsked, tool_input: Any = None) -> PermissionRequest:
    """An opencode ``permission.asked`` as the policy's transport-neutral request.

    ``tool_input`` is the asking tool call's input, if the stream showed it: a bash command's
    ``workdir`` says where it runs.
    """
    metadata = asked.metadata
    paths = tuple(str(metadata[k]) for k in PERMISSION_PATH_KEYS if isinstance(metadata.get(k), str))
    command = metadata.get("command")
    workdir = tool_input.get("workdir") if isinstance(tool_input, Mapping) else None
    if asked.permission == "external_directory":
        # Its patterns are the directories outside the worktree it wants; the policy refuses them.
        paths += tuple(p.removesuffix("/*").removesuffix("*") for p in asked.patterns)
        kind = "other"
    else:
        kind = PERMISSION_KINDS.get(asked.permission, "other")
    return PermissionRequest(
        kind=kind,
        title=asked.permission,
        paths=paths,
        command=command if isinstance(command, str) else None,
        cwd=workdir if isinstance(workdir, str) else None,
    )


def offers(provider_id: str, providers: Any, modes: Sequence[Mode]) -> AgentAdvertised:
    """What a server offers, from ``GET /config/providers`` and its opencode agents (modes)."""
    models: list[str] = []
    efforts: dict[str, None] = {}
    for provider in providers.get("providers", []) if isinstance(providers, Mapping) else []:
        if not isinstance(provider, Mapping) or provider.get("id") != provider_id:
            continue
        for name, info in (provider.get("models") or {}).items():
            models.append(f"{provider_id}/{name}")
            variants = info.get("variants") if isinstance(info, Mapping) else None
            efforts.update(dict.fromkeys(variants or {}))
    offered_modes = tuple({"id": m.id, "name": m.id, **({"description": m.name} if m.name else {})} for m in modes)
    options: tuple[Mapping[str, Any], ...] = ()
    if efforts:
        effort = {
            "id": EFFORT_OPTION,
            "name": "Effort",
            "category": EFFORT_CATEGORY,
            "type": "select",
            "options": [{"value": v, "name": v.title()} for v in efforts],
        }
        options = (effort,)
    return AgentAdvertised(tuple(models), offered_modes, options)


def effort_variant(offered: AgentAdvertised, agent_options: Mapping[str, str | bool]) -> str | None:
    """The prompt's ``variant`` for the task's agent options; BadAgentOptionError for any other option."""
    variant: str | None = None
    for key, value in agent_options.items():
        if key not in (EFFORT_OPTION, EFFORT_CATEGORY):
            raise BadAgentOptionError(f"opencode has no option {key!r} (it offers: {EFFORT_OPTION})")
        values = [v["value"] for o in offered.config_options for v in o["options"]]
        if value not in values:
            raise BadAgentOptionError(
                f"opencode option {EFFORT_OPTION!r} must be one of {', '.join(values) or 'nothing'}, not {value!r}"
            )
        variant = str(value)
    return variant


def _decode(sse: ServerSentEvent) -> dict[str, Any]:
    try:
        event = json.loads(sse.data)
    except ValueError:
        return {}
    return event if isinstance(event, dict) else {}


def _error_reason(error: SessionError) -> tuple[str, bool]:
    """(failure reason, transient) for an opencode session error."""
    if error.name == "APIError":
        code = error.status_code
        return "model_error", error.retryable or code is None or code == 429 or code >= 500
    if error.name == "ProviderAuthError":
        return "model_auth", False
    if error.name == "ContextOverflowError":
        return CONTEXT_OVERFLOW, False
    if error.name == "MessageAbortedError":
        return "aborted", False
    return "agent_error", False
