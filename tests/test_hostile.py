"""Hostile and broken input, on both sides of the bridge (docs/robustness.md lists each outcome).

Twilio side: hypothesis over the pure parser (any text, any JSON, mutated real frames: an event or a
TwilioProtocolError, nothing else), then over the live WebSocket, where every frame's outcome (counted as
malformed, counted as ignored, processed, or the end of the call) is predicted by a small reference model
of the documented rules and compared with the bridge's own counts. Model side: odd-but-parsable Live
messages from the LiveEmulator end in a reconnection or a clean end, never a stuck call.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

import phonebridge.twilio.protocol as twilio
from phonebridge.agent.definition import Agent
from phonebridge.server.app import MAX_FRAME_BYTES
from phonebridge.errors import TwilioProtocolError
from phonebridge.testing.harness import ACCOUNT_SID, AUTH_TOKEN, PUBLIC_URL, BridgeHarness
from phonebridge.testing.live_script import (
    Hear,
    Say,
    Script,
    WaitForCaller,
    WaitForText,
)

OWN_SID = "MZ" + "a" * 32
OTHER_SID = "MZ" + "b" * 32
ACCOUNT = ACCOUNT_SID  # the harness's account: a start naming another is refused
CALL_SID = "CA" + "c" * 32
TOKEN_PARAMETER = "phonebridgeStreamToken"


def stream_token(call_sid: str, account_sid: str = ACCOUNT) -> str:
    """The token the voice webhook issues for this call (computed independently of phonebridge)."""
    message = f"phonebridge-stream-v1\0{account_sid}\0{call_sid}".encode()
    return hmac.new(AUTH_TOKEN.encode(), message, hashlib.sha256).hexdigest()


def legitimate(start: twilio.Start) -> bool:
    """A start the bridge accepts: our account, and the token issued for its own callSid."""
    token = start.custom_parameters.get(TOKEN_PARAMETER)
    return start.account_sid == ACCOUNT and token == stream_token(start.call_sid, start.account_sid)


def as_call(frame: str | bytes, call_sid: str) -> str | bytes:
    """A frame of the fixed test call rewritten for ``call_sid`` (its token too)."""
    if isinstance(frame, bytes):
        return frame
    return frame.replace(stream_token(CALL_SID), stream_token(call_sid)).replace(CALL_SID, call_sid)


def make_agent() -> Agent:
    return Agent(instructions="You are a test agent.", greeting="Greet the caller.")


# -- literal Twilio frames ------------------------------------------------------------------------------


def start_frame(sid: str = OWN_SID, seq: int = 1) -> dict[str, Any]:
    return {"event": "start", "sequenceNumber": str(seq), "streamSid": sid,
            "start": {"streamSid": sid, "accountSid": ACCOUNT, "callSid": CALL_SID, "tracks": ["inbound"],
                      "customParameters": {"CallSid": CALL_SID, TOKEN_PARAMETER: stream_token(CALL_SID)},
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}


def media_frame(sid: str = OWN_SID, seq: int = 2, payload: bytes = b"\xff" * 160) -> dict[str, Any]:
    return {"event": "media", "sequenceNumber": str(seq), "streamSid": sid,
            "media": {"track": "inbound", "chunk": str(seq), "timestamp": str(20 * seq),
                      "payload": base64.b64encode(payload).decode()}}


def dtmf_frame(sid: str = OWN_SID, seq: int = 3) -> dict[str, Any]:
    return {"event": "dtmf", "sequenceNumber": str(seq), "streamSid": sid,
            "dtmf": {"track": "inbound_track", "digit": "5"}}


def mark_frame(sid: str = OWN_SID, seq: int = 4) -> dict[str, Any]:
    return {"event": "mark", "sequenceNumber": str(seq), "streamSid": sid, "mark": {"name": "not-ours"}}


def stop_frame(sid: str = OWN_SID, seq: int = 5) -> dict[str, Any]:
    return {"event": "stop", "sequenceNumber": str(seq), "streamSid": sid,
            "stop": {"accountSid": ACCOUNT, "callSid": CALL_SID}}


CONNECTED = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
FRAME_MAKERS = {"start": start_frame, "media": media_frame, "dtmf": dtmf_frame, "mark": mark_frame, "stop": stop_frame}

# -- strategies -----------------------------------------------------------------------------------------

# Integers and digit strings around every bound the parser has (int64, its 19-digit strings) and far past it.
huge_integers = st.one_of(
    st.integers(-(2**70), 2**70), st.integers(2**63 - 2, 2**63 + 2), st.integers(10**18, 10**400),
    st.integers(1, 4000).map(lambda n: 10**n),  # json.dumps writes up to int()'s 4300-digit limit
)
digit_strings = st.text(alphabet="0123456789", min_size=15, max_size=25) | st.integers(20, 6000).map(lambda n: "7" * n)

json_values = st.recursive(
    st.none() | st.booleans() | huge_integers | st.floats(allow_nan=False) | st.text(max_size=20) | digit_strings,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def hostile_fragments(draw: st.DrawFn) -> str:
    """JSON text that json.dumps cannot produce from a value: nesting past the recursion limit (closed or not),
    and numbers past int()'s digit limit. Each one once escaped the parser as RecursionError or ValueError."""
    kind = draw(st.sampled_from(["array", "object", "mixed", "number", "negative", "fraction"]))
    if kind in ("number", "negative", "fraction"):
        digits = "1" * draw(st.integers(4_000, 20_000))
        return {"number": digits, "negative": "-" + digits, "fraction": "1." + digits}[kind]
    depth = draw(st.integers(500, 12_000))
    opener = {"array": "[", "object": '{"a":', "mixed": '[{"a":'}[kind]
    closer = {"array": "]", "object": "}", "mixed": "}]"}[kind]
    return opener * depth + ("0" + closer * depth if draw(st.booleans()) else "")


