"""The Media Streams core against literal wire messages: every event, every rejection, the builders."""

from __future__ import annotations

import base64
import json
from types import MappingProxyType

import pytest

import phonebridge.twilio.protocol as twilio
from phonebridge.errors import TwilioProtocolError
from phonebridge.twilio.protocol import (
    FRAME_BYTES,
    Connected,
    Dtmf,
    Mark,
    Media,
    SequenceTracker,
    Start,
    Stop,
    UlawFramer,
    Unknown,
    clear_message,
    mark_message,
    media_message,
    parse_event,
)

CONNECTED = '{"event":"connected","protocol":"Call","version":"1.0.0"}'
START = (
    '{"event":"start","sequenceNumber":"1","streamSid":"MZ01",'
    '"start":{"streamSid":"MZ01","accountSid":"AC01","callSid":"CA01","tracks":["inbound"],'
    '"customParameters":{"caller":"+15550100","lang":"it"},'
    '"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}'
)
MEDIA = (
    '{"event":"media","sequenceNumber":"4","streamSid":"MZ01",'
    '"media":{"track":"inbound","chunk":"2","timestamp":"5","payload":"/39/fw=="}}'
)
DTMF = '{"event":"dtmf","sequenceNumber":"5","streamSid":"MZ01","dtmf":{"track":"inbound_track","digit":"#"}}'
MARK = '{"event":"mark","sequenceNumber":"6","streamSid":"MZ01","mark":{"name":"turn-3"}}'
STOP = '{"event":"stop","sequenceNumber":"7","streamSid":"MZ01","stop":{"accountSid":"AC01","callSid":"CA01"}}'


# --- every event ---------------------------------------------------------------------------------------


def test_connected() -> None:
    assert parse_event(CONNECTED) == Connected(protocol="Call", version="1.0.0")


def test_start() -> None:
    event = parse_event(START)
    assert event == Start(
        sequence_number=1,
        stream_sid="MZ01",
        account_sid="AC01",
        call_sid="CA01",
        tracks=("inbound",),
        custom_parameters={"caller": "+15550100", "lang": "it"},
        encoding="audio/x-mulaw",
        sample_rate=8000,
        channels=1,
    )
    assert isinstance(event, Start)
    with pytest.raises(TypeError):
        event.custom_parameters["lang"] = "en"  # type: ignore[index]


def test_start_without_custom_parameters_or_inner_sid() -> None:
    msg = json.loads(START)
    del msg["start"]["customParameters"], msg["start"]["streamSid"]
    event = parse_event(json.dumps(msg))
    assert isinstance(event, Start)
    assert dict(event.custom_parameters) == {}
    assert event.stream_sid == "MZ01"


def test_start_accepts_numbers_as_strings() -> None:
    msg = json.loads(START)
    msg["start"]["mediaFormat"].update(sampleRate="8000", channels="1")
    msg["sequenceNumber"] = 1
    event = parse_event(json.dumps(msg))
    assert isinstance(event, Start)
    assert (event.sequence_number, event.sample_rate, event.channels) == (1, 8000, 1)


def test_media_decodes_payload() -> None:
    assert parse_event(MEDIA) == Media(
        sequence_number=4, stream_sid="MZ01", track="inbound", chunk=2, timestamp=5, payload=b"\xff\x7f\x7f\x7f"
    )


def test_media_accepts_bytes_and_numbers() -> None:
    text = '{"event":"media","sequenceNumber":4,"streamSid":"MZ01","media":{"track":"outbound","chunk":2,"timestamp":0,"payload":""}}'
    assert parse_event(text.encode()) == Media(4, "MZ01", "outbound", 2, 0, b"")


def test_dtmf() -> None:
    assert parse_event(DTMF) == Dtmf(sequence_number=5, stream_sid="MZ01", track="inbound_track", digit="#")


def test_mark() -> None:
    assert parse_event(MARK) == Mark(sequence_number=6, stream_sid="MZ01", name="turn-3")


