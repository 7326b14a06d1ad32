"""The load generator's lean paths (bench/lean_caller.py, bench/lean_live.py) hold equal to the library paths:
the same Twilio JSON out, the same reading of the bridge's frames, the same bytes on the socket, the same
Live messages and VAD verdicts."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from aiohttp._websocket.writer import WebSocketWriter

from phonebridge.audio import ulaw_encode
from phonebridge.testing.playback import LegCore
from phonebridge.testing.speech import synth_speech
from phonebridge.testing.twilio_caller import TwilioCaller
from phonebridge.twilio.messages import clear_message, mark_message, media_message

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import lean_caller  # noqa: E402
import lean_live  # noqa: E402

SID, ACCOUNT, CALL = "MZ" + "a" * 32, "AC" + "b" * 32, "CA" + "c" * 32


def _legs() -> tuple[LegCore, lean_caller.LeanLeg]:
    return LegCore(SID, ACCOUNT, CALL), lean_caller.LeanLeg(SID, ACCOUNT, CALL)


def test_media_frames_are_legcores_own_json_in_sequence_with_other_events() -> None:
    slow, fast = _legs()
    clip = ulaw_encode(synth_speech("where is my order", 8000, seconds=0.2))
    frames = [clip[i : i + 160] for i in range(0, len(clip), 160)] + [b"\xff" * 160, bytes(range(160))]
    for k, frame in enumerate(frames):
        start = k * 0.02 + (0.0004 if k % 3 else 0.0)  # timestamps that round either way
        assert fast.media(frame, start) == slow.media(frame, start)
        if k % 4 == 0:  # marks echoed between frames share the one sequence
            assert fast.mark(f"t1.{k}") == slow.mark(f"t1.{k}")
    assert fast.stop() == slow.stop()
    assert fast.sent == slow.sent


def test_an_escaped_stream_sid_is_escaped_as_json_dumps_does() -> None:
    slow, fast = LegCore('MZ"é', ACCOUNT, CALL), lean_caller.LeanLeg('MZ"é', ACCOUNT, CALL)
    assert fast.media(b"\x01" * 160, 0.02) == slow.media(b"\x01" * 160, 0.02)
    assert json.loads(fast.media(b"\x01" * 160, 0.04))["streamSid"] == 'MZ"é'


@pytest.mark.parametrize("text", [
    media_message(SID, b"\x10" * 160),
    media_message(SID, b"\x10" * 14),  # a turn's short tail
    media_message("MZother", b"\x10" * 160),  # another stream's sid
    mark_message(SID, "t1.1"),
    clear_message(SID),
    '{"event":"media","streamSid":"' + SID + '","media":{"payload":"not base64!"}}',
    '{"event":"media","streamSid":"' + SID + '","media":{"payload":"AAA\\n"}}',  # an escape: json's to read
    '{"event":"media","streamSid":"' + SID + '","media":{"payload":"AA\nA="}}',  # a raw control character
    '{"event":"media","streamSid":"' + SID + '","media":{"payload":"AAAA"}, "x": {"a":"AA"}}',
    '{"event": "media", "streamSid": "' + SID + '", "media": {"payload": "AAAA"}}',  # another layout
    '{"event":"media","streamSid":"' + SID + '","media":{"payload":"AAAA"}}}',  # not JSON
    "[]",
])
def test_reading_a_frame_is_legcores_reading(text: str) -> None:
    slow, fast = _legs()
    for leg in (slow, fast):  # something queued first: marks after audio wait for it
        leg.receive(media_message(SID, b"\x20" * 400), 0.0)
        leg.receive(mark_message(SID, "t0.1"), 0.01)
    assert fast.receive(text, 0.02) == slow.receive(text, 0.02)
    assert fast.events == slow.events
    assert fast.protocol_errors == slow.protocol_errors
    assert fast.media_bytes_received == slow.media_bytes_received
    assert fast.clears == slow.clears and fast.marks_echoed == slow.marks_echoed
    assert fast.advance(1.0) == slow.advance(1.0)
    assert fast.heard == slow.heard


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing


class _Protocol:
    _paused = False


def _writer(**kwargs: Any) -> tuple[WebSocketWriter, _Transport]:
    transport = _Transport()
    writer = WebSocketWriter(_Protocol(), transport, use_mask=True, **kwargs)  # type: ignore[arg-type]
    writer.get_random_bits = functools.partial(int, 0x12345678)  # one mask for both paths
    return writer, transport


async def test_the_direct_write_puts_send_strs_bytes_on_the_socket() -> None:
    text = lean_caller.LeanLeg(SID, ACCOUNT, CALL).media(b"\x7f" * 160, 0.02)
    library, by_library = _writer()
    direct, by_direct = _writer()
    for _ in range(3):
        await library.send_frame(text.encode(), WSMsgType.TEXT)
        lean_caller.write_text(direct, text)
    assert by_direct.written == by_library.written and len(by_direct.written) == 3
    assert direct._output_size == library._output_size


def test_the_direct_write_steps_aside_whenever_send_str_might_wait_or_differ() -> None:
    class Socket:
        closed = False

        def __init__(self, writer: Any) -> None:
            self._writer = writer

    writer, transport = _writer()
    assert lean_caller.direct_writer(Socket(writer)) is writer
    paused, _ = _writer()
    paused.protocol._paused = True  # backpressure: send_str would wait for the peer to read
    compressed, _ = _writer(compress=15)
    closing, closing_transport = _writer()
    closing_transport.closing = True
    for other in (paused, compressed, closing, object(), None):
        assert lean_caller.direct_writer(Socket(other)) is None
    gone = Socket(writer)
    gone.closed = True
    assert lean_caller.direct_writer(gone) is None
    assert transport.written == []


def test_live_chunk_messages_are_the_json_the_server_built_per_chunk() -> None:
    speech = lean_live._Speech(0.2)
    assert len(speech.answer) == 5
    for number, message in enumerate(speech.answer):
        content = json.loads(message)["serverContent"]
        data = content["modelTurn"]["parts"][0]["inlineData"]["data"]
        built: dict[str, Any] = {"modelTurn": {"parts": [{"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": data}}]}}
        if number % 5 == 0:
            built["outputTranscription"] = {"text": "word "}
        assert message == json.dumps({"serverContent": built}, separators=(",", ":")).encode()
        assert len(base64.b64decode(data)) == lean_live.CHUNK_BYTES


def test_the_remembered_vad_verdict_is_the_computed_one() -> None:
    loudness = lean_live.Loudness(limit=2)
    loud = base64.urlsafe_b64encode(synth_speech("hello", 16000, seconds=0.04)[:640]).decode()
    quiet = base64.urlsafe_b64encode(bytes(640)).decode()
    for data, expected in ((loud, True), (quiet, False), (loud.rstrip("="), True)):
        text = json.dumps({"realtime_input": {"audio": {"data": data, "mime_type": "audio/pcm;rate=16000"}}})
        assert loudness.get(text) is None
        assert lean_live._audio_data(json.loads(text)) == data
        assert loudness.put(text, data) is expected and loudness.get(text) is expected
    assert lean_live._audio_data({"realtimeInput": {"text": "hi"}}) is None
    assert lean_live._audio_data({"setup": {}}) is None


class _Bridge:
    """A media socket that records what the caller sends and can send it the bridge's frames."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.changed = asyncio.Event()
        self.ws: web.WebSocketResponse | None = None

    async def voice(self, request: web.Request) -> web.Response:
        twiml = '<Response><Connect><Stream url="wss://agent.example.com/media"/></Connect></Response>'
        return web.Response(text=twiml, content_type="text/xml")

    async def media(self, request: web.Request) -> web.WebSocketResponse:
        self.ws = web.WebSocketResponse()
        await self.ws.prepare(request)
        async for message in self.ws:
            self.received.append(json.loads(message.data))
            self.changed.set()
        return self.ws

    async def until(self, predicate: Any) -> None:
        async with asyncio.timeout(10):
            while not predicate(self.received):
                self.changed.clear()
                await self.changed.wait()