_SLOT = "\x00hostile\x00"


@st.composite
def frames_with_hostile_fields(draw: st.DrawFn) -> str:
    """A real frame with one field (at any depth) replaced by a hostile fragment, as text."""
    frame = FRAME_MAKERS[draw(st.sampled_from(sorted(FRAME_MAKERS)))]()
    path = draw(st.sampled_from(_paths(frame)))
    parent = frame
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = _SLOT
    return json.dumps(frame).replace(json.dumps(_SLOT), draw(hostile_fragments()))


def _paths(obj: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for key, value in obj.items():
        out.append((*prefix, key))
        if isinstance(value, dict):
            out.extend(_paths(value, (*prefix, key)))
    return out


@st.composite
def mutated_frames(draw: st.DrawFn) -> dict[str, Any]:
    """A real frame (own or another stream) with up to two fields deleted or replaced by any JSON value."""
    kind = draw(st.sampled_from(sorted(FRAME_MAKERS)))
    frame = FRAME_MAKERS[kind](draw(st.sampled_from([OWN_SID, OTHER_SID])))
    for _ in range(draw(st.integers(0, 2))):
        path = draw(st.sampled_from(_paths(frame)))
        parent = frame
        for key in path[:-1]:
            parent = parent[key]
        if not isinstance(parent, dict) or path[-1] not in parent:
            continue
        if draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values)
    return frame


texts = st.text(max_size=200) | st.binary(max_size=100).map(lambda b: b.decode("latin-1"))
any_json_text = json_values.map(json.dumps)
hostile_texts = hostile_fragments() | frames_with_hostile_fields()
frame_texts = st.one_of(texts, any_json_text, mutated_frames().map(json.dumps), hostile_texts, st.sampled_from(
    [json.dumps(CONNECTED), json.dumps(start_frame()), json.dumps(media_frame()), json.dumps(stop_frame()),
     json.dumps({"event": "future-event", "streamSid": OWN_SID})]
))

# -- the pure parser ------------------------------------------------------------------------------------

REASONS = {"too_large", "not_json", "too_deep", "not_object", "missing_field", "bad_type", "bad_value",
           "bad_base64", "unsupported_format"}
INTEGER_FIELDS = ("sequence_number", "chunk", "timestamp", "sample_rate", "channels")


@given(st.one_of(texts, any_json_text, mutated_frames().map(json.dumps), hostile_texts))
@settings(max_examples=400, deadline=None)
def test_parser_returns_an_event_or_a_tagged_protocol_error_for_any_input(text: str) -> None:
    try:
        event = twilio.parse_event(text)
    except TwilioProtocolError as exc:
        assert exc.reason in REASONS
        assert len(str(exc)) < 300  # one readable log line, whatever the input's size
        return
    assert isinstance(event, (twilio.Connected, twilio.Start, twilio.Media, twilio.Dtmf, twilio.Mark,
                              twilio.Stop, twilio.Unknown))
    for name in INTEGER_FIELDS:  # counters fit in int64, however large the number on the wire
        assert 0 <= getattr(event, name, 0) < 2**63
    if isinstance(event, twilio.Media):
        assert len(event.payload) <= twilio.MAX_MEDIA_PAYLOAD_BYTES


