"""The model link's pure rules: how a refusal is read (phonebridge.live.config) and what is sent again (phonebridge.live.resend)."""

from __future__ import annotations

import pytest
from google.genai import types

from phonebridge.agent.definition import Agent
from phonebridge.live.config import (
    FOLD_MAX_CHARS, HistoryMode, Opening, after_refusal, build_config, fold_history, opening,
)
from phonebridge.live.resend import REPLAY_BYTES, REPLAY_FRAMES, ResendBuffer

CC, INSTR, NONE = HistoryMode.CLIENT_CONTENT, HistoryMode.INSTRUCTION, HistoryMode.NONE


def content(role: str, text: str) -> types.Content:
    return types.Content(role=role, parts=[types.Part(text=text)])


@pytest.mark.parametrize(("handle", "history", "mode", "expected"), [
    ("h", True, CC, Opening.RESUMED), ("h", False, NONE, Opening.RESUMED),
    (None, True, CC, Opening.SEEDED), (None, True, INSTR, Opening.FOLDED), (None, True, NONE, Opening.PLAIN),
    (None, False, CC, Opening.PLAIN),
])
def test_how_a_connection_opens(handle, history, mode, expected):
    assert opening(handle, history, mode) is expected


def test_a_refusal_moves_down_the_ladder_once_per_step_and_only_for_what_the_connection_opened_with():
    assert after_refusal(Opening.RESUMED, CC, 1007, heard=False) == (True, CC)
    assert after_refusal(Opening.RESUMED, INSTR, 1008, heard=False) == (True, INSTR)
    assert after_refusal(Opening.SEEDED, CC, 1007, heard=False) == (True, INSTR)
    assert after_refusal(Opening.FOLDED, INSTR, 1007, heard=False) == (True, NONE)
    assert after_refusal(Opening.PLAIN, NONE, 1007, heard=False) is None  # an ordinary, counted failure
    # Not a refusal of the opening: another close code, or a 1007 after the conversation went on.
    assert after_refusal(Opening.RESUMED, CC, 1011, heard=False) is None
    assert after_refusal(Opening.RESUMED, CC, 1007, heard=True) is None
    assert after_refusal(Opening.SEEDED, CC, None, heard=False) is None


def test_the_folded_history_goes_into_the_system_instruction_most_recent_part_first_kept():
    history = [content("model", "Welcome."), content("user", "Bread?"), content("model", "Yes.")]
    text = fold_history("Be kind.", history)
    assert text.startswith("Be kind.\n\nThis call was reconnected.")
    assert text.endswith("\nYou: Welcome.\nCaller: Bread?\nYou: Yes.")
    assert fold_history("Be kind.", []) == "Be kind."
    long = [content("user", f"line {i} " + "x" * 100) for i in range(1000)]
    folded = fold_history("Be kind.", long)
    assert len(folded) < FOLD_MAX_CHARS + 200 and folded.endswith("line 999 " + "x" * 100)
    config = build_config(Agent(instructions="Be kind."), folded_history=history)
    assert config.system_instruction.parts[0].text == text and config.history_config is None


def test_resent_audio_is_bounded_in_bytes_whatever_the_frame_size():
    buffer = ResendBuffer()
    assert REPLAY_BYTES == 192_000 and REPLAY_FRAMES == 300  # 6 s of 16 kHz PCM16; 300 frames of 20 ms
    assert sum(buffer.add_audio(b"\x00" * 640, 0.0) for _ in range(400)) == 100
    assert buffer.audio_bytes == REPLAY_BYTES
    assert sum(buffer.add_audio(b"\x01" * 192_000, 1.0) for _ in range(3)) == 300 + 2
    assert buffer.audio_bytes == REPLAY_BYTES and len(buffer.audio) == 1
    # A single frame over the bound keeps its most recent part.
    buffer.add_audio(b"\x02" * 10 + b"\x03" * REPLAY_BYTES, 2.0)
    assert buffer.audio_bytes == REPLAY_BYTES and buffer.audio[-1][2] == b"\x03" * REPLAY_BYTES


def test_resent_input_keeps_its_order_and_a_handle_confirms_what_came_before_it():
    buffer = ResendBuffer()
    buffer.add_audio(b"a", 1.0)
    buffer.add_text("hello", 2.0)
    buffer.add_audio(b"b", 3.0)
    assert buffer.pending(0) == [(1, b"a"), (2, "hello"), (3, b"b")]
    assert buffer.pending(2) == [(3, b"b")]
    buffer.confirm(2.5)
    assert buffer.pending(0) == [(3, b"b")] and buffer.audio_bytes == 1
    buffer.restamp(10.0)
    buffer.confirm(9.0)
    assert buffer.pending(0) == [(3, b"b")]
    buffer.clear()
    assert buffer.pending(0) == [] and buffer.audio_bytes == 0
