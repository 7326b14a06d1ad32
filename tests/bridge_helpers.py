"""Shared pieces of the bridge's integration tests (not a test module)."""

from __future__ import annotations

import base64
from typing import Any

from phonebridge.audio import OutboundTranscoder
from phonebridge.testing.live_state import Connection


def agent_audio_as_heard(connection: Connection) -> bytes:
    """The mu-law a caller hears for everything this emulator connection said, transcoded the way the bridge
    does: one stream per turn, flushed at the turn's end."""
    transcoder = OutboundTranscoder()
    out = bytearray()
    for record in connection.sent:
        content: dict[str, Any] = record.message.get("serverContent", {})
        for part in content.get("modelTurn", {}).get("parts", []):
            data = part.get("inlineData", {}).get("data")
            if data:
                out += transcoder.process(base64.b64decode(data))
        if content.get("turnComplete"):
            out += transcoder.flush()
    return bytes(out)


def playback_idle(caller: Any) -> bool:
    return caller.playback_idle
