"""Caller audio and tool answers onto the Live session's socket without the SDK's conversion or websockets'
`send` machinery, when that is safe.

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

The messages themselves (`audio_payload`, `tool_response_message`) are built here too, byte for byte what the
SDK's own methods send (tests hold each equal to the SDK's at the far end of a socket), for the inputs they
cover; for any other input they return None and the SDK's method is the one to call.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from typing import Any

from phonebridge.call.tool_types import ToolResult

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


# Containers nested deeper than this inside a response take the SDK's path: its converters recurse in Python
# (at ~990 levels they raise RecursionError), and so does the check here.
MAX_DIRECT_DEPTH = 64


def function_responses(results: Sequence[ToolResult]) -> list[dict[str, Any]] | None:
    """The `functionResponses` the SDK makes of `FunctionResponse(id=, name=, response=)` per result, as plain
    dicts: `model_dump(exclude_none=True)` gives id, name, response in the model's field order, and the
    response as it is (exclude_none does not reach into a dict field). The same list is what the recorder
    sees, as `model_dump(mode="json")` gives it for these values.

    None for what it does not rebuild exactly (the SDK's path then sends it, or refuses it, as it always has):
    an id or name that is not a str (the Developer API's SDK refuses a missing id), or a response that is not
    plain JSON: only dict with str keys, list, str, int, bool, None and finite floats, of the exact types
    (to_response makes these). Bytes and datetimes the SDK encodes, tuples and non-str keys it converts or
    refuses, NaN becomes null in the recorder's JSON-mode dump: all of those go the SDK's way."""
    items = []
    for result in results:
        if type(result.id) is not str or type(result.name) is not str or type(result.response) is not dict:
            return None
        if not _plain(result.response, 0):
            return None
        items.append({"id": result.id, "name": result.name, "response": result.response})
    return items


def tool_response_message(results: Sequence[ToolResult]) -> bytes | None:
    """Exactly what `session.send_tool_response(function_responses=[FunctionResponse(id=, name=, response=)
    ...])` puts on the wire, as UTF-8: the SDK's `json.dumps` (its defaults: ASCII-escaped, ", " and ": "),
    `tool_response` in snake case around the camel-cased `functionResponses`. None where `function_responses`
    is None, or json.dumps would raise (an int past str()'s digit limit: the SDK's path raises it)."""
    items = function_responses(results)
    return None if items is None else tool_response_payload(items)


def tool_response_payload(items: list[dict[str, Any]]) -> bytes | None:
    """The message of `function_responses(results)`; None where json.dumps raises."""
    try:
        return json.dumps({"tool_response": {"functionResponses": items}}).encode()
    except ValueError:
        return None


def _plain(value: Any, depth: int) -> bool:
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is float:
        return math.isfinite(value)
    if depth > MAX_DIRECT_DEPTH:
        return False
    if kind is dict:
        return all(type(key) is str and _plain(item, depth + 1) for key, item in value.items())
    if kind is list:
        return all(_plain(item, depth + 1) for item in value)
    return False


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
    if not writable(socket):
        return False
    write_text(socket, payload)
    return True


def writable(socket: Any) -> bool:
    """Whether `send` would write a text frame at once, neither waiting nor raising (`socket` passed `usable`)."""
    protocol = socket.protocol
    return not (
        protocol.state is not _OPEN or socket.paused or socket.send_in_progress is not None
        or protocol.expect_continuation_frame or socket.transport.is_closing()
    )


def write_text(socket: Any, payload: bytes) -> None:
    """`send_text`'s write, unchecked: only in the loop turn `writable(socket)` said True."""
    socket.protocol.send_text(payload)
    try:
        socket.send_data()  # the connection's own writer of data_to_send(): what send_context calls
    except Exception as exc:
        # What send_context does with a failed write: the connection is done; its reader sees it close.
        socket.set_connection_exc(exc)
        socket.transport.abort()
        raise
