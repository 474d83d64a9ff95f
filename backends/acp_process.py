"""One ACP agent process and its connection, whoever started it (a turn, or the spares).

:class:`AgentProcess` owns the process, its tree, the SDK's connection over :class:`NdjsonStdio`
and the tail of its stderr. The SDK binds its client when the connection is made, which for a
pre-started agent (backends.acp_spares) is before any turn exists: the connection's client is a
:class:`Relay` that hands every request to the turn holding the process, and refuses them while
none does. :meth:`AgentProcess.serve` runs what watches the process (its tree, stderr, its exit)
in the task that owns it; the turn that uses it ends it with :meth:`AgentProcess.shut_down`.
"""

from __future__ import annotations

import json
from contextlib import suppress
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.to_thread
from acp import PROTOCOL_VERSION, Client, RequestError, connect_to_agent
from acp.schema import (
    ClientCapabilities,
    DeniedOutcome,
    FileSystemCapabilities,
    Implementation,
    InitializeResponse,
    PermissionOption,
    ReadTextFileResponse,
    RequestPermissionResponse,
    ToolCallUpdate,
    WriteTextFileResponse,
)
from anyio.abc import ByteReceiveStream, ByteSendStream, Process
from anyio.streams.buffered import BufferedByteReceiveStream

from backends.launch import Launch
from backends.processes import TERMINATE
from kernel import get_logger

log = get_logger("backends.acp")

CLIENT_INFO = Implementation(name="switchyard", title="Switchyard", version="0.1.0")
# Longest line accepted from the agent: ACP lines can be megabytes (file contents).
STDIO_LIMIT = 50 * 1024 * 1024
# After stdin is closed, how long the agent gets to exit by itself before it is signalled.
EXIT_GRACE = 2.0
# After the agent exited, how long a prompt still waits for the end of its stdout.
EOF_GRACE = 1.0
STDERR_TAIL_BYTES = 4096
NO_TURN = "no turn holds this agent"


class Relay:
    """The client side the SDK is bound to: each request goes to ``target``, the turn's client."""

    def __init__(self) -> None:
        self.target: Client | None = None

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        if self.target is not None:
            await self.target.session_update(session_id=session_id, update=update, **kwargs)

    async def request_permission(
        self, options: list[PermissionOption], session_id: str, tool_call: ToolCallUpdate, **kwargs: Any
    ) -> RequestPermissionResponse:
        if self.target is None:
            return RequestPermissionResponse(outcome=DeniedOutcome(outcome="cancelled"))
        return await self.target.request_permission(
            options=options, session_id=session_id, tool_call=tool_call, **kwargs
        )

    async def write_text_file(
        self, content: str, path: str, session_id: str, **kwargs: Any
    ) -> WriteTextFileResponse | None:
        if self.target is None:
            raise RequestError(-32602, NO_TURN, {"path": path})
        return await self.target.write_text_file(content=content, path=path, session_id=session_id, **kwargs)

    async def read_text_file(
        self, path: str, session_id: str, limit: int | None = None, line: int | None = None, **kwargs: Any
    ) -> ReadTextFileResponse:
        if self.target is None:
            raise RequestError(-32602, NO_TURN, {"path": path})
        return await self.target.read_text_file(path=path, session_id=session_id, limit=limit, line=line, **kwargs)