def test_stop() -> None:
    assert parse_event(STOP) == Stop(sequence_number=7, stream_sid="MZ01", account_sid="AC01", call_sid="CA01")


def test_unknown_event_is_returned_not_raised() -> None:
    event = parse_event('{"event":"transcription","streamSid":"MZ01","text":"hi"}')
    assert event == Unknown(event="transcription", raw={"event": "transcription", "streamSid": "MZ01", "text": "hi"})
    assert isinstance(event, Unknown)
    assert isinstance(event.raw, MappingProxyType)


# --- every rejection -----------------------------------------------------------------------------------


def _media(**media: object) -> str:
    body: dict[str, object] = {"track": "inbound", "chunk": "2", "timestamp": "5", "payload": "AAAA"}
    body.update(media)
    return json.dumps({"event": "media", "sequenceNumber": "4", "streamSid": "MZ01", "media": body})


def _start_format(**fmt: object) -> str:
    msg = json.loads(START)
    msg["start"]["mediaFormat"].update(fmt)
    return json.dumps(msg)


REJECTIONS = [
    # (wire text, reason, message)
    ("", "not_json", "message is not valid JSON: Expecting value at char 0"),
    ('{"event":"media"', "not_json", "message is not valid JSON: Expecting ',' delimiter at char 16"),
    (b'{"event":"\xff"}', "not_json", "message is not UTF-8 text"),
    ('["media"]', "not_object", "message is a JSON array, not an object"),
    ('"media"', "not_object", "message is a JSON string, not an object"),
    ("{}", "missing_field", "message has no 'event' field"),
    ('{"event":7}', "bad_type", "field 'event' must be a string, got number"),
    ('{"event":null}', "bad_type", "field 'event' must be a string, got null"),
    ('{"event":"connected","version":"1.0.0"}', "missing_field", "connected: missing field 'protocol'"),
    (
        '{"event":"connected","protocol":"Call","version":1}',
        "bad_type",
        "connected: field 'version' must be a string, got number",
    ),
    # media
    ('{"event":"media","sequenceNumber":"4","streamSid":"MZ01"}', "missing_field", "media: missing field 'media'"),
    (
        '{"event":"media","sequenceNumber":"4","streamSid":"MZ01","media":[]}',
        "bad_type",
        "media: field 'media' must be an object, got array",
    ),
    (_media(payload=None), "bad_type", "media: field 'media.payload' must be a string, got null"),
    (_media(payload="AAA"), "bad_base64", "media: field 'media.payload' is not valid base64 (Incorrect padding)"),
    (
        _media(payload="AA=A"),
        "bad_base64",
        "media: field 'media.payload' is not valid base64 (Discontinuous padding not allowed)",
    ),
    (
        _media(payload="AA-_"),
        "bad_base64",
        "media: field 'media.payload' is not valid base64 (Only base64 data is allowed)",
    ),
    (
        _media(payload="AAAA\n"),
        "bad_base64",
        "media: field 'media.payload' is not valid base64 (Only base64 data is allowed)",
    ),
    (
        _media(payload="AAAA==AA"),
        "bad_base64",
        "media: field 'media.payload' is not valid base64 (Discontinuous padding not allowed)",
    ),
    (
        _media(payload="AA==AAAA"),
        "bad_base64",
        "media: field 'media.payload' is not valid base64 (Excess data after padding)",
    ),
    (
        _media(payload="ÀAAA"),
        "bad_base64",
        "media: field 'media.payload' is not valid base64 (string argument should contain only ASCII characters)",
    ),
    (_media(track=1), "bad_type", "media: field 'media.track' must be a string, got number"),
    (_media(chunk="two"), "bad_value", "media: field 'media.chunk' must be a non-negative integer, got 'two'"),
    (_media(chunk="-1"), "bad_value", "media: field 'media.chunk' must be a non-negative integer, got '-1'"),
    (_media(chunk=" 1"), "bad_value", "media: field 'media.chunk' must be a non-negative integer, got ' 1'"),
    (_media(chunk="1_0"), "bad_value", "media: field 'media.chunk' must be a non-negative integer, got '1_0'"),
    (_media(chunk="²"), "bad_value", "media: field 'media.chunk' must be a non-negative integer, got '²'"),
    (_media(chunk=""), "bad_value", "media: field 'media.chunk' must be a non-negative integer, got ''"),
    (
        _media(chunk="1" * 20),
        "bad_value",
        f"media: field 'media.chunk' must be a non-negative integer, got '{'1' * 20}'",
    ),
    (_media(chunk=-1), "bad_value", "media: field 'media.chunk' must be a non-negative integer, got -1"),
    (_media(chunk=1.5), "bad_type", "media: field 'media.chunk' must be a number or a string of digits, got number"),
    (_media(chunk=True), "bad_type", "media: field 'media.chunk' must be a number or a string of digits, got boolean"),
    (
        _media(timestamp=None),
        "bad_type",
        "media: field 'media.timestamp' must be a number or a string of digits, got null",
    ),
    (
        '{"event":"media","streamSid":"MZ01","media":{"track":"inbound","chunk":"2","timestamp":"5","payload":""}}',
        "missing_field",
        "media: missing field 'sequenceNumber'",
    ),
    (
        '{"event":"media","sequenceNumber":"4","streamSid":"","media":{"track":"inbound","chunk":"2","timestamp":"5","payload":""}}',
        "bad_value",
        "media: field 'streamSid' must not be empty",
    ),
    # start
    (
        _start_format(encoding="audio/x-l16"),
        "unsupported_format",
        "start: unsupported media format audio/x-l16 8000 Hz 1 channel(s); phonebridge needs audio/x-mulaw 8000 Hz mono",
    ),
    (
        _start_format(sampleRate=16000),
        "unsupported_format",
        "start: unsupported media format audio/x-mulaw 16000 Hz 1 channel(s); phonebridge needs audio/x-mulaw 8000 Hz mono",
    ),
    (
        _start_format(channels=2),
        "unsupported_format",
        "start: unsupported media format audio/x-mulaw 8000 Hz 2 channel(s); phonebridge needs audio/x-mulaw 8000 Hz mono",
    ),
    (
        _start_format(sampleRate="8k"),
        "bad_value",
        "start: field 'start.mediaFormat.sampleRate' must be a non-negative integer, got '8k'",
    ),
    (
        START.replace('"streamSid":"MZ01","accountSid"', '"streamSid":"MZ02","accountSid"'),
        "bad_value",
        "start: field 'start.streamSid' 'MZ02' differs from 'streamSid' 'MZ01'",
    ),
    (START.replace('"callSid":"CA01",', ""), "missing_field", "start: missing field 'start.callSid'"),
    (
        START.replace('["inbound"]', '"inbound"'),
        "bad_type",
        "start: field 'start.tracks' must be an array of strings, got string",
    ),
    (
        START.replace('["inbound"]', '["inbound",1]'),
        "bad_type",
        "start: field 'start.tracks' must be an array of strings, got array",
    ),
    (
        START.replace('"lang":"it"', '"lang":3'),
        "bad_type",
        "start: field 'start.customParameters.lang' must be a string, got number",
    ),
    (
        START.replace('{"caller":"+15550100","lang":"it"}', "null"),
        "bad_type",
        "start: field 'start.customParameters' must be an object, got null",
    ),
    (START.replace('"mediaFormat":', '"mediaFormatX":'), "missing_field", "start: missing field 'start.mediaFormat'"),
    # dtmf, mark, stop
    (DTMF.replace('"#"', '"12"'), "bad_value", "dtmf: field 'dtmf.digit' must be one of 0-9 * # A-D, got '12'"),
    (DTMF.replace('"digit":"#"', '"digit":5'), "bad_type", "dtmf: field 'dtmf.digit' must be a string, got number"),
    (MARK.replace('{"name":"turn-3"}', "{}"), "missing_field", "mark: missing field 'mark.name'"),
    (
        MARK.replace('"sequenceNumber":"6"', '"sequenceNumber":"six"'),
        "bad_value",
        "mark: field 'sequenceNumber' must be a non-negative integer, got 'six'",
    ),
    (STOP.replace('"callSid":"CA01"', '"callSid":""'), "bad_value", "stop: field 'stop.callSid' must not be empty"),
    (STOP.replace(',"stop":{"accountSid":"AC01","callSid":"CA01"}', ""), "missing_field", "stop: missing field 'stop'"),
]