async def _call(caller_class: type[TwilioCaller], clip: bytes) -> tuple[list[dict[str, Any]], TwilioCaller]:
    bridge = _Bridge()
    app = web.Application()
    app.router.add_post("/twilio/voice", bridge.voice)
    app.router.add_get("/media", bridge.media)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    caller = caller_class(f"http://127.0.0.1:{runner.addresses[0][1]}", call_sid=CALL, account_sid=ACCOUNT)
    caller.stream_sid = caller._core.stream_sid = SID  # one sid: the two calls' frames compare as text
    try:
        await caller.dial()
        await bridge.until(lambda r: len(r) >= 4)
        await caller.say(clip)
        assert bridge.ws is not None
        await bridge.ws.send_str(media_message(SID, b"\x22" * 480))  # 60 ms of agent audio, then a mark
        await bridge.ws.send_str(mark_message(SID, "t1.1"))
        await bridge.until(lambda r: any(m["event"] == "mark" for m in r))
        await caller.hangup()
        await bridge.until(lambda r: r[-1]["event"] == "stop")
    finally:
        await caller.close()
        await runner.cleanup()
    return bridge.received, caller


@pytest.mark.parametrize("direct", [True, False])
async def test_a_lean_call_puts_twilio_callers_frames_on_the_wire(direct: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    clip = synth_speech("order", 8000, seconds=0.1)
    slow, slow_caller = await _call(TwilioCaller, clip)
    if not direct:  # a writer it does not know: every frame and echo goes the library path, in order
        monkeypatch.setattr(lean_caller, "writer_of", lambda ws: None)
    fast, fast_caller = await _call(lean_caller.LeanCaller, clip)
    for received in (slow, fast):
        assert [m["event"] for m in received[:2]] == ["connected", "start"] and received[-1]["event"] == "stop"
        assert [int(m["sequenceNumber"]) for m in received[1:]] == list(range(1, len(received)))
        media = [m["media"] for m in received if m["event"] == "media"]
        assert [int(m["chunk"]) for m in media] == list(range(1, len(media) + 1))
        assert [int(m["timestamp"]) for m in media] == [20 * k for k in range(len(media))]  # a 20 ms grid
    # The clip's five frames come whole and in order, between silence, as TwilioCaller sends them.
    def spoken(received: list[dict[str, Any]]) -> list[str]:
        return [m["media"]["payload"] for m in received if m["event"] == "media" and m["media"]["payload"] != SILENCE]

    assert spoken(fast) == spoken(slow) and len(spoken(fast)) == 5
    assert fast[1] == slow[1]  # start
    assert isinstance(fast_caller, lean_caller.LeanCaller)
    assert len(fast_caller.frame_times) == sum(1 for m in fast if m["event"] == "media")
    # The mark came back after the 60 ms queued before it had played.
    for caller in (slow_caller, fast_caller):
        assert caller.marks_echoed == ["t1.1"] and caller.media_bytes_received == 480
        assert caller.playback_idle


SILENCE = base64.b64encode(b"\xff" * 160).decode()
