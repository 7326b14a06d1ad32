"""Cassette recording: the writer (hot-path record, bounded queue, 0600 file, end line) and reading back."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest
from google.genai import types

from phonebridge import __version__
import phonebridge.twilio.protocol as twilio
from phonebridge.cassette.record import (
    CallRecorder, CassetteError, cassette_header, decode_bytes, encode_record, load_cassette, recorder_factory,
)

START = twilio.Start(
    sequence_number=1, stream_sid="MZ" + "1" * 32, account_sid="AC" + "2" * 32, call_sid="CA" + "3" * 32,
    tracks=("inbound",), custom_parameters={"From": "+15550001111"}, encoding="audio/x-mulaw", sample_rate=8000,
    channels=1,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lines(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file]


async def test_factory_writes_a_private_cassette_named_after_the_call(tmp_path):
    recorder = recorder_factory(tmp_path / "calls")(START)
    recorder.record("twilio_in", '{"event":"connected","protocol":"Call","version":"1.0.0"}')
    await recorder.aclose()
    path = tmp_path / "calls" / f"{START.call_sid}.jsonl"
    assert recorder.path == str(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    header, first, end = lines(str(path))
    assert header["cassette"] == 1 and header["phonebridge"] == __version__
    assert (header["call_sid"], header["stream_sid"]) == (START.call_sid, START.stream_sid)
    assert header["custom_parameters"] == {"From": "+15550001111"}
    assert first["kind"] == "twilio_in"
    assert first["data"] == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert end == {"t": end["t"], "kind": "end", "data": {"records": 1, "dropped": 0}}


async def test_a_second_call_with_the_same_sid_never_overwrites_the_first(tmp_path):
    factory = recorder_factory(tmp_path)
    first, second = factory(START), factory(START)
    await first.aclose()
    await second.aclose()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{START.call_sid}-2.jsonl", f"{START.call_sid}.jsonl"]


async def test_hostile_call_sid_cannot_escape_the_directory(tmp_path):
    start = twilio.Start(1, "MZ1", "AC1", "../../etc/passwd", ("inbound",), {}, "audio/x-mulaw", 8000, 1)
    recorder = recorder_factory(tmp_path / "d")(start)
    await recorder.aclose()
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["______etc_passwd.jsonl"]


async def test_records_carry_times_since_the_call_started_and_every_kind_serialises(tmp_path):
    clock = FakeClock()
    path = tmp_path / "c.jsonl"
    recorder = CallRecorder(open(path, "w"), cassette_header(START), clock=clock)
    clock.now += 0.25
    recorder.record("model_out", {"realtime_input": {"audio": {"mime_type": "audio/pcm;rate=16000", "data": b"\x00\xff"}}})
    clock.now += 0.5
    message = types.LiveServerMessage.model_validate(
        {"server_content": {"model_turn": {"parts": [{"inline_data": {"mime_type": "audio/pcm;rate=24000",
                                                                       "data": bytes(range(250, 256))}}]}}})
    recorder.record("model_in", message)
    recorder.record("twilio_out", "not json at all")
    recorder.record("tool", {"id": "fc-1", "name": "f", "args": {"a": 1}, "status": "ok", "response": {"r": 2},
                             "latency_s": 0.001})
    await recorder.aclose()
    _, audio, model_in, raw, tool, end = lines(str(path))
    assert audio == {"t": 0.25, "kind": "model_out",
                     "data": {"realtime_input": {"audio": {"mime_type": "audio/pcm;rate=16000", "data": "AP8="}}}}
    assert model_in["t"] == 0.75
    assert types.LiveServerMessage.model_validate(model_in["data"]) == message
    assert raw["data"] == {"raw": "not json at all"}
    assert tool["data"]["response"] == {"r": 2}
    assert end["data"] == {"records": 4, "dropped": 0}


async def test_flush_writes_before_the_call_ends(tmp_path):
    path = tmp_path / "c.jsonl"
    recorder = CallRecorder(open(path, "w"), cassette_header(START), flush_interval_s=3600)
    recorder.record("twilio_in", '{"event":"media"}')
    await recorder.flush()
    assert [line.get("kind") for line in lines(str(path))] == [None, "twilio_in"]  # header, record; no end yet
    assert not load_cassette(path).complete
    await recorder.aclose()
    assert load_cassette(path).complete


async def test_a_writer_that_falls_behind_drops_and_counts_and_never_blocks(tmp_path, caplog):
    path = tmp_path / "c.jsonl"
    recorder = CallRecorder(open(path, "w"), cassette_header(START), max_pending=3, flush_interval_s=3600)
    for n in range(10):
        recorder.record("twilio_in", json.dumps({"event": "media", "n": n}))
    assert recorder.dropped == 7
    await recorder.aclose()
    cassette = load_cassette(path)
    assert [r.data["n"] for r in cassette.records] == [0, 1, 2]
    assert cassette.dropped == 7
    assert sum("dropping records" in r.message for r in caplog.records) == 1  # logged once, not per record


async def test_a_failing_disk_stops_recording_but_not_the_call(tmp_path, caplog):
    class FullDisk:
        name = "full.jsonl"

        def write(self, text: str) -> int:
            raise OSError(28, "No space left on device")

        def flush(self) -> None: ...

        def close(self) -> None: ...

    recorder = CallRecorder(FullDisk(), cassette_header(START))  # type: ignore[arg-type]
    recorder.record("twilio_in", "{}")
    await recorder.flush()
    recorder.record("twilio_in", "{}")  # must not raise
    await recorder.aclose()
    assert recorder.dropped == 2
    assert any("writing failed" in r.message for r in caplog.records)


def test_encode_record_keeps_bytes_as_standard_base64_and_decode_takes_both_alphabets():
    line = json.loads(encode_record(1.23456, "model_out", {"data": b"\xfb\xff"}))
    assert line == {"t": 1.2346, "kind": "model_out", "data": {"data": "+/8="}}
    assert decode_bytes("+/8=") == decode_bytes("-_8") == b"\xfb\xff"
    assert base64.b64decode(line["data"]["data"]) == b"\xfb\xff"


def test_load_cassette_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"cassette": 1}\n{"t": 0, "kind": "twilio_in", "data": {}}\n{"t": 1, "kind": "nope", "data": 1}\n')
    with pytest.raises(CassetteError, match="line 3"):
        load_cassette(path)
    path.write_text('{"cassette": 99}\n')
    with pytest.raises(CassetteError, match="version 1"):
        load_cassette(path)


def test_a_twilio_frame_nested_past_the_recursion_limit_is_recorded_raw_and_reads_back():
    frame = "[" * 10_000  # the bridge records a frame before parsing it: the writer must not choke on it
    line = encode_record(0.5, "twilio_in", frame)
    assert json.loads(line) == {"t": 0.5, "kind": "twilio_in", "data": {"raw": frame}}
    long_number = '{"event":"media","sequenceNumber":' + "1" * 5000 + "}"
    assert json.loads(encode_record(0.6, "twilio_in", long_number))["data"] == {"raw": long_number}


def test_records_remember_their_line_and_t_never_goes_back(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"cassette":1}\n\n{"t":0.0,"kind":"tool","data":{}}\n{"t":0.0,"kind":"tool","data":{}}\n'
                    '{"t":2,"kind":"end","data":{"records":2,"dropped":0}}\n')
    cassette = load_cassette(path)
    assert [(r.t, r.line) for r in cassette.records] == [(0.0, 3), (0.0, 4)]
    assert cassette.complete and cassette.dropped == 0
    path.write_text('{"cassette":1}\n{"t":1.0,"kind":"tool","data":{}}\n{"t":0.5,"kind":"tool","data":{}}\n')
    with pytest.raises(CassetteError, match=r"line 3: 't' goes back in time \(0.5 after 1.0\)$"):
        load_cassette(path)
