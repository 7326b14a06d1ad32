"""A Media Streams socket whose text frames its reader may take at once, where aiohttp's parser produces them.

aiohttp hands every frame over through a queue: its parser, in the protocol's `data_received`, puts the
message in the socket's WebSocketDataQueue and resolves the reading task's future; the task wakes in a later
loop turn and climbs back out through `read()`, `receive()` and `__anext__` to the pump. A call gets 50 media
frames a second, and almost all of them need nothing that waits: transcode, then one direct write to the
model's socket. `MediaSocket.offer_texts(handler)` lets the pump take such a frame in the parser's callback:
each text frame is offered to `handler` first, but only while the pump's task waits in `receive()` with
nothing queued ahead (so no frame overtakes another and the task reads all others in order, as before).
`handler(text)` returns True when it has dealt with the frame, False, having done nothing, for anything else;
the frame is then queued as aiohttp queues it. Pings, closes, errors, flow control and whatever came with the
upgrade stay aiohttp's own.

The queue is aiohttp's own class, subclassed; `_post_start` builds it through the module's global, which is
ours for the length of that one synchronous call. Private to aiohttp: that global, and the socket's
`_waiting` and `_closing` flags. Where any of them is missing (another aiohttp version), `offer_texts`
returns False and the socket is a plain WebSocketResponse.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import aiohttp.web_ws as _web_ws
from aiohttp import WSMsgType, web

try:  # private to aiohttp: used only while it is there
    from aiohttp._websocket.reader import WebSocketDataQueue as _Queue
except ImportError:  # pragma: no cover - depends on the installed aiohttp
    _Queue = None  # type: ignore[assignment,misc]

log = logging.getLogger(__name__)

TextHandler = Callable[[str], bool]
_TEXT = WSMsgType.TEXT
_KNOWN = _Queue is not None and getattr(_web_ws, "WebSocketDataQueue", None) is _Queue and all(
    hasattr(web.WebSocketResponse, name) for name in ("_post_start", "_waiting", "_closing", "_reader")
)


class _OfferingQueue(_Queue if _Queue is not None else object):  # type: ignore[misc]
    """aiohttp's queue, offering each text frame to `handler` while `socket`'s reader waits on an empty queue."""

    handler: TextHandler | None = None
    socket: web.WebSocketResponse | None = None

    def feed_data(self, data: Any, size: int) -> None:
        handler, socket = self.handler, self.socket
        if handler is not None and socket is not None and data.type is _TEXT and not self._buffer:
            if socket._waiting and not socket._closing and self._taken(handler, data.data):
                return
        super().feed_data(data, size)

    def _taken(self, handler: TextHandler, text: str) -> bool:
        try:
            return handler(text)
        except Exception:  # a bug of ours: the call goes on, on aiohttp's path, and says so
            log.exception("the media frame handler failed; this socket's frames go through the queue from now on")
            self.handler = self.socket = None
            return False


class MediaSocket(web.WebSocketResponse):
    """A WebSocketResponse whose reader can take text frames without waking its task (see the module)."""

    def _post_start(self, *args: Any, **kwargs: Any) -> None:
        if not _KNOWN:
            super()._post_start(*args, **kwargs)
            return
        _web_ws.WebSocketDataQueue = _OfferingQueue  # type: ignore[attr-defined]  # synchronous: nothing else runs until it is put back
        try:
            super()._post_start(*args, **kwargs)
        finally:
            _web_ws.WebSocketDataQueue = _Queue  # type: ignore[attr-defined]

    def offer_texts(self, handler: TextHandler | None) -> bool:
        """Offer each text frame to `handler` while the reader waits (None: stop offering; do so before the
        socket is dropped, as the handler and this socket hold each other). False where that is unavailable."""
        queue = getattr(self, "_reader", None)
        if not isinstance(queue, _OfferingQueue):
            return False
        queue.handler, queue.socket = handler, None if handler is None else self
        return True