@pytest.mark.parametrize(("text", "reason", "message"), REJECTIONS)
def test_rejections(text: str | bytes, reason: str, message: str) -> None:
    with pytest.raises(TwilioProtocolError) as info:
        parse_event(text)
    assert (info.value.reason, str(info.value)) == (reason, message)


def test_too_large_is_refused_before_parsing() -> None:
    text = MEDIA.replace("/39/fw==", "A" * 56)
    assert len(text) == 182
    with pytest.raises(TwilioProtocolError) as info:
        parse_event(text, max_message_bytes=181)
    assert (info.value.reason, str(info.value)) == ("too_large", "message of 182 bytes exceeds the 181-byte limit")
    assert isinstance(parse_event(text, max_message_bytes=182), Media)


def test_default_limit_is_64_kib() -> None:
    with pytest.raises(TwilioProtocolError, match="^message of 65537 bytes exceeds the 65536-byte limit$"):
        parse_event(b" " * 65537)


# --- hostile input: bounded before it costs anything, always a tagged error -----------------------------


@pytest.mark.parametrize(
    ("text", "reason", "message"),
    [
        ("[" * 10_000, "too_deep", "message is nested too deeply"),
        ('{"a":' * 5_000 + "1" + "}" * 5_000, "too_deep", "message is nested too deeply"),
        (MEDIA.replace('"media":{', '"media":{"x":' + "[" * 2_000 + "]" * 2_000 + ","), "too_deep",
         "message is nested too deeply"),
    ],
    ids=["open_brackets", "objects_5000_deep", "deep_inside_a_media_frame"],
)
def test_deep_nesting_is_a_protocol_error_not_a_recursion_error(text: str, reason: str, message: str) -> None:
    with pytest.raises(TwilioProtocolError) as info:
        parse_event(text)
    assert (info.value.reason, str(info.value)) == (reason, message)


