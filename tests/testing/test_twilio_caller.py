"""TwilioCaller against a tiny aiohttp server that checks signatures with twilio's own RequestValidator."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, VoiceResponse

from phonebridge.audio import ulaw_decode, ulaw_encode
from phonebridge.testing.twilio_caller import CallRejected, TwilioCaller

TOKEN = "test-auth-token"
PUBLIC = "https://agent.example.com"


@dataclass
class FakeBridge:
    """The far end: validates like phonebridge must, records every frame, lets the test send."""

    stream_url: str = "wss://agent.example.com/twilio/media"
    twiml_override: str | None = None
    webhook_forms: list[dict[str, str]] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # loop time each frame arrived
    end: str = ""  # how the socket ended: "close" (a close frame) or another WSMsgType name
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    ws: web.WebSocketResponse | None = None
    base: str = ""

    async def voice(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        signature = request.headers.get("X-Twilio-Signature", "")
        if not RequestValidator(TOKEN).validate(PUBLIC + "/twilio/voice", form, signature):
            return web.Response(status=403, text="bad signature")
        self.webhook_forms.append(form)
        if self.twiml_override is not None:
            return web.Response(text=self.twiml_override, content_type="text/xml")
        response, connect = VoiceResponse(), Connect()
        stream = connect.stream(url=self.stream_url)
        stream.parameter(name="caller", value=form["From"])
        stream.parameter(name="lang", value="en")
        response.append(connect)
        return web.Response(text=str(response), content_type="text/xml")

    async def media(self, request: web.Request) -> web.StreamResponse:
        signature = request.headers.get("X-Twilio-Signature", "")
        if not RequestValidator(TOKEN).validate("wss://agent.example.com/twilio/media", {}, signature):
            raise web.HTTPForbidden(text="bad upgrade signature")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.ws = ws
        self.connected.set()
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                self.received.append(json.loads(message.data))
                self.arrivals.append(asyncio.get_running_loop().time())
                self.arrived.set()
        self.end = "close" if ws.close_code is not None and ws.close_code != 1006 else "lost"
        self.gone.set()
        return ws

    async def wait(self, predicate: Any, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self.received):
                self.arrived.clear()
                await self.arrived.wait()

    def of(self, event: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("event") == event]

    async def send(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_str(json.dumps(message))


@pytest.fixture
async def bridge() -> AsyncIterator[FakeBridge]:
    fake = FakeBridge()
    app = web.Application()
    app.router.add_post("/twilio/voice", fake.voice)
    app.router.add_get("/twilio/media", fake.media)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.base = f"http://127.0.0.1:{port}"
    yield fake
    await runner.cleanup()


def media(sid: str, payload: bytes) -> dict[str, Any]:
    return {"event": "media", "streamSid": sid, "media": {"payload": base64.b64encode(payload).decode()}}


def mark(sid: str, name: str) -> dict[str, Any]:
    return {"event": "mark", "streamSid": sid, "mark": {"name": name}}


async def test_signed_webhook_and_upgrade_are_accepted_and_the_event_sequence_is_twilios(bridge: FakeBridge) -> None:
    caller = TwilioCaller(bridge.base, speed=math.inf, call_sid="CA" + "1" * 32)
    async with caller:
        assert caller.parameters == {"caller": "+15551230001", "lang": "en"}
        assert caller.stream_url == "wss://agent.example.com/twilio/media"
        await caller.say(b"\x00\x00" * 320)  # 40 ms of PCM16 silence: two frames
        await caller.say(b"\x10\x00" * 100)  # 12.5 ms: padded to a whole frame
        await caller.press("5")
    await bridge.gone.wait()

    form = bridge.webhook_forms[0]
    assert (form["CallSid"], form["CallStatus"], form["Direction"], form["ApiVersion"]) == (
        "CA" + "1" * 32, "ringing", "inbound", "2010-04-01")  # fmt: skip
    assert (form["From"], form["To"], form["Caller"], form["Called"]) == (
        "+15551230001", "+15557654321", "+15551230001", "+15557654321")  # fmt: skip
    sid = caller.stream_sid
    r = bridge.received
    assert r[0] == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert r[1] == {"event": "start", "sequenceNumber": "1", "streamSid": sid, "start": {
        "streamSid": sid, "accountSid": caller.account_sid, "callSid": "CA" + "1" * 32, "tracks": ["inbound"],
        "customParameters": {"caller": "+15551230001", "lang": "en"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}  # fmt: skip
    frames = [m for m in r if m["event"] == "media"]
    assert [(m["sequenceNumber"], m["media"]["chunk"], m["media"]["timestamp"]) for m in frames] == [
        ("2", "1", "0"), ("3", "2", "20"), ("4", "3", "40")]  # fmt: skip
    assert all(m["media"]["track"] == "inbound" and m["streamSid"] == sid for m in frames)
    payloads = [base64.b64decode(m["media"]["payload"]) for m in frames]
    assert payloads[:2] == [b"\xff" * 160] * 2
    assert payloads[2] == ulaw_encode(b"\x10\x00" * 100) + b"\xff" * 60
    assert r[5] == {"event": "dtmf", "sequenceNumber": "5", "streamSid": sid,
                    "dtmf": {"track": "inbound_track", "digit": "5"}}  # fmt: skip
    assert r[6] == {"event": "stop", "sequenceNumber": "6", "streamSid": sid,
                    "stop": {"accountSid": caller.account_sid, "callSid": "CA" + "1" * 32}}  # fmt: skip
    assert len(r) == 7 and bridge.end == "close"


async def test_a_tampered_signature_is_rejected(bridge: FakeBridge) -> None:
    wrong = TwilioCaller(bridge.base, auth_token="not-the-token", speed=math.inf)
    with pytest.raises(CallRejected) as rejected:
        await wrong.dial()
    assert rejected.value.status == 403 and rejected.value.body == "bad signature"
    unsigned = TwilioCaller(bridge.base, sign=False, speed=math.inf)
    with pytest.raises(CallRejected):
        await unsigned.dial()
    # The caller's own signature validates only for the exact form it signed.
    caller = TwilioCaller(bridge.base, speed=math.inf)
    form = caller.webhook_form()
    url = PUBLIC + "/twilio/voice"
    signature = RequestValidator(TOKEN).compute_signature(url, form)
    assert RequestValidator(TOKEN).validate(url, form, signature)
    assert not RequestValidator(TOKEN).validate(url, {**form, "From": "+15550000000"}, signature)
    assert bridge.webhook_forms == []


async def test_a_refused_upgrade_raises_call_rejected(bridge: FakeBridge) -> None:
    bridge.stream_url = "wss://agent.example.com/twilio/media?token=1"  # the query is dropped: still valid
    async with TwilioCaller(bridge.base, speed=math.inf) as caller:
        assert caller.stream_url == "wss://agent.example.com/twilio/media"
    bridge.twiml_override = '<Response><Connect><Stream url="wss://agent.example.com/other"/></Connect></Response>'
    with pytest.raises(CallRejected) as rejected:
        await TwilioCaller(bridge.base, speed=math.inf).dial()
    assert rejected.value.status == 404  # routed nowhere: aiohttp answers 404 before any signature check


async def test_twiml_without_a_stream_is_a_rejected_call(bridge: FakeBridge) -> None:
    bridge.twiml_override = "<Response><Say>Sorry</Say><Hangup/></Response>"
    with pytest.raises(CallRejected) as rejected:
        await TwilioCaller(bridge.base, speed=math.inf).dial()
    assert (rejected.value.status, rejected.value.body) == (200, bridge.twiml_override)


async def test_marks_and_clear_follow_twilios_buffer_on_an_injected_clock(bridge: FakeBridge) -> None:
    now = [0.0]
    async with TwilioCaller(bridge.base, clock=lambda: now[0]) as caller:
        sid = caller.stream_sid
        await bridge.send(mark(sid, "empty"))  # nothing buffered: echoed at once
        await bridge.send(media(sid, b"\x01" * 1600))
        await bridge.send(mark(sid, "a"))
        await bridge.send(media(sid, b"\x02" * 800))
        await bridge.send(mark(sid, "b"))
        await caller.wait_for(lambda c: len(c.events) == 5)
        assert caller.marks_echoed == ["empty"] and caller.heard() == b""
        now[0] = 0.1
        await caller.tick()
        assert caller.heard() == b"\x01" * 800 and caller.marks_echoed == ["empty"]
        now[0] = 0.2
        await caller.tick()
        assert caller.marks_echoed == ["empty", "a"]
        now[0] = 0.25
        await bridge.send({"event": "clear", "streamSid": sid})
        await caller.wait_for(lambda c: c.marks_echoed == ["empty", "a", "b"])
        assert caller.clears == [0.25]
        assert caller.heard() == b"\x01" * 1600 + b"\x02" * 400
        assert caller.media_bytes_received == 2400
        await bridge.wait(lambda r: len([m for m in r if m["event"] == "mark"]) == 3)
    echoes = bridge.of("mark")
    assert [m["mark"]["name"] for m in echoes] == ["empty", "a", "b"]
    assert [m["sequenceNumber"] for m in echoes] == ["2", "3", "4"]


async def test_real_time_playback_echoes_a_mark_only_after_its_audio_played(bridge: FakeBridge) -> None:
    async with TwilioCaller(bridge.base, speed=10.0, continuous=False) as caller:
        sid = caller.stream_sid
        await bridge.send(media(sid, b"\x05" * 4000))  # 0.5 s of timeline: 50 ms of real time at speed 10
        await bridge.send(mark(sid, "end"))
        await bridge.wait(lambda r: any(m["event"] == "mark" for m in r))
        assert caller.heard() == b"\x05" * 4000 and caller.heard_seconds == 0.5
        start = caller.events[0].t
        timeline = caller.heard_timeline()
        assert len(timeline) == round(start * 8000) * 2 + 8000


async def test_speed_inf_plays_instantly_and_records_a_stereo_wav(bridge: FakeBridge, tmp_path: Path) -> None:
    async with TwilioCaller(bridge.base, speed=math.inf) as caller:
        await caller.silence(0.1)
        await bridge.wait(lambda r: len(r) == 7)
        await bridge.send(media(caller.stream_sid, ulaw_encode(b"\x00\x10" * 1600)))
        await bridge.send(mark(caller.stream_sid, "m"))
        await caller.wait_for(lambda c: c.marks_echoed == ["m"])
        await caller.wait_heard(0.2, timeout=1)
        assert caller.heard_pcm() == ulaw_encode_decode(b"\x00\x10" * 1600)
        caller.write_wav(tmp_path / "call.wav")
    with wave.open(str(tmp_path / "call.wav")) as wav:
        assert (wav.getnchannels(), wav.getframerate(), wav.getnframes()) == (2, 8000, 800 + 1600)


def ulaw_encode_decode(pcm: bytes) -> bytes:
    return ulaw_decode(ulaw_encode(pcm))


async def test_continuous_streaming_paces_frames_and_say_takes_over(bridge: FakeBridge) -> None:
    async with TwilioCaller(bridge.base, speed=4.0) as caller:
        await bridge.wait(lambda r: len(r) >= 5)  # connected, start, three silence frames
        await caller.say(b"\x00\x20" * 320)
    await bridge.gone.wait()
    assert caller.started_at is not None
    # Paced: frame k (20 ms of audio) leaves once its audio is spoken, k * 5 ms of real time at speed 4.
    timed = zip(bridge.arrivals, bridge.received, strict=True)
    arrivals = [t - caller.started_at for t, m in timed if m["event"] == "media"]
    assert all(t >= (k + 1) * 0.005 for k, t in enumerate(arrivals)) and len(arrivals) >= 5
    frames = bridge.of("media")
    assert [m["media"]["chunk"] for m in frames] == [str(i) for i in range(1, len(frames) + 1)]
    assert [m["media"]["timestamp"] for m in frames] == [str(20 * i) for i in range(len(frames))]
    spoken = [i for i, m in enumerate(frames) if base64.b64decode(m["media"]["payload"]) != b"\xff" * 160]
    assert len(spoken) == 2 and spoken[1] == spoken[0] + 1 and spoken[0] >= 3
    assert bridge.of("stop")[0]["sequenceNumber"] == str(len(frames) + 2)


async def test_server_close_is_seen_and_drop_sends_no_stop(bridge: FakeBridge) -> None:
    caller = TwilioCaller(bridge.base, speed=math.inf)
    await caller.dial()
    await bridge.connected.wait()
    assert bridge.ws is not None
    await bridge.ws.close(code=4000)
    await caller.closed(timeout=5)
    assert (caller.closed_by_server, caller.close_code, caller.up) == (True, 4000, False)
    await caller.hangup()  # nothing left to stop
    assert bridge.of("stop") == []

    bridge.gone.clear()
    dropped = TwilioCaller(bridge.base, speed=math.inf)
    await dropped.dial()
    await dropped.drop()
    await bridge.gone.wait()
    assert bridge.end == "lost" and bridge.of("stop") == []


async def test_malformed_frames_from_the_bridge_are_recorded_not_played(bridge: FakeBridge) -> None:
    async with TwilioCaller(bridge.base, speed=math.inf) as caller:
        assert bridge.ws is not None
        await bridge.ws.send_str("not json")
        await bridge.send(media("MZwrong", b"\x01"))
        await bridge.send({"event": "media", "streamSid": caller.stream_sid, "media": {}})
        await caller.send_raw('{"event": "bogus"}')
        await caller.wait_for(lambda c: len(c.protocol_errors) == 3)
        assert caller.heard() == b"" and caller.media_bytes_received == 0
        await bridge.wait(lambda r: r[-1] == {"event": "bogus"})


async def test_say_wav_reads_any_rate_and_channel_count(bridge: FakeBridge, tmp_path: Path) -> None:
    from phonebridge.testing.wav import read_wav, write_stereo_wav

    tone = b"".join(int(8000 * ((i // 8) % 2 * 2 - 1)).to_bytes(2, "little", signed=True) for i in range(1600))
    write_stereo_wav(tmp_path / "in.wav", tone, tone, rate=16000)  # 0.1 s at 16 kHz, stereo
    assert len(read_wav(tmp_path / "in.wav", 8000)) == 1600  # 800 samples at 8 kHz, mono
    async with TwilioCaller(bridge.base, speed=math.inf) as caller:
        await caller.say_wav(tmp_path / "in.wav")
    await bridge.gone.wait()
    frames = bridge.of("media")
    assert len(frames) == 5
    assert base64.b64decode(frames[0]["media"]["payload"]) == ulaw_encode(read_wav(tmp_path / "in.wav", 8000)[:320])
