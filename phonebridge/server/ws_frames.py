"""Several server->client text frames of an aiohttp WebSocket in one `transport.write`, when that is safe.

`await ws.send_str(text)` is one `send_frame` coroutine and one `transport.write` (one `send` syscall) a frame;
the bridge sends each 40 ms of model audio as two `media` frames and, about every 100 ms, a `mark`: at 100
calls those writes were ~5% of the server's CPU. Here the frames one drain of the call core produced are built
exactly as aiohttp's `WebSocketWriter._write_websocket_frame` builds a server's uncompressed text frame (FIN,
opcode 1, no mask, a 7-bit, 16-bit or 64-bit length) and written together: the same bytes on the wire (a test
holds them equal to the writer's own, byte for byte), one syscall.

Only when `send_str` itself would write each frame at once, neither waiting nor raising: no permessage-deflate
negotiated for this socket (`send_str` would compress under the writer's lock, large frames in an executor),
the writer not closing, its transport not closing, the protocol not paused (backpressure: `send_str` may wait
in `drain`), and the writer of the aiohttp version this was written against (private attributes, checked once
per class). Otherwise `writer_for` gives None and the caller sends each frame with `send_str`, which waits or
raises as it always has.

Flow control: `send_frame` counts the bytes it wrote in `writer._output_size` and, each time the count passes
`writer._limit`, resets it and waits for the transport if the protocol is paused. `write_texts` counts the
batch's frames the same way, frame by frame, so later `send_str` calls see the very count they would have
seen, and waits once after the write if the count passed the limit and the protocol is paused: a slow peer
still makes the sender wait, at most one batch (a few KB, well under aiohttp's 64 KiB limit) later.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import TypeGuard

from aiohttp import web

try:  # private to aiohttp: used only while it is there
    from aiohttp._websocket.writer import WebSocketWriter
except ImportError:  # pragma: no cover - depends on the installed aiohttp
    WebSocketWriter = None  # type: ignore[assignment,misc]

_TEXT = 0x80 | 0x1  # FIN, no RSV bits (not compressed), opcode TEXT
_LEN1 = struct.Struct("!BB").pack  # aiohttp's PACK_LEN1 / 2 / 3 (its helpers module): the same header forms
_LEN2 = struct.Struct("!BBH").pack
_LEN3 = struct.Struct("!BBQ").pack

_WRITER_ATTRIBUTES = ("protocol", "transport", "compress", "use_mask", "_closing", "_output_size", "_limit")
_PROTOCOL_ATTRIBUTES = ("_paused", "_drain_helper")
_checked: dict[tuple[type, type], bool] = {}  # per class: every instance of one aiohttp version is alike


def text_frames(payloads: Sequence[bytes]) -> bytes:
    """The unmasked, uncompressed text frames of `payloads` (UTF-8), one after the other."""
    parts: list[bytes] = []
    for payload in payloads:
        length = len(payload)
        if length < 126:
            parts.append(_LEN1(_TEXT, length))
        elif length < 65536:
            parts.append(_LEN2(_TEXT, 126, length))
        else:
            parts.append(_LEN3(_TEXT, 127, length))
        parts.append(payload)
    return b"".join(parts)


def _usable(writer: object) -> TypeGuard[WebSocketWriter]:
    """Whether `writer` is an aiohttp WebSocketWriter of the shape `write_texts` was written against."""
    protocol = getattr(writer, "protocol", None)
    key = (type(writer), type(protocol))
    known = _checked.get(key)
    if known is None:
        known = _checked[key] = (
            WebSocketWriter is not None and isinstance(writer, WebSocketWriter)
            and all(hasattr(writer, name) for name in _WRITER_ATTRIBUTES)
            and all(hasattr(protocol, name) for name in _PROTOCOL_ATTRIBUTES)
        )
    return known


def writer_for(ws: web.WebSocketResponse) -> WebSocketWriter | None:
    """`ws`'s writer when text frames written now go straight to the transport, as `send_str` would write
    them; None whenever `send_str` might compress, wait or raise (then send each with `send_str`). Good for
    this loop turn only: call `write_texts` before any await."""
    writer: object = getattr(ws, "_writer", None)  # None before `prepare`
    if writer is None or not _usable(writer):
        return None
    transport = writer.transport
    if (
        writer.compress or writer.use_mask or writer._closing or writer.protocol._paused
        or transport is None or transport.is_closing()
    ):
        return None
    return writer


async def write_texts(writer: WebSocketWriter, payloads: Sequence[bytes]) -> None:
    """`for p in payloads: await ws.send_str(p.decode())` as one write; `writer` from `writer_for`, this turn."""
    writer.transport.write(text_frames(payloads))
    # send_frame's own flow control, counted frame by frame as it counts (see the module's docstring).
    size, limit, crossed = writer._output_size, writer._limit, False
    for payload in payloads:
        length = len(payload)
        size += length + (2 if length < 126 else 4 if length < 65536 else 10)
        if size > limit:
            size, crossed = 0, True
    writer._output_size = size
    if crossed and writer.protocol._paused:
        await writer.protocol._drain_helper()
