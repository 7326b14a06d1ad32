"""Sans-I/O: the Media Streams messages we send Twilio (media, mark, clear), and the framer that cuts audio for them.

Only after ``start`` gave the call a ``streamSid`` may any of them be built: an empty one raises ValueError (our
own bug, never the peer's). Base64 for what we send lives here; phonebridge.twilio.protocol decodes what we get.
"""

from __future__ import annotations

import binascii
import json

FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law: the unit of marks and barge-in


def media_message(stream_sid: str, ulaw: bytes) -> str:
    """``{"event":"media",...}`` carrying raw 8 kHz mu-law (any length; frame it first for precise marks)."""
    payload = binascii.b2a_base64(ulaw, newline=False).decode("ascii")
    # The payload is pure base64: only the sid needs JSON escaping.
    return f'{{"event":"media","streamSid":{_sid_json(stream_sid)},"media":{{"payload":"{payload}"}}}}'


def mark_message(stream_sid: str, name: str) -> str:
    """``{"event":"mark",...}``: Twilio echoes it once everything queued before it has played (or was cleared)."""
    if not name:
        raise ValueError("a mark needs a non-empty name")
    return f'{{"event":"mark","streamSid":{_sid_json(stream_sid)},"mark":{{"name":{json.dumps(name)}}}}}'


def clear_message(stream_sid: str) -> str:
    """``{"event":"clear",...}``: drops Twilio's buffered audio; every pending mark is then echoed."""
    return f'{{"event":"clear","streamSid":{_sid_json(stream_sid)}}}'


def _sid_json(stream_sid: str) -> str:
    if not stream_sid:
        # Nothing may be sent before `start` told us the streamSid.
        raise ValueError("streamSid is empty: nothing may be sent before the start event")
    return json.dumps(stream_sid)


class UlawFramer:
    """Cuts an outbound mu-law stream into exact frames, carrying the remainder to the next push.

    Whole frames let the call mark and cut playback at 20 ms precision. At the end of a turn call
    :meth:`flush` to send the tail; on barge-in call :meth:`reset` to drop it.
    """

    __slots__ = ("_frame_bytes", "_rest")

    def __init__(self, frame_bytes: int = FRAME_BYTES) -> None:
        if frame_bytes <= 0:
            raise ValueError(f"frame_bytes must be positive, got {frame_bytes}")
        self._frame_bytes = frame_bytes
        self._rest = b""

    @property
    def pending(self) -> int:
        """Bytes held back, waiting for a full frame."""
        return len(self._rest)

    def push(self, ulaw: bytes) -> list[bytes]:
        """Return every complete frame now available (maybe none); keep the remainder."""
        size = self._frame_bytes
        data = self._rest + ulaw if self._rest else bytes(ulaw)
        end = len(data) - len(data) % size
        self._rest = data[end:]
        return [data[i : i + size] for i in range(0, end, size)]

    def flush(self) -> bytes:
        """Return the remainder (shorter than a frame, maybe empty) and start afresh."""
        rest, self._rest = self._rest, b""
        return rest

    def reset(self) -> None:
        """Drop the remainder (barge-in: the rest of the cut turn must never play)."""
        self._rest = b""