@given(st.binary(max_size=300))
@settings(max_examples=200, deadline=None)
def test_parser_takes_raw_bytes_without_crashing(data: bytes) -> None:
    try:
        twilio.parse_event(data)
    except TwilioProtocolError as exc:
        assert exc.reason in REASONS


@given(mutated_frames())
@settings(max_examples=300, deadline=None)
def test_a_mutated_frame_that_parses_keeps_its_declared_kind(frame: dict[str, Any]) -> None:
    try:
        event = twilio.parse_event(json.dumps(frame))
    except TwilioProtocolError:
        return
    kinds = {"start": twilio.Start, "media": twilio.Media, "dtmf": twilio.Dtmf, "mark": twilio.Mark,
             "stop": twilio.Stop, "connected": twilio.Connected}
    assert isinstance(event, kinds.get(frame["event"], twilio.Unknown))


def test_parser_size_limit_is_exact() -> None:
    body = json.dumps(media_frame())
    padded = body[:-1] + "," + '"pad":"' + "x" * (twilio.DEFAULT_MAX_MESSAGE_BYTES - len(body) - 9) + '"}'
    assert len(padded) == twilio.DEFAULT_MAX_MESSAGE_BYTES
    assert isinstance(twilio.parse_event(padded), twilio.Media)
    with pytest.raises(TwilioProtocolError) as too_large:
        twilio.parse_event(padded + " ")
    assert too_large.value.reason == "too_large"


# -- the reference model of the bridge's documented rules -----------------------------------------------


@dataclass
class Expected:
    malformed: int = 0
    ignored: int = 0
    frames_in: int = 0
    started_sid: str | None = None
    stopped: bool = False
    refused: bool = False  # the first start did not prove its call: the socket is closed (1008)
    read: int = 0  # frames the bridge reads: none after our stop

    def feed(self, frame: str | bytes) -> None:
        if self.stopped:
            return
        self.read += 1
        if isinstance(frame, bytes):
            self.malformed += 1
            return
        try:
            event = twilio.parse_event(frame)
        except TwilioProtocolError:
            self.malformed += 1
            return
        if isinstance(event, twilio.Start):
            if self.started_sid is None and not legitimate(event):
                self.refused = self.stopped = True
            elif self.started_sid is None:
                self.started_sid = event.stream_sid
            else:
                self.ignored += 1
        elif isinstance(event, twilio.Unknown):
            self.ignored += 1
        elif isinstance(event, (twilio.Media, twilio.Dtmf, twilio.Mark, twilio.Stop)):
            if self.started_sid is None or event.stream_sid != self.started_sid:
                self.ignored += 1
            elif isinstance(event, twilio.Stop):
                self.stopped = True
            elif isinstance(event, twilio.Media):
                self.frames_in += 1


def media_socket_headers() -> dict[str, str]:
    signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_URL.replace("https", "wss") + "/twilio/media", {})
    return {"X-Twilio-Signature": signature}


@dataclass
class RawLeg:
    """A signed media WebSocket we write anything to; everything the bridge sends is kept."""

    ws: aiohttp.ClientWebSocketResponse
    received: list[aiohttp.WSMessage] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def read(self) -> None:
        try:
            async for message in self.ws:
                self.received.append(message)
                self.changed.set()
        finally:
            self.changed.set()

    def media_count(self) -> int:
        return sum(1 for m in self.received if m.type == aiohttp.WSMsgType.TEXT and '"media"' in m.data)

    async def wait_for_media(self, timeout: float = 10.0) -> None:
        """Until the bridge sends agent audio (or closes the socket)."""
        async with asyncio.timeout(timeout):
            while not self.media_count() and not self.ws.closed:
                self.changed.clear()
                await self.changed.wait()

    async def send(self, frame: str | bytes) -> bool:
        if self.ws.closed:
            return False
        try:
            if isinstance(frame, bytes):
                await self.ws.send_bytes(frame)
            else:
                await self.ws.send_str(frame)
        except (ConnectionResetError, RuntimeError):
            return False
        return True


async def open_raw_leg(session: aiohttp.ClientSession, h: BridgeHarness) -> RawLeg:
    ws = await session.ws_connect(h.server_url + "/twilio/media", headers=media_socket_headers(),
                                  max_msg_size=0)
    leg = RawLeg(ws)
    leg.reader = asyncio.create_task(leg.read())
    return leg


