"""The fake ACP agent speaks valid ACP: driven here through the real `acp` SDK client and raw pipes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from acp import PROTOCOL_VERSION, Client, spawn_agent_process, text_block
from acp.schema import (
    AgentMessageChunk,
    AgentPlanUpdate,
    AgentThoughtChunk,
    AllowedOutcome,
    AvailableCommandsUpdate,
    ClientCapabilities,
    DeniedOutcome,
    FileSystemCapabilities,
    PermissionOption,
    ReadTextFileResponse,
    RequestPermissionResponse,
    TextContentBlock,
    ToolCallProgress,
    ToolCallStart,
    ToolCallUpdate,
    WriteTextFileResponse,
)

from testkit import FAKE_ACP_AGENT, fake_acp_agent_command

LIMIT = 50 * 1024 * 1024


class RecordingClient:
    """A client that records updates, answers fs requests from memory and permissions by policy.

    It implements only what the fake agent uses, hence the ``cast`` to the SDK's ``Client`` protocol.
    """

    def __init__(self, permission_kind: str = "allow_once") -> None:
        self.updates: list[Any] = []
        self.files: dict[str, str] = {"in.txt": "stored text"}
        self.permission_kind = permission_kind
        self.permission_asked = anyio.Event()
        self.release_permission = anyio.Event()
        self.hold_permission = False

    async def request_permission(
        self, session_id: str, tool_call: ToolCallUpdate, options: list[PermissionOption], **kwargs: Any
    ) -> RequestPermissionResponse:
        self.permission_asked.set()
        if self.hold_permission:
            await self.release_permission.wait()
            return RequestPermissionResponse(outcome=DeniedOutcome(outcome="cancelled"))
        [option] = [o for o in options if o.kind == self.permission_kind]
        return RequestPermissionResponse(outcome=AllowedOutcome(outcome="selected", option_id=option.option_id))

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        self.updates.append(update)

    async def write_text_file(self, session_id: str, path: str, content: str, **kwargs: Any) -> WriteTextFileResponse:
        if path.startswith(("/", "..")):
            raise ValueError("outside")
        self.files[path] = content
        return WriteTextFileResponse()

    async def read_text_file(self, session_id: str, path: str, **kwargs: Any) -> ReadTextFileResponse:
        return ReadTextFileResponse(content=self.files[path])

    def text(self) -> str:
        return "".join(
            u.content.text
            for u in self.updates
            if isinstance(u, AgentMessageChunk) and isinstance(u.content, TextContentBlock)
        )


FS = ClientCapabilities(fs=FileSystemCapabilities(read_text_file=True, write_text_file=True))


@pytest.mark.anyio
async def test_scripted_turn_through_the_sdk(tmp_path: Path) -> None:
    client = RecordingClient()
    command, *args = fake_acp_agent_command()
    async with spawn_agent_process(
        cast(Client, client), command, *args, cwd=tmp_path, transport_kwargs={"limit": LIMIT}
    ) as (
        conn,
        _process,
    ):
        init = await conn.initialize(protocol_version=PROTOCOL_VERSION, client_capabilities=FS)
        assert init.protocol_version == PROTOCOL_VERSION
        session = await conn.new_session(cwd=str(tmp_path), mcp_servers=[])
        prompt = "THOUGHT CHUNKS TOOL COMMANDS PLAN PERMISSION WRITE out.txt hello WRITE ../x no READ in.txt CWD"
        response = await conn.prompt(session_id=session.session_id, prompt=[text_block(prompt)])

    assert response.stop_reason == "end_turn"
    assert response.usage is not None
    assert response.usage.total_tokens == 120
    kinds = [type(u) for u in client.updates]
    for kind in (AgentThoughtChunk, ToolCallStart, ToolCallProgress, AvailableCommandsUpdate, AgentPlanUpdate):
        assert kind in kinds
    assert client.files["out.txt"] == "hello"
    text = client.text()
    assert text.startswith("Hello from the fake agent. ")
    assert "permission=selected:opt-allow" in text
    assert "write out.txt=ok" in text
    assert "write ../x=error" in text
    assert 'read in.txt=ok "stored text"' in text
    assert f"cwd={tmp_path}" in text
    statuses = [u.status for u in client.updates if isinstance(u, ToolCallProgress)]
    assert statuses == ["in_progress", "completed", "completed"]  # TOOL, then the allowed permission


@pytest.mark.anyio
async def test_rejected_permission_and_cancel_with_a_pending_permission(tmp_path: Path) -> None:
    client = RecordingClient(permission_kind="reject_once")
    command, *args = fake_acp_agent_command()
    async with spawn_agent_process(cast(Client, client), command, *args, cwd=tmp_path) as (conn, _process):
        await conn.initialize(protocol_version=PROTOCOL_VERSION)
        session = await conn.new_session(cwd=str(tmp_path), mcp_servers=[])
        rejected = await conn.prompt(session_id=session.session_id, prompt=[text_block("PERMISSION")])
        assert rejected.stop_reason == "end_turn"
        assert "permission=selected:opt-reject" in client.text()

        client.hold_permission = True
        result: list[Any] = []

        async def run_prompt() -> None:
            prompt = "PERMISSION WAIT_CANCEL"
            result.append(await conn.prompt(session_id=session.session_id, prompt=[text_block(prompt)]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_prompt)
            await client.permission_asked.wait()
            await conn.cancel(session_id=session.session_id)
            client.release_permission.set()  # a client answers pending permissions with "cancelled"
    assert result[0].stop_reason == "cancelled"
    assert "Cancelled: permission=cancelled" in client.text()


def is_response(line: str, request_id: int) -> bool:
    try:
        message = json.loads(line)
    except ValueError:
        return False
    return "method" not in message and message.get("id") == request_id


def run_raw(cwd: Path, prompt: str) -> tuple[list[str], int, str]:
    """Drive one turn over raw pipes; return every stdout line, the exit code and stderr."""
    requests = [
        ("initialize", {"protocolVersion": 1}),
        ("session/new", {"cwd": str(cwd), "mcpServers": []}),
        ("session/prompt", {"sessionId": "fake_ses_1", "prompt": [{"type": "text", "text": prompt}]}),
    ]
    proc = subprocess.Popen(
        fake_acp_agent_command(), cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []
    for request_id, (method, params) in enumerate(requests):
        message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        proc.stdin.write(json.dumps(message).encode() + b"\n")
        proc.stdin.flush()
        while line := proc.stdout.readline().decode():  # until this request's response, or EOF
            lines.append(line.rstrip("\n"))
            if is_response(line, request_id):
                break
    proc.stdin.close()
    lines += proc.stdout.read().decode().splitlines()
    return lines, proc.wait(timeout=10), proc.stderr.read().decode()


def test_malformed_lines_between_valid_messages(tmp_path: Path) -> None:
    lines, returncode, _ = run_raw(tmp_path, "MALFORMED")
    garbage = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            garbage.append(line)
    assert len(garbage) == 2
    assert json.loads(lines[-1])["result"]["stopReason"] == "end_turn"
    assert returncode == 0


def test_crash_mid_turn_exits_3_with_stderr(tmp_path: Path) -> None:
    lines, returncode, stderr = run_raw(tmp_path, "CHUNKS CRASH")
    assert returncode == 3
    assert "simulated crash" in stderr
    assert not any('"stopReason"' in line for line in lines)
    assert any("about to crash" in line for line in lines)


def test_agent_is_a_standalone_script() -> None:
    assert FAKE_ACP_AGENT.read_text().startswith("#!/usr/bin/env python3")