def test_a_json_number_longer_than_ints_digit_limit_is_a_protocol_error() -> None:
    text = MEDIA.replace('"sequenceNumber":"4"', '"sequenceNumber":' + "1" * 5_000)
    with pytest.raises(TwilioProtocolError) as info:
        parse_event(text)
    assert info.value.reason == "bad_value"
    assert str(info.value).startswith("message has a number too long to read (Exceeds the limit (4300 digits)")


@pytest.mark.parametrize("value", ["1" * 5_000, "9" * 20, 2**63, 10**4000], ids=["digits_5000", "digits_20",
                                                                                  "2_63", "number_4001_digits"])
def test_huge_integers_are_refused_as_bad_values(value: object) -> None:
    text = MEDIA.replace('"sequenceNumber":"4"', '"sequenceNumber":' + json.dumps(value))
    with pytest.raises(TwilioProtocolError) as info:
        parse_event(text)
    assert info.value.reason == "bad_value"
    assert str(info.value).startswith("media: field 'sequenceNumber' must be a non-negative integer, got ")
    assert len(str(info.value)) < 120  # the log line shows the start of the value, not all of it


def test_the_largest_accepted_integer_is_2_63_minus_1() -> None:
    for value in (2**63 - 1, str(2**63 - 1)):
        event = parse_event(MEDIA.replace('"sequenceNumber":"4"', '"sequenceNumber":' + json.dumps(value)))
        assert isinstance(event, Media) and event.sequence_number == 2**63 - 1


