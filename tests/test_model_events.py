"""Every field of every Live server message becomes an event, in the order the call acts on them."""

import base64

from google.genai import types

from phonebridge.live.events import (
    AudioOut, GenerationComplete, GoAway, InputText, Interrupted, OutputText, ResumptionUpdate, ToolCalls,
    ToolCancel, TurnComplete, Usage, parse_duration, translate,
)


def message(data: dict) -> types.LiveServerMessage:
    return types.LiveServerMessage.model_validate(data)


def test_audio_and_transcript_in_one_event_are_both_delivered():
    pcm = b"\x01\x02" * 10
    msg = message({
        "server_content": {
            "model_turn": {"parts": [{"inline_data": {"mime_type": "audio/pcm;rate=24000", "data": pcm}}]},
            "output_transcription": {"text": "Hello"},
            "generation_complete": True,
            "turn_complete": True,
        },
        "usage_metadata": {"prompt_token_count": 5, "response_token_count": 7, "total_token_count": 12},
    })
    assert translate(msg) == [AudioOut(pcm), OutputText("Hello"), GenerationComplete(), TurnComplete(), Usage(5, 7, 12)]


def test_interrupted_comes_before_audio_riding_with_it():
    msg = message({"server_content": {
        "interrupted": True, "turn_complete": True,
        "model_turn": {"parts": [{"inline_data": {"mime_type": "audio/pcm;rate=24000", "data": b"\0\0"}}]},
    }})
    assert translate(msg) == [Interrupted(), AudioOut(b"\0\0"), TurnComplete()]


def test_function_calls_arrive_as_our_own_tool_calls_stamped_with_receive_time_and_epoch():
    from phonebridge.call.tool_types import ToolCall

    msg = message({
        "server_content": {"interrupted": True},
        "tool_call": {"function_calls": [{"id": "fc-1", "name": "lookup", "args": {"x": 1}}, {"id": "fc-2"}]},
    })
    interrupted, calls = translate(msg, 12.5, 3)
    assert calls.calls == (ToolCall("fc-1", "lookup", {"x": 1}), ToolCall("fc-2", "", {}))
    assert (calls.received_at, calls.epoch) == (12.5, 3) and (interrupted.received_at, interrupted.epoch) == (12.5, 3)
    assert calls == ToolCalls(calls.calls) and interrupted == Interrupted()  # the stamps take no part in equality


def test_tool_calls_cancellation_resumption_and_go_away():
    msg = message({
        "tool_call": {"function_calls": [{"id": "fc-1", "name": "lookup", "args": {"x": 1}}]},
    })
    (event,) = translate(msg)
    assert isinstance(event, ToolCalls) and event.calls[0].id == "fc-1" and event.calls[0].args == {"x": 1}
    assert translate(message({"tool_call_cancellation": {"ids": ["fc-1"]}})) == [ToolCancel(("fc-1",))]
    assert translate(message({"session_resumption_update": {"new_handle": "h1", "resumable": True}})) == [
        ResumptionUpdate("h1", True)
    ]
    assert translate(message({"session_resumption_update": {"resumable": False}})) == [ResumptionUpdate(None, False)]
    assert translate(message({"go_away": {"time_left": "7s"}})) == [GoAway(7.0)]


def test_input_transcription_keeps_its_finished_flag_and_empty_fields_are_skipped():
    msg = message({"server_content": {"input_transcription": {"text": "Hi", "finished": True},
                                       "output_transcription": {"text": ""}}})
    assert translate(msg) == [InputText("Hi", True)]
    assert translate(message({})) == []


def test_the_sdk_decodes_server_base64_before_we_see_it():
    # The server sends standard base64; the SDK's model turns it into bytes.
    raw = {"serverContent": {"modelTurn": {"parts": [{"inlineData": {"mimeType": "audio/pcm;rate=24000",
                                                                       "data": base64.b64encode(b"\xfe\xff").decode()}}]}}}
    msg = types.LiveServerMessage._from_response(response=raw, kwargs={})
    assert translate(msg) == [AudioOut(b"\xfe\xff")]


def test_parse_duration():
    assert parse_duration("10s") == 10.0
    assert parse_duration("0.5s") == 0.5
    assert parse_duration("250ms") == 0.25
    assert parse_duration(None, default=3.0) == 3.0
    assert parse_duration("soon", default=4.0) == 4.0