@pytest.fixture
async def bridge() -> AsyncIterator[BridgeHarness]:
    async with BridgeHarness(make_agent(), Script([WaitForText(), Say("Hello.", seconds=0.2)])) as h:
        yield h


frames_or_binary = st.one_of(frame_texts, frame_texts, frame_texts, st.binary(min_size=1, max_size=50))


@given(prefix=st.sampled_from(["none", "connected", "connected+start"]),
       frames=st.lists(frames_or_binary, max_size=12))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
async def test_any_sequence_of_frames_on_the_live_socket_has_its_documented_outcome(
    bridge: BridgeHarness, prefix: str, frames: list[str | bytes]
) -> None:
    h = bridge
    sequence: list[str | bytes] = []
    if prefix != "none":
        sequence.append(json.dumps(CONNECTED))
    if prefix == "connected+start":
        sequence.append(json.dumps(start_frame()))
    # Each example is its own call: the bridge streams a callSid once (a replayed start is refused).
    call_sid = "CA" + secrets.token_hex(16)
    sequence = [as_call(frame, call_sid) for frame in [*sequence, *frames]]
    expected = Expected()
    for frame in sequence:
        expected.feed(frame)
    finished_before = len(h.runtime.finished)
    async with aiohttp.ClientSession() as session:
        leg = await open_raw_leg(session, h)
        for frame in sequence:
            if not await leg.send(frame):
                break
        if expected.started_sid is not None and not expected.stopped:
            # The call survived whatever came after `start`: the agent's greeting still reaches us.
            await leg.wait_for_media()
            assert leg.media_count() > 0
        await leg.ws.close()
        assert leg.reader is not None
        await leg.reader
    await h.wait_idle()
    assert len(h.runtime.finished) == finished_before + 1
    stats = h.runtime.finished[-1]
    assert (stats.malformed, stats.ignored, stats.frames_in) == (expected.malformed, expected.ignored, expected.frames_in)
    assert stats.outcome == ("stream_refused" if expected.refused else "caller_hung_up")
    # Nothing may be sent before `start`, and only ever for the stream it named.
    sids = {json.loads(m.data).get("streamSid") for m in leg.received if m.type == aiohttp.WSMsgType.TEXT}
    assert sids <= ({expected.started_sid} if expected.started_sid else set())
    # Every model session the call opened is closed again: no stuck call on either side.
    await h.emulator.wait_for(lambda: not any(c.open for c in h.emulator.connections))
    async with aiohttp.ClientSession() as session, session.get(h.server_url + "/healthz") as health:
        assert health.status == 200


# -- explicit cases, with a bystander call that must not notice -----------------------------------------

GREETING = "Hello, thanks for calling."
ANSWER = "We close at ten."


def qa_script() -> Script:
    return Script([WaitForText(), Say(GREETING), WaitForCaller(), Hear("When do you close?"), Say(ANSWER)])


async def bystander_turn(h: BridgeHarness, caller: Any) -> None:
    """The bystander asks its question and hears the whole answer, bit-exact (its connection is the first)."""
    from tests.bridge_helpers import agent_audio_as_heard

    await caller.say("When do you close tonight?")
    await caller.silence(0.6)
    conv = h.emulator.connections[0].conversation
    await h.emulator.wait_for(lambda: conv.turns_spoken == 2, timeout=20)
    conn = h.emulator.connections[0]
    await caller.wait_for(lambda c: c.heard() == agent_audio_as_heard(conn), timeout=20)
    assert caller.clears == [] and caller.protocol_errors == []


async def test_literal_sequence_media_before_start_duplicate_start_wrong_sid_frames_after_stop(caplog) -> None:
    caplog.set_level(logging.WARNING, "phonebridge")
    sequence = [media_frame(seq=1), CONNECTED, start_frame(seq=1), start_frame(seq=2), media_frame(OTHER_SID, 3),
                dtmf_frame(OTHER_SID, 4), {"event": "future-event", "streamSid": OWN_SID}, media_frame(seq=5),
                stop_frame(seq=6), media_frame(seq=7), stop_frame(seq=8)]
    async with BridgeHarness(make_agent(), Script([WaitForText(), Say("Hello.", seconds=0.2)])) as h:
        async with aiohttp.ClientSession() as session:
            leg = await open_raw_leg(session, h)
            for frame in sequence:
                await leg.send(json.dumps(frame))
            assert leg.reader is not None
            await leg.reader  # the bridge closes the socket after our stop: the frames after it are never read
            assert leg.ws.close_code == 1000
        await h.wait_idle()
    stats = h.runtime.finished[-1]
    assert (stats.malformed, stats.ignored, stats.frames_in, stats.outcome) == (0, 5, 1, "caller_hung_up")
    warnings = [r.getMessage() for r in caplog.records if "Twilio frame ignored" in r.getMessage()]
    assert warnings == [
        "Twilio frame ignored: media before start (#1)",
        "Twilio frame ignored: duplicate start (#2)",
        f"Twilio frame ignored: media for another stream {OTHER_SID!r} (#3)",
        f"Twilio frame ignored: dtmf for another stream {OTHER_SID!r} (#4)",
        "Twilio frame ignored: unknown event 'future-event' (#5)",
    ]


