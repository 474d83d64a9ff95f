"""The ws_gateway package's leaves of the exception tree; their branch is kernel.errors.GatewayError.

GatewayError
├── PortUnavailable    the gateway cannot listen on its host and port (in use, not permitted)
├── UnknownProject     a token was asked for a project that does not exist
├── MalformedFrame     a client frame that is not a JSON object: the connection is closed (1007)
└── ActionRejected     a request refused with a code the client can act on: an ``error`` frame
    └── InvalidFrame   unknown type or bad fields (code ``invalid_frame``)
"""

from __future__ import annotations

from kernel import GatewayError

__all__ = ["ActionRejected", "GatewayError", "InvalidFrame", "MalformedFrame", "PortUnavailable", "UnknownProject"]


class PortUnavailable(GatewayError):
    pass


class UnknownProject(GatewayError):
    pass


class ActionRejected(GatewayError):
    """Sent to the client as an ``error`` frame with ``code`` and this message; the connection stays."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


class MalformedFrame(GatewayError):
    pass


class InvalidFrame(ActionRejected):
    def __init__(self, message: str, request_id: str | int | None = None) -> None:
        super().__init__("invalid_frame", message)
        self.request_id = request_id
