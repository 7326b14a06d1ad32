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


def reactions(harness: Any) -> dict[str, tuple[float, float]]:
    """phonebridge_reaction_seconds of the harness's app: {kind: (count, sum of seconds)}."""
    from phonebridge.server.app import METRICS

    out: dict[str, list[float]] = {}
    for family in harness.app[METRICS].registry.collect():
        for sample in family.samples:
            if sample.name in ("phonebridge_reaction_seconds_count", "phonebridge_reaction_seconds_sum"):
                slot = 0 if sample.name.endswith("_count") else 1
                out.setdefault(sample.labels["kind"], [0.0, 0.0])[slot] = sample.value
    return {kind: (count, total) for kind, (count, total) in out.items()}
