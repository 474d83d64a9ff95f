"""Sign-in by a first ``auth`` frame, for clients that cannot set a header (browsers).

A connection that brings no token (no ``Authorization: Bearer``, no ``?token=``) has
``gateway.auth_timeout`` seconds to send ``{"type": "auth", "token": ...}``. A malformed frame
gets an ``invalid_frame`` error and the wait goes on; any other frame, a binary message or the
deadline ends it: the gateway then closes with 4401, as for a wrong token. The token travels
only inside the frame, so it is in no URL and no log line.
"""

from __future__ import annotations

import contextlib

import anyio
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from ws_gateway.errors import InvalidFrame, MalformedFrame
from ws_gateway.frames import ServerFrame
from ws_gateway.protocol import Auth, encode_frame, parse_client_frame

# Malformed frames answered before giving up on a connection that never signs in properly.
MAX_ATTEMPTS = 10


async def first_frame_token(ws: ServerConnection, wait_s: float) -> str | None:
    """The token of the connection's first valid frame if it is ``auth``, else None."""
    with anyio.move_on_after(wait_s), contextlib.suppress(ConnectionClosed):
        for _ in range(MAX_ATTEMPTS):
            message = await ws.recv()
            if isinstance(message, bytes):
                return None
            try:
                frame = parse_client_frame(message)
            except MalformedFrame:
                return None
            except InvalidFrame as exc:
                error = {"type": ServerFrame.ERROR.value, "id": exc.request_id, "code": exc.code}
                await ws.send(encode_frame({**error, "message": exc.message}), text=True)
                continue
            return frame.token if isinstance(frame, Auth) else None
    return None
