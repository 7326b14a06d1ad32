"""Offline test doubles for both far ends of phonebridge's wires: a Gemini Live server (LiveEmulator), a
Twilio call leg (TwilioCaller) and Twilio's REST API (TwilioRestEmulator), plus speech-like audio.

They speak the real protocols, so the real google-genai and twilio client code runs against them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LiveEmulator", "TwilioCaller", "TwilioRestEmulator", "assert_replays", "replay_cassette", "synth_speech"]

_LAZY = {
    "LiveEmulator": "phonebridge.testing.live_emulator",
    "TwilioCaller": "phonebridge.testing.twilio_caller",
    "TwilioRestEmulator": "phonebridge.testing.twilio_rest",
    "synth_speech": "phonebridge.testing.speech",
    "replay_cassette": "phonebridge.testing.replay",
    "assert_replays": "phonebridge.testing.replay",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(module), name)
