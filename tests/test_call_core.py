"""The call core over literal Twilio JSON and model events, with `now`: no event loop, no sockets."""

from __future__ import annotations

import base64
import json

import pytest

from phonebridge.call.state import (
    CUT,
    IDLE,
    SPEAKING,
    TURN,
    HangUp,
    Transfer,
    next_turn_state,
)
from phonebridge.call.core import Call
from phonebridge.call.effects import (
    Cleared,
    Expire,
    Observe,
    Open,
    Refuse,
    Remember,
    Say,
    StartTools,
    Stopped,
)
from phonebridge.errors import LocalProtocolError
from phonebridge.live.events import (
    InputText,
    Interrupted,
    OutputText,
    ToolCalls,
    TurnComplete,
)
from phonebridge.twilio.stream_guard import StreamGuard
from phonebridge.call.tool_types import ToolCall

STREAM, CALL, ACCOUNT = "MZ" + "1" * 32, "CA" + "2" * 32, "AC" + "3" * 32
PCM_20MS = b"\x00\x00" * 480  # 20 ms of 24 kHz 16-bit silence: one 160-byte Twilio frame once transcoded


def start(seq: int = 1, stream: str = STREAM, **params: str) -> str:
    return json.dumps({
        "event": "start", "sequenceNumber": str(seq), "streamSid": stream,
        "start": {"streamSid": stream, "accountSid": ACCOUNT, "callSid": CALL, "tracks": ["inbound"],
                  "customParameters": params,
                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
    })


def media(seq: int, stream: str = STREAM) -> str:
    payload = base64.b64encode(b"\xff" * 160).decode()
    return json.dumps({"event": "media", "sequenceNumber": str(seq), "streamSid": stream,
                       "media": {"track": "inbound", "chunk": str(seq), "timestamp": "0", "payload": payload}})


def mark(seq: int, name: str) -> str:
    return json.dumps({"event": "mark", "sequenceNumber": str(seq), "streamSid": STREAM, "mark": {"name": name}})


def stop(seq: int) -> str:
    return json.dumps({"event": "stop", "sequenceNumber": str(seq), "streamSid": STREAM,
                       "stop": {"accountSid": ACCOUNT, "callSid": CALL}})


def dtmf(seq: int, digit: str) -> str:
    return json.dumps({"event": "dtmf", "sequenceNumber": str(seq), "streamSid": STREAM,
                       "dtmf": {"track": "inbound_track", "digit": digit}})


def opened(now: float = 0.0, guard: StreamGuard | None = None) -> Call:
    call = Call(guard or StreamGuard(), now)
    call.receive_twilio(start(), now)
    assert [type(e) for e in call.effects()] == [Open]
    return call


def sent(call: Call) -> list[dict]:
    return [json.loads(frame) for frame in call.twilio_to_send()]


# -- stream rules -------------------------------------------------------------------------------------------

def test_frames_before_start_are_ignored_and_open_nothing():
    call = Call(StreamGuard(), 0.0)
    assert call.receive_twilio(media(1), 0.1) is None
    call.receive_twilio(mark(2, "t1.1"), 0.1)
    call.receive_twilio(dtmf(3, "5"), 0.1)
    call.receive_twilio(stop(4), 0.1)
    assert call.stats.ignored == 4 and call.stats.frames_in == 0
    assert call.effects() == () and call.model_to_send() == () and call.twilio_to_send() == ()


def test_start_opens_with_the_agent_parameters_and_our_media_comes_back_for_the_model():
    call = Call(StreamGuard(), 0.0)
    call.receive_twilio(start(From="+15550001111"), 0.5)
    (effect,) = call.effects()
    assert isinstance(effect, Open) and effect.parameters == {"From": "+15550001111"}
    assert call.stats.call_sid == CALL and call.stream_sid == STREAM
    event = call.receive_twilio(media(2), 0.52)
    assert event is not None and event.payload == b"\xff" * 160
    assert call.stats.frames_in == 1 and call.effects() == ()  # media produces nothing else to drain


def test_another_stream_is_ignored_and_sequence_gaps_are_counted():
    call = opened()
    assert call.receive_twilio(media(2, stream="MZ" + "9" * 32), 0.1) is None
    assert call.stats.ignored == 1 and call.stats.lost_frames == 0
    assert call.receive_twilio(media(5), 0.1) is not None  # 2, 3 and 4 never came (the other stream's 2 is not ours)
    assert call.stats.lost_frames == 3


def test_malformed_and_binary_frames_are_counted_and_the_call_goes_on():
    call = opened()
    call.receive_twilio("{not json", 0.1)
    call.receive_twilio('{"event": "media"}', 0.1)
    call.receive_binary(0.1)
    assert call.stats.malformed == 3
    assert call.receive_twilio(media(2), 0.2) is not None


def test_a_duplicate_start_is_ignored():
    call = opened()
    call.receive_twilio(start(seq=2), 0.1)
    assert call.effects() == () and call.stats.ignored == 1


def test_a_refused_start_opens_nothing_and_stops_the_deadlines():
    class NoTokens:
        def valid(self, call_sid: str, account_sid: str, token: str) -> bool:
            return False

    call = Call(StreamGuard(tokens=NoTokens()), 0.0)  # type: ignore[arg-type]
    call.receive_twilio(start(), 0.1)
    (effect,) = call.effects()
    assert isinstance(effect, Refuse) and effect.reason == "missing_token"
    assert call.stats.outcome == "stream_refused" and call.next_deadline() is None
    assert call.receive_twilio(media(2), 0.2) is None  # still no call: nothing is ours


def test_dtmf_becomes_a_line_for_the_model():
    call = opened()
    call.receive_twilio(dtmf(2, "7"), 0.1)
    assert call.model_to_send() == [Say("The caller pressed 7 on the keypad.", "DTMF 7")]
    assert call.stats.dtmf == ["7"]


def test_stop_for_our_stream_is_the_caller_hanging_up():
    call = opened()
    call.receive_twilio(stop(2), 0.1)
    assert call.effects() == [Stopped()] and call.stats.outcome == "caller_hung_up"


# -- the stream guard's deadlines through handle_timer -----------------------------------------------------

def test_no_start_within_the_start_timeout_expires():
    call = Call(StreamGuard(start_timeout_s=10.0), 100.0)
    call.receive_twilio(media(1), 105.0)  # frames before start do not move the start deadline
    assert call.next_deadline() == 110.0
    call.handle_timer(109.9)
    assert call.effects() == ()
    call.handle_timer(110.0)
    assert call.effects() == [Expire("no_start")] and call.stats.outcome == "no_start"
    assert call.next_deadline() is None  # once


def test_media_timeout_after_start_expires_once_and_frames_move_it():
    call = Call(StreamGuard(media_timeout_s=15.0), 0.0)
    call.receive_twilio(start(), 1.0)
    call.effects()
    assert call.next_deadline() == 16.0
    call.receive_twilio(media(2), 5.0)
    call.handle_timer(16.0)  # the timer set for the old deadline: nothing yet
    assert call.effects() == () and call.next_deadline() == 20.0
    call.handle_timer(20.0)
    assert call.effects() == [Expire("media_timeout")] and call.stats.outcome == "media_timeout"
    assert call.next_deadline() is None


# -- the agent's audio, barge-in and what the caller heard ---------------------------------------------------

def test_agent_audio_goes_out_as_media_frames_with_marks():
    call = opened()
    for i in range(5):
        assert call.agent_audio(PCM_20MS, 1.0 + i * 0.02)
    frames = sent(call)
    events = [f["event"] for f in frames]
    assert events == ["media"] * 5 + ["mark"]  # 100 ms of audio, then the mark that proves it played
    assert [len(base64.b64decode(f["media"]["payload"])) for f in frames[:5]] == [160] * 5
    assert frames[-1]["mark"]["name"] == "t1.1" and call.stats.frames_out == 5
    assert all(f["streamSid"] == STREAM for f in frames)
    assert call.stats.first_audio_s == 1.0 and call.state.phase == SPEAKING


def test_barge_in_clears_drops_the_cut_turns_late_audio_and_reports_what_was_heard():
    call = opened()
    for _ in range(10):
        call.agent_audio(PCM_20MS, 1.0)
    names = [f["mark"]["name"] for f in sent(call) if f["event"] == "mark"]
    call.receive_twilio(mark(2, names[0]), 1.1)  # the first ~100 ms played by 1.1
    call.receive_model(Interrupted(), 1.15)
    assert sent(call) == [{"event": "clear", "streamSid": STREAM}]
    effects = call.effects()
    assert effects[0] == Cleared()
    (barge,) = [e for e in effects if isinstance(e, Observe)]
    assert barge.kind == "barge_in" and barge.data["turn"] == 1
    assert names == ["t1.1", "t1.2"]
    assert barge.data["heard_s"] == pytest.approx(0.15)  # proven 100 ms at 1.1, and the 50 ms played since
    assert call.stats.barge_ins == 1 and call.state.phase == CUT
    # Late chunks of the cut turn: nothing goes out, and they are counted as dropped.
    assert not call.agent_audio(PCM_20MS, 1.16)
    assert call.twilio_to_send() == () and call.state.dropped_cut_bytes == 160
    call.receive_model(Interrupted(), 1.17)  # a second `interrupted` of the same turn is no second barge-in
    assert call.effects() == () and call.twilio_to_send() == ()
    call.receive_model(TurnComplete(), 1.2)
    assert call.twilio_to_send() == () and call.stats.turns == 0 and call.state.phase == IDLE
    assert call.agent_audio(PCM_20MS, 2.0) and call.state.turn == 2  # the next turn is heard again


def test_hang_up_waits_for_the_goodbye_to_play():
    call = opened(guard=StreamGuard(media_timeout_s=60.0))
    call.request_hang_up(1.0)
    assert call.next_deadline() == pytest.approx(16.0)  # the grace deadline, before the media timeout
    call.agent_audio(PCM_20MS * 3, 1.1)
    call.receive_model(TurnComplete(), 1.2)
    frames = sent(call)
    assert frames[-1]["event"] == "mark" and call.effects() == ()  # said, not yet heard
    assert call.stats.turns == 1
    for seq, frame in enumerate((f for f in frames if f["event"] == "mark"), start=2):
        call.receive_twilio(mark(seq, frame["mark"]["name"]), 1.3)
    assert call.effects() == [HangUp("agent ended the call")]
    assert call.stats.outcome == "agent_hung_up"


def test_hang_up_happens_at_the_grace_deadline_when_the_goodbye_never_plays():
    call = opened(guard=StreamGuard(media_timeout_s=60.0))
    call.request_hang_up(1.0)
    call.handle_timer(15.9)
    assert call.effects() == ()
    call.handle_timer(16.0)
    assert call.effects() == [HangUp("agent ended the call")]


def test_a_transfer_waits_for_the_goodbye_too():
    call = opened()
    call.request_transfer("+15550002222", 1.0)
    call.agent_audio(PCM_20MS, 1.1)
    call.receive_model(TurnComplete(), 1.2)
    (mark_frame,) = [f for f in sent(call) if f["event"] == "mark"]
    assert call.effects() == ()
    call.receive_twilio(mark(2, mark_frame["mark"]["name"]), 1.3)
    assert call.effects() == [Transfer("+15550002222")] and call.stats.outcome == "transferred"


def test_a_tool_call_is_observed_and_handed_to_the_pump():
    call = opened()
    calls = (ToolCall(id="c1", name="get_menu", args={"vegetarian": True}),)
    call.receive_model(ToolCalls(calls), 1.0)
    assert call.effects() == [Observe("tool_call", {"id": "c1", "name": "get_menu", "args": {"vegetarian": True}}),
                              StartTools(calls)]
    assert call.stats.tool_calls == 1


def test_refused_streams_are_logged_sparingly_through_the_apps_gate(caplog):
    class NoTokens:
        def valid(self, call_sid: str, account_sid: str, token: str) -> bool:
            return False

    guard = StreamGuard(tokens=NoTokens())  # type: ignore[arg-type]
    with caplog.at_level("WARNING", logger="phonebridge.call"):
        for i in range(8):
            Call(guard, 0.0).receive_twilio(start(), float(i))
    refused = [r.getMessage() for r in caplog.records if "refused the media stream" in r.getMessage()]
    assert len(refused) == 5 and refused[-1].endswith("(#5 closed by the stream guard)")
    assert guard.log_gate.count == 8


# -- the transcript at turn boundaries ------------------------------------------------------------------------

def lines(call: Call) -> list[tuple[str, str]]:
    return [(e.data["who"], e.data["text"]) for e in call.effects() if isinstance(e, Observe) and e.kind == "transcript"]


def test_the_callers_words_become_a_line_when_the_model_starts_answering():
    call = opened()
    call.receive_model(InputText("what time ", finished=False), 1.0)
    call.receive_model(InputText(" do you  open", finished=False), 1.1)
    assert lines(call) == []
    call.agent_audio(PCM_20MS, 1.5)
    assert lines(call) == [("caller", "what time do you open")]
    call.receive_model(InputText("please", finished=False), 1.6)  # trails in during the answer
    call.receive_model(OutputText("We open at nine."), 1.7)
    call.agent_audio(PCM_20MS, 1.8)
    assert lines(call) == []  # still the same answer: the trailing words wait for the turn's end
    call.receive_model(TurnComplete(), 2.0)
    assert lines(call) == [("caller", "please"), ("agent", "We open at nine.")]
    assert call.model_to_send() == [Remember("user", "what time do you open"), Remember("user", "please"),
                                    Remember("model", "We open at nine.")]
    assert [(who, text) for _, who, text in call.stats.transcript] == [
        ("caller", "what time do you open"), ("caller", "please"), ("agent", "We open at nine.")]


def test_a_finished_line_closes_at_once_and_a_tool_call_or_barge_in_closes_an_open_one():
    call = opened()
    call.receive_model(InputText("book a table", finished=True), 1.0)
    assert lines(call) == [("caller", "book a table")]
    call.receive_model(InputText("for two", finished=False), 1.1)
    call.receive_model(ToolCalls(()), 1.2)
    assert lines(call) == [("caller", "for two")]
    call.receive_model(InputText("no wait", finished=False), 1.3)
    call.receive_model(Interrupted(), 1.4)
    assert lines(call) == [("caller", "no wait")]
    call.receive_model(InputText("cut off by the end", finished=False), 1.5)
    call.finish(2.0)
    assert lines(call) == [("caller", "cut off by the end")]


# -- the turn table ------------------------------------------------------------------------------------------

def test_every_model_turn_event_has_a_move_in_every_state_and_anything_else_is_our_bug():
    assert set(TURN) == {IDLE, SPEAKING, CUT}
    assert all(set(moves) == {"audio", "interrupted", "turn_complete"} for moves in TURN.values())
    assert next_turn_state(SPEAKING, "interrupted") == CUT
    with pytest.raises(LocalProtocolError):
        next_turn_state(CUT, "tool_call")


def test_an_event_the_core_has_no_rule_for_is_a_local_protocol_error():
    call = opened()
    with pytest.raises(LocalProtocolError):
        call.receive_model(object(), 0.0)  # type: ignore[arg-type]  # not a model event: our misuse


def test_the_hold_sound_waits_for_the_agents_audio_to_play_and_is_never_marked():
    call = opened()
    assert call.may_hold()
    call.agent_audio(PCM_20MS * 5, 1.0)
    (mark_frame,) = [f for f in sent(call) if f["event"] == "mark"]
    assert not call.may_hold()  # the agent is still being heard
    call.receive_twilio(mark(2, mark_frame["mark"]["name"]), 1.1)
    assert call.may_hold()
    frame = json.loads(call.hold_frame(b"\x7f" * 160))
    assert frame == {"event": "media", "streamSid": STREAM, "media": {"payload": base64.b64encode(b"\x7f" * 160).decode()}}
    assert call.twilio_to_send() == () and call.may_hold()  # outside the mark accounting


def test_the_pump_executes_every_effect_the_core_may_ask_for():
    import typing

    import phonebridge.call.actions as actions
    import phonebridge.call.effects as fx
    from phonebridge.call.bridge import CallSession

    assert set(actions.EXECUTE) == set(typing.get_args(fx.Effect))
    assert all(callable(getattr(CallSession, name)) for name in actions.EXECUTE.values())
    assert CallSession._opened is not actions.CallActions._opened  # the pump's own, not the base's stub
