"""Scripts from YAML/JSON, and the emulator's pure wire helpers: no event loop."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

import phonebridge.testing as testing_pkg
from phonebridge.errors import ConfigError
from phonebridge.testing import live_wire as wire
from phonebridge.testing.live_script import (
    CallTools,
    Close,
    Drop,
    GoAway,
    Hear,
    Pause,
    Say,
    Script,
    ScriptError,
    ToolCallSpec,
    WaitForCaller,
    WaitForText,
)
from phonebridge.testing.speech import silence, synth_speech

EXAMPLE = Path(testing_pkg.__file__).parent / "scripts" / "example.yaml"


def test_the_example_yaml_loads_into_steps() -> None:
    script = Script.from_file(EXAMPLE)
    assert script.name == "pizzeria-order-status"
    assert script.steps == (
        WaitForText(),
        Say("Thanks for calling Luigi's, how can I help?"),
        WaitForCaller(min_speech_ms=200, end_silence_ms=300),
        Hear("Where is my order A-1?"),
        CallTools((ToolCallSpec("lookup_order", {"order_id": "A-1"}),), timeout_s=10),
        Say("Your order is out for delivery.", chunk_ms=40),
        WaitForCaller(),
        Say("Goodbye!"),
    )


def test_json_file_and_every_step_kind(tmp_path: Path) -> None:
    data = [
        {"wait_for_text": {"contains": "DTMF"}},
        {"say": {"text": "Hello", "seconds": 1.5, "interruptible": False}},
        {"call_tools": {"calls": [{"name": "a", "args": {"x": 1}, "id": "c1"}, {"name": "b"}]}},
        {"cancel_tools": {"ids": ["c1"]}},
        {"go_away": {"time_left_s": 5}},
        {"usage": {"prompt_tokens": 3, "response_tokens": 4}},
        {"pause": 0.5},
        {"drop": None},
        {"close": {"code": 1011, "reason": "Internal error encountered."}},
    ]
    path = tmp_path / "call.json"
    path.write_text(json.dumps(data))
    steps = Script.from_file(path).steps
    assert steps[0] == WaitForText(contains="DTMF")
    assert steps[1] == Say("Hello", seconds=1.5, interruptible=False)
    assert steps[2] == CallTools((ToolCallSpec("a", {"x": 1}, "c1"), ToolCallSpec("b", {})))
    assert steps[4] == GoAway(time_left_s=5)
    assert steps[6:] == (Pause(0.5), Drop(), Close(1011, "Internal error encountered."))
    assert Script.from_file(path).name == "call"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([{"sya": {"text": "x"}}], "step 0: unknown step 'sya'"),
        ([{"wait_for_caller": {}}, {"say": {"txt": "x"}}], "step 1 (say): unknown key(s) txt; expected text, seconds"),
        ([{"call_tools": {"calls": []}}], "step 0 (call_tools): 'calls' must list at least one call"),
        ([{"call_tools": {"calls": [{"name": "f", "arg": {}}]}}], "unknown call key(s) ['arg']"),
        ([{"say": {}}], "step 0 (say): "),
        ({"steps": [], "loop": 1}, "unknown script keys ['loop']"),
        ("say hi", "a script is a list of steps"),
        ([{"drop": 1}], "step 0 (drop): expected a mapping of arguments"),
    ],
)
def test_malformed_scripts_are_refused_with_the_step_and_key(data: object, message: str) -> None:
    with pytest.raises(ScriptError, match=None) as refused:
        Script.from_data(data)
    assert message in str(refused.value)
    assert isinstance(refused.value, ConfigError)


def test_loop_from_must_name_a_step() -> None:
    assert Script.from_data({"steps": [{"say": "a"}, {"say": "b"}], "loop_from": 1}).loop_from == 1
    with pytest.raises(ScriptError, match="loop_from=2"):
        Script([Say("a")], loop_from=2)


def test_keys_are_normalised_to_camel_case_except_inside_user_data() -> None:
    raw = {
        "generation_config": {"thinking_config": {"thinking_level": "MINIMAL"}},
        "tools": [{"function_declarations": [{"name": "f", "parameters_json_schema": {"properties": {"order_id": {}}}}]}],
    }
    assert wire.normalise(raw) == {
        "generationConfig": {"thinkingConfig": {"thinkingLevel": "MINIMAL"}},
        "tools": [{"functionDeclarations": [{"name": "f", "parametersJsonSchema": {"properties": {"order_id": {}}}}]}],
    }
    assert wire.normalise({"tool_response": {"function_responses": [{"response": {"a_b": 1}}]}}) == {
        "toolResponse": {"functionResponses": [{"response": {"a_b": 1}}]}
    }


def test_client_bytes_decode_url_safe_without_padding() -> None:
    pcm = b"\xfb\xff\xfe"
    assert base64.b64encode(pcm) == b"+//+"
    assert wire.decode_client_bytes("-__-") == pcm
    assert wire.decode_client_bytes("-_8") == b"\xfb\xff"  # padding restored
    assert wire.decode_client_bytes("+//+") == pcm  # the standard alphabet is tolerated too


def test_transcript_slices_ride_on_the_earliest_chunks_and_join_back() -> None:
    assert wire.split_words("one two three four five", 3) == ["one two", " three four", " five"]
    assert wire.split_words("hi", 3) == ["hi", "", ""]
    assert "".join(wire.split_words("Thanks for calling Luigi's", 7)) == "Thanks for calling Luigi's"


def test_energy_detector_works_in_audio_time_whatever_the_chunking() -> None:
    speech = synth_speech("I would like a pizza", 16000, level_dbfs=-20.0)
    audio = silence(0.2, 16000) + speech + silence(0.35, 16000)
    ends = []
    for chunk_bytes in (320, 1000, len(audio)):  # 10 ms, odd sizes, all at once
        detector = wire.EnergyDetector(-40.0, 200.0, 300.0)
        for i in range(0, len(audio), chunk_bytes):
            detector.feed(audio[i : i + chunk_bytes])
        ends.append((detector.utterance_ended, detector.speech_ms, detector.silence_ms))
    assert ends[0] == ends[1] == ends[2]
    assert ends[0][0] is True and ends[0][2] >= 350.0


def test_energy_detector_forgets_short_noise_and_ends_an_utterance() -> None:
    detector = wire.EnergyDetector(-40.0, 200.0, 300.0)
    click = synth_speech("tick", 16000, seconds=0.05)
    detector.feed(click + silence(0.3, 16000))
    assert (detector.speech_ms, detector.utterance_ended) == (0.0, False)
    detector.feed(synth_speech("a real sentence", 16000) + silence(0.3, 16000))
    assert detector.utterance_ended


def test_setup_checks_name_the_model_and_the_setting() -> None:
    model = "models/gemini-3.1-flash-live-preview"
    assert wire.setup_problem({"model": model, "generationConfig": {"thinkingConfig": {"thinkingLevel": "LOW"}}}) is None
    assert wire.setup_problem({"model": model, "proactivity": {}}) == (
        "Invalid argument: proactivity is not supported for models/gemini-3.1-flash-live-preview."
    )
    assert wire.setup_problem({}) == "Invalid argument: setup.model is required."
    assert wire.close_reason("x" * 200) == "x" * 123


def test_end_of_stream_ends_an_utterance_without_trailing_silence() -> None:
    detector = wire.EnergyDetector(-40.0, 200.0, 300.0)
    detector.feed(synth_speech("no silence follows", 16000))
    assert not detector.utterance_ended
    detector.end_of_stream()
    assert detector.utterance_ended