class AgentProcess:
    """A started ACP agent: the process, its tree, the connection and what it said on stderr."""

    def __init__(self, launch: Launch, process: Process, name: str) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.launch = launch
        self.process = process
        self.name = name
        self.tree = launch.tree(process.pid)
        self.relay = Relay()
        # The Relay implements what the advertised capabilities need; the SDK refuses the rest.
        self.conn = connect_to_agent(cast(Client, self.relay), NdjsonStdio(process.stdout, process.stdin, name))
        self.stderr_tail = bytearray()
        self.stderr_done = anyio.Event()
        self.init: InitializeResponse | None = None

    @classmethod
    async def start(cls, launch: Launch, cwd: Path, name: str) -> AgentProcess:
        """Start ``launch`` in ``cwd`` in its own session (so its tree can be killed); OSError or
        ValueError when it cannot be started."""
        process = await anyio.open_process(list(launch.argv), cwd=cwd, env=launch.env, start_new_session=True)
        return cls(launch, process, name)

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def running(self) -> bool:
        """Alive by the kernel's word too: a process that just died is a zombie before the event
        loop learns of its exit."""
        return self.alive and await anyio.to_thread.run_sync(_running, self.process.pid)

    async def serve(self) -> None:
        """Watch the process until cancelled: its tree, its stderr, and its exit."""
        assert self.process.stderr is not None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.tree.watch)
            tg.start_soon(self._read_stderr, self.process.stderr)
            tg.start_soon(self._close_on_exit)

    async def initialize(self) -> InitializeResponse:
        """``initialize`` (once): fs reads and writes, no terminals."""
        if self.init is None:
            self.init = await self.conn.initialize(
                protocol_version=PROTOCOL_VERSION,
                client_capabilities=ClientCapabilities(
                    fs=FileSystemCapabilities(read_text_file=True, write_text_file=True), terminal=False
                ),
                client_info=CLIENT_INFO,
            )
        return self.init

    async def exited(self) -> tuple[str, str]:
        """After the connection was lost: how the process ended, and the tail of its stderr."""
        with anyio.move_on_after(EXIT_GRACE):
            await self.process.wait()
            await self.stderr_done.wait()
        code = self.process.returncode
        status = "is still running" if code is None else f"exited with code {code}"
        return status, self.stderr_tail.decode(errors="replace").strip() or "(nothing on stderr)"

    async def shut_down(self) -> None:
        """Close the connection (and with it stdin), give the agent a moment to exit, then end its
        tree. Call it shielded."""
        with suppress(Exception), anyio.move_on_after(EXIT_GRACE):
            await self.conn.close()
        with anyio.move_on_after(EXIT_GRACE):
            await self.process.wait()
        await self.tree.terminate(TERMINATE)
        with anyio.move_on_after(EXIT_GRACE):
            await self.process.aclose()

    async def _read_stderr(self, stderr: ByteReceiveStream) -> None:
        try:
            async for chunk in stderr:
                self.stderr_tail += chunk
                del self.stderr_tail[:-STDERR_TAIL_BYTES]
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            self.stderr_done.set()

    async def _close_on_exit(self) -> None:
        """An agent that exits while a grandchild keeps its stdout open still ends the turn."""
        await self.process.wait()
        await anyio.sleep(EOF_GRACE)
        with suppress(Exception), anyio.move_on_after(EXIT_GRACE):
            await self.conn.close()


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    # The state follows the parenthesized command name: Z (zombie) or X (dead) have ended.
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] not in (b"Z", b"X")


class NdjsonStdio:
    """The SDK's message transport over the agent's stdio: one JSON object per line.

    Used instead of the SDK's own stdio framing so that a line that is not a JSON object (agents
    sometimes print logs to stdout) is skipped with one warning per turn that shows no content,
    rather than a logged traceback with the line in it.
    """

    def __init__(self, stdout: ByteReceiveStream, stdin: ByteSendStream, agent: str) -> None:
        self.reader = BufferedByteReceiveStream(stdout)
        self.writer = stdin
        self.agent = agent
        self.skipped = 0
        self._send_lock = anyio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        async with self._send_lock:
            await self.writer.send(data)

    async def receive(self) -> dict[str, Any] | None:
        """The next message; None at the end of stdout."""
        while True:
            try:
                line = await self.reader.receive_until(b"\n", STDIO_LIMIT)
            except (anyio.IncompleteRead, anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                return None
            if not line.strip():
                continue
            try:
                message = json.loads(line)
            except ValueError:
                message = None
            if isinstance(message, dict):
                return message
            self.skipped += 1
            if self.skipped == 1:
                fields = {"agent": self.agent, "bytes": len(line)}
                log.warning("acp.non_json_stdout_line", **fields)

    async def close(self) -> None:
        with suppress(Exception):
            await self.writer.aclose()