async def test_huge_messages_one_dropped_by_the_parser_one_closing_the_socket_and_the_bystander_never_notices():
    async with BridgeHarness(make_agent(), qa_script()) as h:
        async with h.caller(continuous=False) as bystander:
            await bystander.wait_heard(0.5)
            async with h.caller(continuous=False) as hostile:
                await hostile.wait_heard(0.5)
                under_socket_limit = json.dumps({"event": "media", "pad": "x" * (100 * 1024)})
                await hostile.send_raw(under_socket_limit)  # over the parser's 64 KiB: dropped, call goes on
                await hostile.press("7")
                await h.emulator.wait_for(lambda: "The caller pressed 7 on the keypad." in h.emulator.connections[1].texts())
                assert hostile.up
                over_socket_limit = "x" * (MAX_FRAME_BYTES + 1)
                await hostile.send_raw(over_socket_limit)  # over aiohttp's max_msg_size: the socket closes
                await hostile.closed()
                assert hostile.close_code == 1009 and hostile.closed_by_server
            await bystander_turn(h, bystander)
        await h.wait_idle()
    by_sid = {s.call_sid: s for s in h.runtime.finished}
    assert by_sid[hostile.call_sid].malformed == 1 and by_sid[hostile.call_sid].dtmf == ["7"]
    assert by_sid[bystander.call_sid].malformed == 0 and by_sid[bystander.call_sid].outcome == "caller_hung_up"
    assert not any(c.open for c in h.emulator.connections)
    h.emulator.check()


async def test_48_kb_media_frames_are_counted_as_malformed_and_never_reach_the_model():
    async with BridgeHarness(make_agent(), qa_script()) as h:
        async with h.caller(continuous=False) as caller:
            await caller.wait_heard(0.5)
            frames_before = len(h.emulator.connections[0].received)
            big = media_frame(caller.stream_sid, seq=10_000, payload=b"\xff" * 48_000)
            assert len(json.dumps(big)) < twilio.DEFAULT_MAX_MESSAGE_BYTES  # within the message limit
            for _ in range(3):
                await caller.send_raw(big)
            await caller.press("7")  # processed after the three frames: they have been judged by then
            await h.emulator.wait_for(lambda: "The caller pressed 7 on the keypad." in h.emulator.connections[0].texts())
            audio_sent = sum(r.kind == "audio" for r in h.emulator.connections[0].received[frames_before:])
        await h.wait_idle()
    stats = h.runtime.finished[-1]
    assert stats.malformed == 3 and stats.dtmf == ["7"] and stats.outcome == "caller_hung_up"
    assert audio_sent == 0  # not one byte of the oversized frames went to the model


async def test_a_flood_of_garbage_is_counted_logged_sparingly_and_costs_the_bystander_nothing(caplog):
    caplog.set_level(logging.WARNING, "phonebridge")
    flood = 5000
    async with BridgeHarness(make_agent(), qa_script()) as h:
        async with h.caller(continuous=False) as bystander:
            await bystander.wait_heard(0.5)
            async with h.caller(continuous=False) as hostile:
                await hostile.wait_heard(0.5)
                flooding = asyncio.gather(*(hostile.send_raw("{not json") for _ in range(flood)))
                await asyncio.gather(flooding, bystander_turn(h, bystander))
                await hostile.press("1")  # in order after the flood: once the model has it, all were read
                await h.emulator.wait_for(lambda: "The caller pressed 1 on the keypad." in h.emulator.connections[1].texts())
        await h.wait_idle()
    by_sid = {s.call_sid: s for s in h.runtime.finished}
    assert by_sid[hostile.call_sid].malformed == flood
    assert by_sid[bystander.call_sid].malformed == 0
    logged = [r for r in caplog.records if r.getMessage().startswith("malformed frame from Twilio dropped")]
    assert len(logged) == 5 + flood // 100  # the first five, then every hundredth


