#!/usr/bin/env python3
"""A scripted ACP agent: NDJSON JSON-RPC 2.0 over stdio, standard library only.

Run it as ``python testkit/fake_acp_agent.py``. It answers ``initialize``, ``session/new``,
``session/prompt``, ``session/set_mode``, ``session/set_config_option`` and the ``session/cancel``
notification; it cannot resume sessions (``loadSession`` false). Keywords in the prompt's last text
block choose what a turn does (earlier blocks are context: a transcript); they run in the order
they appear, and a turn without keywords echoes the whole prompt:

  CHUNKS            several agent_message_chunk updates
  THOUGHT           agent_thought_chunk updates
  TOOL              tool_call, then tool_call_update in_progress and completed (with content)
  COMMANDS          available_commands_update
  PLAN              plan
  PERMISSION        session/request_permission (allow_once / reject_once); the outcome is reported
  PERMISSIONS <n>   n permission requests one after the other, reported with each one's
                    CLOCK_MONOTONIC nanoseconds when asked and when answered (benchmarks)
  WRITE <path> <c>  fs/write_text_file with the path exactly as given and content ``<c>``
  WRITE_TEXT <path> <c>  the same with ``<c>`` percent-decoded (``%0A`` for a new line, ``%20`` a space)
  READ <path>       fs/read_text_file with the path exactly as given
  WAIT_CANCEL       stay busy until session/cancel
  SLEEP <seconds>   sleep (a cancel ends it early)
  MALFORMED         write non-JSON lines to stdout between valid messages
  CRASH             write to stderr and exit with code 3 in the middle of the turn
  CWD               report the process's working directory and the session's cwd
  OPTIONS           report the session's config option values (mode, model, effort)
  RUN <cmd>         run ``<cmd>`` (percent-encoded) with /bin/sh itself, without asking: a hostile
                    agent; reports ``run <cmd>=exit <code> <output>``
  ASK_EXEC <cmd>    session/request_permission for an execute tool call running ``<cmd>`` (percent-
                    encoded); reports ``ask <cmd>=<outcome>``
  ASK_EDIT <path>   session/request_permission for an edit of ``<path>``; reports ``ask-edit <path>=<outcome>``

Every turn ends with one agent_message_chunk that starts with ``Done:`` (or ``Cancelled:``) and lists
what happened, e.g. ``Done: permission=selected:opt-allow; write ../x=error -32602 outside``, then a
usage_update and the prompt response ``{stopReason, usage}``. A cancel stops the turn at the next step;
a client request still pending then (a permission) is waited for, so the client must answer it. The
agent writes no files.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any
from urllib.parse import unquote

PROTOCOL_VERSION = 1
USAGE = {"inputTokens": 100, "outputTokens": 20, "totalTokens": 120}
# After a cancel, how long to wait for the client to answer a request that is still pending.
CANCEL_GRACE_SECONDS = 5.0
PERMISSION_OPTIONS = [
    {"optionId": "opt-allow", "kind": "allow_once", "name": "Allow once"},
    {"optionId": "opt-reject", "kind": "reject_once", "name": "Reject"},
]
MODES = [
    {"id": "default", "name": "Default", "description": "Asks before risky actions."},
    {"id": "plan", "name": "Plan", "description": "Read-only planning."},
    {"id": "bypassPermissions", "name": "Bypass Permissions", "description": "Never asks."},
]
RUN_TIMEOUT_SECONDS = 20.0
RUN_OUTPUT_CHARS = 300
MODELS = ["fake/small", "fake/large"]
EFFORTS = ["low", "medium", "high"]
COMMANDS = [
    {"name": "review", "description": "Review the pending changes", "input": {"hint": "files to review"}},
    {"name": "init", "description": "Create an AGENTS.md file"},
]


class Cancelled(Exception):
    pass


class ClientError(Exception):
    def __init__(self, error: Any) -> None:
        super().__init__(str(error))
        self.error = error


class Session:
    def __init__(self, session_id: str, cwd: str) -> None:
        self.id = session_id
        self.cwd = cwd
        self.mode = MODES[0]["id"]
        self.model = MODELS[0]
        self.effort = EFFORTS[0]
        self.cancel = threading.Event()
        self.busy = threading.Lock()

    def config_options(self) -> list[dict[str, Any]]:
        return [
            {
                "id": "mode",
                "name": "Mode",
                "category": "mode",
                "type": "select",
                "currentValue": self.mode,
                "options": [{"value": m["id"], "name": m["name"]} for m in MODES],
            },
            {
                "id": "model",
                "name": "Model",
                "category": "model",
                "type": "select",
                "currentValue": self.model,
                "options": [{"value": m, "name": m} for m in MODELS],
            },
            {
                "id": "effort",
                "name": "Effort",
                "category": "thought_level",
                "type": "select",
                "currentValue": self.effort,
                "options": [{"value": e, "name": e.title()} for e in EFFORTS],
            },
        ]


class Agent:
    def __init__(self) -> None:
        self.write_lock = threading.Lock()
        self.pending_lock = threading.Lock()
        self.pending: dict[int, tuple[threading.Event, list[dict[str, Any]]]] = {}
        self.request_ids = itertools.count()
        self.call_ids = itertools.count(1)
        self.sessions: dict[str, Session] = {}
        self.client_capabilities: dict[str, Any] = {}

    # --- transport -------------------------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        line = json.dumps({"jsonrpc": "2.0", **message}) + "\n"
        with self.write_lock:
            sys.stdout.write(line)
            sys.stdout.flush()

    def send_raw(self, text: str) -> None:
        with self.write_lock:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    def update(self, session: Session, update: dict[str, Any]) -> None:
        self.send({"method": "session/update", "params": {"sessionId": session.id, "update": update}})

    def request(self, session: Session, method: str, params: dict[str, Any]) -> Any:
        """Send a request to the client and wait for its answer (even after a cancel, for a while)."""
        request_id = next(self.request_ids)
        done = threading.Event()
        box: list[dict[str, Any]] = []
        with self.pending_lock:
            self.pending[request_id] = (done, box)
        self.send({"id": request_id, "method": method, "params": params})
        while not done.wait(0.05):
            if session.cancel.is_set() and not done.wait(CANCEL_GRACE_SECONDS):
                with self.pending_lock:
                    self.pending.pop(request_id, None)
                raise ClientError({"code": -32800, "message": "no answer after cancel"})
        if "error" in box[0]:
            raise ClientError(box[0]["error"])
        return box[0].get("result")

    def serve(self) -> None:
        for raw in sys.stdin:
            line = raw.strip()
            if not line:
                continue
            try:
                message = json.loads(line)
            except ValueError:
                self.send({"id": None, "error": {"code": -32700, "message": "parse error"}})
                continue
            if "method" in message and "id" in message:
                threading.Thread(target=self.handle_request, args=(message,), daemon=True).start()
            elif "method" in message:
                self.handle_notification(message)
            elif "id" in message:
                with self.pending_lock:
                    waiter = self.pending.pop(message["id"], None)
                if waiter is not None:
                    waiter[1].append(message)
                    waiter[0].set()

    # --- dispatch --------------------------------------------------------------------------------

    def handle_notification(self, message: dict[str, Any]) -> None:
        if message["method"] == "session/cancel":
            session = self.sessions.get(message.get("params", {}).get("sessionId", ""))
            if session is not None:
                session.cancel.set()

    def handle_request(self, message: dict[str, Any]) -> None:
        handlers = {
            "initialize": self.initialize,
            "session/new": self.new_session,
            "session/prompt": self.prompt,
            "session/set_mode": self.set_mode,
            "session/set_config_option": self.set_config_option,
        }
        handler = handlers.get(message["method"])
        if handler is None:
            error = {"code": -32601, "message": f"method not found: {message['method']}"}
            self.send({"id": message["id"], "error": error})
            return
        try:
            result = handler(message.get("params") or {})
        except ValueError as exc:
            self.send({"id": message["id"], "error": {"code": -32602, "message": str(exc)}})
            return
        self.send({"id": message["id"], "result": result})

    def session(self, params: dict[str, Any]) -> Session:
        session = self.sessions.get(params.get("sessionId", ""))
        if session is None:
            raise ValueError(f"unknown session {params.get('sessionId')!r}")
        return session

    # --- methods ---------------------------------------------------------------------------------

    def initialize(self, params: dict[str, Any]) -> dict[str, Any]:
        self.client_capabilities = params.get("clientCapabilities") or {}
        return {
            "protocolVersion": PROTOCOL_VERSION,
            "agentCapabilities": {
                "loadSession": False,
                "promptCapabilities": {"image": False, "audio": False, "embeddedContext": True},
            },
            "authMethods": [],
            "agentInfo": {"name": "fake-acp-agent", "version": "0.1.0"},
        }

    def new_session(self, params: dict[str, Any]) -> dict[str, Any]:
        cwd = params.get("cwd")
        if not isinstance(cwd, str) or not os.path.isabs(cwd):
            raise ValueError("cwd must be an absolute path")
        if not isinstance(params.get("mcpServers"), list):
            raise ValueError("mcpServers is required")
        session = Session(f"fake_ses_{len(self.sessions) + 1}", cwd)
        self.sessions[session.id] = session
        return {
            "sessionId": session.id,
            "modes": {"currentModeId": session.mode, "availableModes": MODES},
            "configOptions": session.config_options(),
        }

    def set_mode(self, params: dict[str, Any]) -> dict[str, Any]:
        session = self.session(params)
        if params.get("modeId") not in {m["id"] for m in MODES}:
            raise ValueError(f"unknown mode {params.get('modeId')!r}")
        session.mode = params["modeId"]
        self.update(session, {"sessionUpdate": "current_mode_update", "currentModeId": session.mode})
        return {}

    def set_config_option(self, params: dict[str, Any]) -> dict[str, Any]:
        session = self.session(params)
        config_id, value = params.get("configId"), params.get("value")
        if config_id == "mode" and value in {m["id"] for m in MODES}:
            session.mode = value
        elif config_id == "model" and value in MODELS:
            session.model = value
        elif config_id == "effort" and value in EFFORTS:
            session.effort = value
        else:
            raise ValueError(f"bad config option {config_id!r}={value!r}")
        return {"configOptions": session.config_options()}

    def prompt(self, params: dict[str, Any]) -> dict[str, Any]:
        session = self.session(params)
        blocks = params.get("prompt")
        if not isinstance(blocks, list):
            raise ValueError("prompt must be a list of content blocks")
        texts = [b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text"]
        if not session.busy.acquire(blocking=False):
            raise ValueError("a prompt is already running in this session")
        try:
            session.cancel.clear()
            return self.run_turn(session, " ".join(texts), texts[-1] if texts else "")
        finally:
            session.busy.release()

    # --- the scripted turn -----------------------------------------------------------------------

    def run_turn(self, session: Session, text: str, commands: str) -> dict[str, Any]:
        words = commands.split()
        notes: list[str] = []
        stop_reason = "end_turn"
        try:
            i = 0
            while i < len(words):
                # WAIT_CANCEL ends at a cancel by itself, also one that came before it started.
                if session.cancel.is_set() and words[i] != "WAIT_CANCEL":
                    raise Cancelled
                i = self.step(session, words, i, notes)
            if session.cancel.is_set():
                raise Cancelled
        except Cancelled:
            stop_reason = "cancelled"
        if stop_reason == "cancelled":
            summary = "Cancelled: " + "; ".join(notes)
        elif notes:
            summary = "Done: " + "; ".join(notes)
        else:
            summary = f"Done: echo {text}"
        self.message(session, summary)
        self.update(session, {"sessionUpdate": "usage_update", "used": USAGE["totalTokens"], "size": 32000})
        return {"stopReason": stop_reason, "usage": USAGE}

    def message(self, session: Session, text: str) -> None:
        content = {"type": "text", "text": text}
        self.update(session, {"sessionUpdate": "agent_message_chunk", "content": content})

    def step(self, session: Session, words: list[str], i: int, notes: list[str]) -> int:
        """Run the keyword at ``words[i]``; return the index of the next word to look at."""
        word = words[i]
        if word == "CHUNKS":
            for piece in ("Hello ", "from ", "the ", "fake ", "agent. "):
                self.message(session, piece)
            notes.append("chunks")
        elif word == "THOUGHT":
            for piece in ("Let me think. ", "Thinking done. "):
                self.update(
                    session, {"sessionUpdate": "agent_thought_chunk", "content": {"type": "text", "text": piece}}
                )
            notes.append("thought")
        elif word == "TOOL":
            self.tool(session)
            notes.append("tool")
        elif word == "COMMANDS":
            self.update(session, {"sessionUpdate": "available_commands_update", "availableCommands": COMMANDS})
            notes.append("commands")
        elif word == "PLAN":
            entries = [
                {"content": "Read the code", "priority": "high", "status": "completed"},
                {"content": "Change the code", "priority": "medium", "status": "in_progress"},
                {"content": "Run the tests", "priority": "low", "status": "pending"},
            ]
            self.update(session, {"sessionUpdate": "plan", "entries": entries})
            notes.append("plan")
        elif word == "PERMISSION":
            notes.append("permission=" + self.permission(session))
        elif word == "PERMISSIONS" and i + 1 < len(words):
            timings = []
            for _ in range(int(words[i + 1])):
                asked = time.monotonic_ns()
                outcome = self.permission(session)
                timings.append([asked, time.monotonic_ns(), outcome])
            notes.append("timings=" + json.dumps(timings))
            return i + 2
        elif word == "WRITE" and i + 2 < len(words):
            path, content = words[i + 1], words[i + 2]
            notes.append(f"write {path}=" + self.fs(session, "fs/write_text_file", {"path": path, "content": content}))
            return i + 3
        elif word == "READ" and i + 1 < len(words):
            path = words[i + 1]
            notes.append(f"read {path}=" + self.fs(session, "fs/read_text_file", {"path": path}))
            return i + 2
        elif word == "WAIT_CANCEL":
            notes.append("waiting")
            session.cancel.wait()
            raise Cancelled
        elif word == "SLEEP" and i + 1 < len(words):
            seconds = float(words[i + 1])
            notes.append(f"slept {words[i + 1]}")
            if session.cancel.wait(seconds):
                raise Cancelled
            return i + 2
        elif word == "MALFORMED":
            self.send_raw("this is not json")
            self.message(session, "between garbage ")
            self.send_raw('{"jsonrpc": "2.0", truncated')
            notes.append("malformed")
        elif word == "CRASH":
            self.message(session, "about to crash ")
            sys.stderr.write("fake agent: simulated crash\n")
            sys.stderr.flush()
            os._exit(3)
        elif word == "OPTIONS":
            notes.append(f"options=mode:{session.mode},model:{session.model},effort:{session.effort}")
        elif word == "CWD":
            notes.append(f"cwd={os.getcwd()} session_cwd={session.cwd}")
        elif word == "RUN" and i + 1 < len(words):
            notes.append(f"run {words[i + 1]}=" + self.run(session, unquote(words[i + 1])))
            return i + 2
        elif word == "ASK_EXEC" and i + 1 < len(words):
            command = unquote(words[i + 1])
            notes.append(f"ask {words[i + 1]}=" + self.permission(session, "execute", command, {"command": command}))
            return i + 2
        elif word == "ASK_EDIT" and i + 1 < len(words):
            path = words[i + 1]
            tool = {"path": path, "kind": "edit"}
            notes.append(f"ask-edit {path}=" + self.permission(session, "edit", f"Edit {path}", tool))
            return i + 2
        elif word == "WRITE_TEXT" and i + 2 < len(words):
            path, content = words[i + 1], unquote(words[i + 2])
            notes.append(f"write {path}=" + self.fs(session, "fs/write_text_file", {"path": path, "content": content}))
            return i + 3
        return i + 1

    def run(self, session: Session, command: str) -> str:
        try:
            done = subprocess.run(
                ["/bin/sh", "-c", command],
                cwd=session.cwd,
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT_SECONDS,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"error {exc}"
        output = " ".join((done.stdout + done.stderr).split())[:RUN_OUTPUT_CHARS]
        return f"exit {done.returncode} {output}".rstrip()

    def tool(self, session: Session) -> None:
        call_id = f"call_{next(self.call_ids)}"
        raw_input = {"command": "echo fake-tool"}
        self.update(
            session,
            {
                "sessionUpdate": "tool_call",
                "toolCallId": call_id,
                "title": "Run echo",
                "kind": "execute",
                "status": "pending",
                "rawInput": raw_input,
                "locations": [{"path": session.cwd}],
            },
        )
        self.update(session, {"sessionUpdate": "tool_call_update", "toolCallId": call_id, "status": "in_progress"})
        output = [{"type": "content", "content": {"type": "text", "text": "fake-tool\n"}}]
        self.update(
            session,
            {
                "sessionUpdate": "tool_call_update",
                "toolCallId": call_id,
                "status": "completed",
                "content": output,
                "rawOutput": {"output": "fake-tool\n", "exit": 0},
            },
        )

    def permission(
        self,
        session: Session,
        kind: str = "execute",
        title: str = "rm -rf build",
        raw_input: dict[str, Any] | None = None,
    ) -> str:
        call_id = f"call_{next(self.call_ids)}"
        tool_call: dict[str, Any] = {
            "toolCallId": call_id,
            "title": title,
            "kind": kind,
            "status": "pending",
            "rawInput": {"command": "rm -rf build"} if raw_input is None else raw_input,
        }
        if kind == "edit" and raw_input is not None:
            tool_call["locations"] = [{"path": raw_input["path"]}]
        self.update(session, {"sessionUpdate": "tool_call", **tool_call})
        params = {"sessionId": session.id, "toolCall": tool_call, "options": PERMISSION_OPTIONS}
        try:
            result = self.request(session, "session/request_permission", params)
        except ClientError as exc:
            outcome = f"error {exc.error.get('code')}" if isinstance(exc.error, dict) else "error"
            status = "failed"
        else:
            chosen = (result or {}).get("outcome") or {}
            if chosen.get("outcome") == "selected":
                outcome = f"selected:{chosen.get('optionId')}"
                status = "completed" if chosen.get("optionId") == "opt-allow" else "failed"
            else:
                outcome = str(chosen.get("outcome"))
                status = "failed"
        self.update(session, {"sessionUpdate": "tool_call_update", "toolCallId": call_id, "status": status})
        return outcome

    def fs(self, session: Session, method: str, params: dict[str, Any]) -> str:
        capability = "writeTextFile" if method == "fs/write_text_file" else "readTextFile"
        if not (self.client_capabilities.get("fs") or {}).get(capability):
            return "unsupported"
        try:
            result = self.request(session, method, {"sessionId": session.id, **params})
        except ClientError as exc:
            error = exc.error if isinstance(exc.error, dict) else {}
            return f"error {error.get('code')} {error.get('message', '')}".rstrip()
        if method == "fs/read_text_file":
            return "ok " + json.dumps((result or {}).get("content"))
        return "ok"


def main() -> None:
    # Returns when stdin closes: the client is gone, and in-flight turns end with the process.
    Agent().serve()


if __name__ == "__main__":
    main()
