"""Settings of the WebSocket gateway (the ``[gateway]`` section of the configuration)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
# Largest client frame accepted; a bigger one closes the connection with 1009.
DEFAULT_MAX_FRAME_BYTES = 256 * 1024
# Frames waiting to be written to one client; a live frame that does not fit closes it with 1013.
DEFAULT_SEND_QUEUE_FRAMES = 1000
# ... or bytes: a client far behind on big frames is dropped before it holds much memory.
DEFAULT_SEND_QUEUE_BYTES = 16 * 1024 * 1024
MIN_SEND_QUEUE_BYTES = 64 * 1024
# The highest priority a token limited to some projects may give a task (the operator's token: any).
DEFAULT_SCOPED_MAX_PRIORITY = 0
DEFAULT_MAX_SUBSCRIPTIONS = 100
DEFAULT_REPLAY_PAGE = 500
DEFAULT_SNAPSHOT_MESSAGES = 50
# Safety net for notifications lost with a dropped LISTEN connection.
DEFAULT_POLL_INTERVAL = 5.0
DEFAULT_PING_INTERVAL = 20.0
DEFAULT_CLOSE_TIMEOUT = 5.0
DEFAULT_REQUESTS_PER_SECOND = 50.0
DEFAULT_REQUEST_BURST = 100
# How long a connection without a token in its request may take to send its ``auth`` frame.
DEFAULT_AUTH_TIMEOUT = 10.0


@dataclass(frozen=True)
class GatewaySettings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT  # 0: any free port (tests)
    # Browser origins allowed to connect, e.g. "https://ide.example.com"; "*" allows any.
    # Clients that send no Origin header (not browsers) are always allowed.
    allowed_origins: tuple[str, ...] = ()
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    send_queue_frames: int = DEFAULT_SEND_QUEUE_FRAMES
    send_queue_bytes: int = DEFAULT_SEND_QUEUE_BYTES
    # Tasks of a project-scoped token cannot jump ahead of other projects' work beyond this.
    scoped_max_priority: int = DEFAULT_SCOPED_MAX_PRIORITY
    max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS
    replay_page: int = DEFAULT_REPLAY_PAGE
    snapshot_messages: int = DEFAULT_SNAPSHOT_MESSAGES
    poll_interval: float = DEFAULT_POLL_INTERVAL
    ping_interval: float = DEFAULT_PING_INTERVAL
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT
    requests_per_second: float = DEFAULT_REQUESTS_PER_SECOND
    request_burst: int = DEFAULT_REQUEST_BURST
    # permessage-deflate costs CPU per frame per client; frames are small, so off by default.
    compression: bool = False
    auth_timeout: float = DEFAULT_AUTH_TIMEOUT
    # The npm packages the review page serves (diff2html, highlight.js); empty: the
    # repository's .tools/node_modules, where `make tools` installs them.
    vendor_dir: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"gateway.port must be 0..65535, not {self.port}")
        for name in ("max_frame_bytes", "max_subscriptions", "replay_page", "snapshot_messages", "request_burst"):
            if getattr(self, name) < 1:
                raise ValueError(f"gateway.{name} must be at least 1")
        if self.send_queue_frames < 2:
            raise ValueError("gateway.send_queue_frames must be at least 2")
        if self.send_queue_bytes < MIN_SEND_QUEUE_BYTES:
            raise ValueError(f"gateway.send_queue_bytes must be at least {MIN_SEND_QUEUE_BYTES}")
        for name in ("poll_interval", "requests_per_second", "auth_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"gateway.{name} must be positive")