def test_media_payload_is_bounded_in_bytes_before_decoding() -> None:
    limit = twilio.MAX_MEDIA_PAYLOAD_BYTES
    assert limit == 4096
    at_limit = base64.b64encode(b"\xff" * limit).decode()
    event = parse_event(_media(payload=at_limit))
    assert isinstance(event, Media) and len(event.payload) == limit
    over = base64.b64encode(b"\xff" * (limit + 3)).decode()
    with pytest.raises(TwilioProtocolError) as info:
        parse_event(_media(payload=over))
    assert (info.value.reason, str(info.value)) == (
        "too_large", f"media: field 'media.payload' of {len(over)} base64 characters exceeds the {limit}-byte limit")
    with pytest.raises(TwilioProtocolError) as info:  # checked before decoding: not even base64
        parse_event(_media(payload="!" * 40_000))
    assert info.value.reason == "too_large"


def test_start_without_a_top_level_stream_sid_takes_start_stream_sid() -> None:
    msg = json.loads(START)
    del msg["streamSid"]
    event = parse_event(json.dumps(msg))
    assert isinstance(event, Start) and event.stream_sid == "MZ01"
    assert event == parse_event(START)  # both shapes give the same event
    del msg["start"]["streamSid"]
    with pytest.raises(TwilioProtocolError) as info:
        parse_event(json.dumps(msg))
    assert (info.value.reason, str(info.value)) == ("missing_field", "start: missing field 'start.streamSid'")
    msg["start"]["streamSid"] = 7
    with pytest.raises(TwilioProtocolError) as info:
        parse_event(json.dumps(msg))
    assert (info.value.reason, str(info.value)) == (
        "bad_type", "start: field 'start.streamSid' must be a string, got number")
    msg["start"]["streamSid"] = ""
    with pytest.raises(TwilioProtocolError) as info:
        parse_event(json.dumps(msg))
    assert info.value.reason == "bad_value"


# --- builders ------------------------------------------------------------------------------------------


def test_media_message() -> None:
    assert media_message("MZ01", b"\xff\x7f\x7f\x7f") == (
        '{"event":"media","streamSid":"MZ01","media":{"payload":"/39/fw=="}}'
    )


def test_media_message_round_trips_through_json() -> None:
    text = media_message('MZ"1', bytes(range(256)))
    assert json.loads(text)["streamSid"] == 'MZ"1'
    echoed = json.loads(text)
    echoed.update(sequenceNumber="9", media={**echoed["media"], "track": "outbound", "chunk": "1", "timestamp": "0"})
    event = parse_event(json.dumps(echoed))
    assert isinstance(event, Media) and event.payload == bytes(range(256))


def test_mark_message() -> None:
    assert mark_message("MZ01", "turn-3") == '{"event":"mark","streamSid":"MZ01","mark":{"name":"turn-3"}}'
    assert mark_message("MZ01", 'a"b') == '{"event":"mark","streamSid":"MZ01","mark":{"name":"a\\"b"}}'


def test_clear_message() -> None:
    assert clear_message("MZ01") == '{"event":"clear","streamSid":"MZ01"}'


def test_builders_refuse_an_empty_stream_sid_or_mark_name() -> None:
    with pytest.raises(ValueError, match="streamSid is empty"):
        media_message("", b"\x00")
    with pytest.raises(ValueError, match="streamSid is empty"):
        clear_message("")
    with pytest.raises(ValueError, match="a mark needs a non-empty name"):
        mark_message("MZ01", "")


# --- framer --------------------------------------------------------------------------------------------


def test_framer_exact_frames() -> None:
    framer = UlawFramer()
    data = bytes(range(160)) * 2
    assert framer.push(data) == [bytes(range(160)), bytes(range(160))]
    assert framer.pending == 0
    assert framer.flush() == b""


