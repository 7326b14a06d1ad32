"""Caller audio onto the Live session's socket without websockets' `send` machinery, when that is safe.

`ClientConnection.send(text)` enters an async context manager per message (`send_context`: a generator-based
`asynccontextmanager`, its checks, then `send_data()` and `await drain()`): bench/send_paths.py measured
4-7 us a frame more than this module's path, the same TLS and socket write underneath both. What
it puts on the wire comes from the connection's sans-I/O protocol: `protocol.send_text(payload)` frames it
(mask, permessage-deflate if negotiated: the same extension objects, in the same order, so the compressor's
state stays one stream) and the connection's `send_data()` writes its `data_to_send()` to the transport.
`send_text` does exactly those two calls, synchronously, and nothing else.

It only does it when `send` itself would neither wait nor raise: the connection is open, no fragmented
message is being sent, the transport is not closing and not paused (backpressure: `send` would wait in
`drain()` for the peer to read; here the caller falls back to `send`, which waits). In every other case, or
when the connection is not the websockets class this was written against (another SDK or websockets
version), it writes nothing and returns False: the caller then uses the SDK's or websockets' own `send`,
which raises or waits as it always has. A test holds the bytes equal, unmasked, to what `send` writes.
"""

from __future__ import annotations

import base64
from typing import Any

try:  # private to the SDK's transport: used only while it is there
    from websockets.asyncio.connection import Connection as _Connection
    from websockets.protocol import State as _State

    _OPEN: Any = _State.OPEN
except ImportError:  # pragma: no cover - depends on the installed websockets
    _Connection = None  # type: ignore[assignment,misc]
    _OPEN = None

AUDIO_MIME = "audio/pcm;rate=16000"
_HEAD = b'{"realtime_input": {"audio": {"data": "'
_TAIL = b'", "mime_type": "' + AUDIO_MIME.encode() + b'"}}}'
_HEAD_TEXT, _TAIL_TEXT = _HEAD.decode(), _TAIL.decode()


def audio_message(pcm16k: bytes) -> str:
    """Exactly what `session.send_realtime_input(audio=Blob(data, "audio/pcm;rate=16000"))` puts on the wire
    (a test holds the two equal), built directly: the SDK's per-message pydantic conversion costs ~30 us a
    frame, half of the bridge's per-call CPU. URL-safe base64, as the SDK sends bytes."""
    return _HEAD_TEXT + base64.urlsafe_b64encode(pcm16k).decode("ascii") + _TAIL_TEXT


def audio_payload(pcm16k: bytes) -> bytes:
    """`audio_message(pcm16k)` as UTF-8, built without the str round trip."""
    return _HEAD + base64.urlsafe_b64encode(pcm16k) + _TAIL


_CONNECTION_ATTRIBUTES = ("protocol", "transport", "paused", "send_in_progress", "send_data", "set_connection_exc")
_PROTOCOL_ATTRIBUTES = ("state", "send_text", "expect_continuation_frame")
_checked: dict[type, bool] = {}  # per class: every instance of one websockets version has the same attributes


def usable(socket: Any) -> bool:
    """Whether `socket` is a websockets connection of the shape `send_text` was written against."""
    known = _checked.get(type(socket))
    if known is None:
        known = _checked[type(socket)] = (
            _Connection is not None and isinstance(socket, _Connection)
            and all(hasattr(socket, name) for name in _CONNECTION_ATTRIBUTES)
            and all(hasattr(socket.protocol, name) for name in _PROTOCOL_ATTRIBUTES)
        )
    return known


def send_text(socket: Any, payload: bytes) -> bool:
    """Write `payload` (UTF-8 text) as one text frame now, as `await socket.send(payload, text=True)` would.
    False, with nothing written, whenever `send` might wait or raise: then call `send`. `socket` must have
    passed `usable`."""
    transport = socket.transport
    protocol = socket.protocol
    if (
        protocol.state is not _OPEN or socket.paused or socket.send_in_progress is not None
        or protocol.expect_continuation_frame or transport.is_closing()
    ):
        return False
    protocol.send_text(payload)
    try:
        socket.send_data()  # the connection's own writer of data_to_send(): what send_context calls
    except Exception as exc:
        # What send_context does with a failed write: the connection is done; its reader sees it close.
        socket.set_connection_exc(exc)
        transport.abort()
        raise
    return True