async def test_a_flood_of_media_as_fast_as_the_socket_takes_it_all_reaches_the_model():
    frames = 3000  # a minute of audio in a burst
    async with BridgeHarness(make_agent(), Script([WaitForText(), Say("Hello.", seconds=0.2), WaitForCaller()])) as h:
        async with h.caller(continuous=False) as caller:
            await caller.wait_heard(0.2)
            await caller.silence(frames * 0.02)
            conv = h.emulator.connections[0].conversation
            # 8 kHz mu-law in, 16 kHz PCM16 out: 640 bytes per 20 ms frame.
            await h.emulator.wait_for(lambda: conv.audio_bytes_in == frames * 640, timeout=20)
        await h.wait_idle()
    stats = h.runtime.finished[-1]
    assert (stats.frames_in, stats.malformed, stats.ignored) == (frames, 0, 0)


async def test_echoed_marks_and_dtmf_are_not_counted_as_lost_frames():
    async with BridgeHarness(make_agent(), Script([WaitForText(), Say("Hello.", seconds=0.2), WaitForCaller()])) as h:
        async with h.caller(continuous=False) as caller:
            await caller.wait_for(lambda c: c.playback_idle and len(c.marks_echoed) > 0)
            await caller.press("3")
            await caller.silence(0.2)
        await h.wait_idle()
    stats = h.runtime.finished[-1]
    assert stats.frames_in == 10
    assert stats.lost_frames == 0


# -- the model side: odd-but-parsable Live messages -----------------------------------------------------

ODD_MODEL_MESSAGES = {
    "unknown_top_level_key": {"someFutureField": {"x": 1}},
    "error_without_code": {"error": {"message": "something odd"}},
    "empty_server_content": {"serverContent": {}},
    "empty_tool_call": {"toolCall": {}},
    "tool_call_without_id": {"toolCall": {"functionCalls": [{"name": "no_such_tool", "args": {}}]}},
    "cancel_of_unknown_ids": {"toolCallCancellation": {"ids": ["nope"]}},
    "go_away_without_time": {"goAway": {}},
    "go_away_unreadable_time": {"goAway": {"timeLeft": "soon"}},
    "resumable_without_handle": {"sessionResumptionUpdate": {"resumable": True}},
    "empty_usage": {"usageMetadata": {}},
    "second_setup_complete": {"setupComplete": {}},
    "odd_length_audio": {"serverContent": {"modelTurn": {"parts": [
        {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": base64.b64encode(b"\x01\x02\x03").decode()}}]}}},
    "text_part_in_audio_session": {"serverContent": {"modelTurn": {"parts": [{"text": "hi"}]}}},
    "stray_turn_complete": {"serverContent": {"turnComplete": True}},
    # Once silenced the whole next turn (cut was set though nothing was playing): fixed in call.py.
    "stray_interrupted": {"serverContent": {"interrupted": True}},
}


@pytest.mark.parametrize("message", ODD_MODEL_MESSAGES.values(), ids=ODD_MODEL_MESSAGES.keys())
async def test_an_odd_model_message_ends_in_reconnection_or_nothing_and_the_call_goes_on(message, caplog):
    from phonebridge.testing.speech import synth_speech

    async with BridgeHarness(make_agent(), qa_script()) as h:
        async with h.caller(continuous=False) as caller:
            await caller.wait_for(lambda c: c.playback_idle and c.heard_seconds > 0.5)
            conv = h.emulator.conversations[0]
            await h.emulator.wait_for(lambda: conv.turns_spoken == 1)
            await h.emulator.connections[0].send_raw(message)
            await caller.say("When do you close tonight?")
            await caller.silence(0.6)
            await h.emulator.wait_for(lambda: conv.turns_spoken == 2, timeout=20)
            spoken = sum(len(synth_speech(text, 24000)) for text in (GREETING, ANSWER)) / 48000
            await caller.wait_for(lambda c: c.playback_idle and c.heard_seconds >= spoken - 0.05, timeout=8)
        await h.wait_idle()
        await h.emulator.wait_for(lambda: not any(c.open for c in h.emulator.connections))
    stats = h.runtime.finished[-1]
    assert stats.outcome == "caller_hung_up"
    assert len(h.emulator.connections) <= 2  # at most one reconnection, and it resumed the same conversation
    assert len(h.emulator.conversations) == 1