def test_framer_carries_the_remainder_across_pushes() -> None:
    framer = UlawFramer()
    data = bytes(i % 251 for i in range(500))
    assert framer.push(data[:100]) == []
    assert framer.pending == 100
    frames = framer.push(data[100:430])
    assert frames == [data[0:160], data[160:320]]
    assert framer.pending == 110
    assert framer.push(data[430:]) == [data[320:480]]
    assert framer.pending == 180 - FRAME_BYTES
    assert framer.flush() == data[480:]
    assert framer.pending == 0


def test_framer_empty_push_and_reset() -> None:
    framer = UlawFramer()
    assert framer.push(b"") == []
    assert framer.push(b"\x01" * 159) == []
    framer.reset()
    assert framer.pending == 0
    assert framer.push(b"\x02" * 161) == [b"\x02" * 160]
    assert framer.flush() == b"\x02"


def test_framer_accepts_bytearray_and_returns_bytes() -> None:
    framer = UlawFramer(frame_bytes=4)
    frames = framer.push(bytearray(b"abcdefghij"))
    assert frames == [b"abcd", b"efgh"]
    assert all(type(f) is bytes for f in frames)
    assert framer.flush() == b"ij"
    with pytest.raises(ValueError, match="frame_bytes must be positive, got 0"):
        UlawFramer(frame_bytes=0)


# --- sequence tracker ----------------------------------------------------------------------------------


def test_sequence_tracker_in_order() -> None:
    tracker = SequenceTracker()
    assert [tracker.observe(n) for n in (1, 2, 3)] == [0, 0, 0]
    assert (tracker.gaps, tracker.lost, tracker.duplicates_or_reordered, tracker.expected) == (0, 0, 0, 4)


def test_sequence_tracker_gaps_and_duplicates() -> None:
    tracker = SequenceTracker()
    assert tracker.observe(1) == 0
    assert tracker.observe(4) == 2
    assert tracker.observe(5) == 0
    assert tracker.observe(3) == 0
    assert tracker.observe(5) == 0
    assert tracker.observe(9) == 3
    assert (tracker.gaps, tracker.lost, tracker.duplicates_or_reordered, tracker.expected) == (2, 5, 2, 10)


def test_sequence_tracker_first_number_missing() -> None:
    tracker = SequenceTracker(first=1)
    assert tracker.observe(3) == 2
    assert (tracker.gaps, tracker.lost) == (1, 2)


# --- what a hostile frame can put in a log line (a 60 KB string echoed in every error message) ------------

_HUGE = "x" * 60_000


@pytest.mark.parametrize("text", [
    START.replace('"lang":"it"', json.dumps({_HUGE: 1})[1:-1]),  # a parameter name, with a non-string value
    START.replace('"streamSid":"MZ01","accountSid"', f'"streamSid":"{_HUGE}","accountSid"'),  # differing sids
    START.replace('"streamSid":"MZ01",', f'"streamSid":"{_HUGE}",', 1),
    DTMF.replace('"#"', f'"{_HUGE}"'),
])
def test_a_hostile_value_is_clipped_in_the_error_message(text: str) -> None:
    with pytest.raises(TwilioProtocolError) as info:
        parse_event(text)
    assert len(str(info.value)) < 300 and "60000 characters" in str(info.value)


def test_an_unknown_event_s_name_is_clipped_for_the_log_and_kept_whole_in_raw() -> None:
    event = parse_event(json.dumps({"event": _HUGE, "streamSid": "MZ01"}))
    assert isinstance(event, Unknown)
    assert len(event.event) < 100 and "60000 characters" in event.event
    assert event.raw["event"] == _HUGE


def test_a_non_string_start_stream_sid_is_named_by_its_type_not_echoed() -> None:
    text = START.replace('"start":{"streamSid":"MZ01"', '"start":{"streamSid":[' + "9" * 4000 + "]")
    with pytest.raises(TwilioProtocolError, match=r"^start: field 'start.streamSid' a JSON array differs from"):
        parse_event(text)
