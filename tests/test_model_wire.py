"""The bridge's direct audio message is what the SDK itself would send, compression is declined, and the direct
reader of the model's audio messages gives the same events as the SDK's own receive."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from phonebridge.agent.definition import Agent
from phonebridge.server.app import NO_COMPRESSION
from phonebridge.live.link import AUDIO_MIME, LiveLink, audio_message
from phonebridge.live.events import (
    AudioOut, GenerationComplete, InputText, Interrupted, OutputText, ResumptionUpdate, TurnComplete, translate,
)
from phonebridge.live.events import GoAway as GoAwayEvent
from phonebridge.errors import ModelProtocolError
from phonebridge.live.wire import SessionReader, audio_events, plain_events, reader_for, sdk_message, wire_events
from phonebridge.testing.live_emulator import LiveEmulator
from phonebridge.testing.live_script import (
    CallTools, GoAway, Hear, Say, Script, ToolCallSpec, Usage, WaitForText,
)


def test_audio_message_literal():
    assert audio_message(b"\x00\xff\xfe\x01" * 3) == (
        '{"realtime_input": {"audio": {"data": "AP_-AQD__gEA__4B", "mime_type": "audio/pcm;rate=16000"}}}'
    )


async def test_direct_audio_equals_the_sdks_own_message_on_the_wire():
    pcm = bytes(range(256)) * 5  # every byte value: '-' and '_' of the URL-safe alphabet appear
    async with LiveEmulator(Script([WaitForText(timeout_s=5)]), speed=math.inf) as emu:
        options = emu.http_options()
        options.async_client_args = {**(options.async_client_args or {}), **NO_COMPRESSION}
        client = genai.Client(api_key="test", http_options=options)
        async with client.aio.live.connect(model="gemini-3.1-flash-live-preview",
                                           config=types.LiveConnectConfig()) as session:
            await session.send_realtime_input(audio=types.Blob(data=pcm, mime_type=AUDIO_MIME))
            await session._ws.send(audio_message(pcm))
            conn = emu.connections[0]
            await emu.wait_for(lambda: len([r for r in conn.received if r.kind == "audio"]) == 2)
            assert "permessage-deflate" not in session._ws.response.headers.get("Sec-WebSocket-Extensions", "")
    by_sdk, direct = [r.message for r in conn.received if r.kind == "audio"]
    assert by_sdk == direct
    assert conn.audio_in() == pcm + pcm
    assert base64.urlsafe_b64decode(direct["realtimeInput"]["audio"]["data"]) == pcm


# -- the receive side: our reader of the commonest message against the SDK's own parse ------------------


def test_audio_events_take_a_lone_audio_chunk_with_its_transcript_and_nothing_else():
    pcm = bytes(range(256)) * 3
    std, url = base64.b64encode(pcm).decode(), base64.urlsafe_b64encode(pcm).decode()

    def turn(*parts: dict, **extra: object) -> dict:
        return {"serverContent": {"modelTurn": {"parts": list(parts)}, **extra}}

    def audio(data: str, mime: str = "audio/pcm;rate=24000") -> dict:
        return {"inlineData": {"mimeType": mime, "data": data}}

    assert audio_events(turn(audio(std))) == [AudioOut(pcm)]
    assert audio_events(turn(audio(url))) == [AudioOut(pcm)]  # either alphabet, as pydantic accepts both
    assert audio_events(turn(audio(std), audio(std))) == [AudioOut(pcm), AudioOut(pcm)]  # one per part
    assert audio_events(turn(audio(std), outputTranscription={"text": "hi "})) == [AudioOut(pcm), OutputText("hi ")]
    assert audio_events(turn(audio(std), outputTranscription={"text": ""})) == [AudioOut(pcm)]
    # Anything else rides with the audio, or is not audio: the SDK's path.
    assert audio_events(turn(audio(std), interrupted=True)) is None
    assert audio_events(turn(audio(std), inputTranscription={"text": "hi"})) is None
    assert audio_events(turn(audio(std), outputTranscription={"text": 3})) is None
    assert audio_events({**turn(audio(std)), "usageMetadata": {"totalTokenCount": 3}}) is None
    assert audio_events(turn(audio(std, "image/png"))) is None
    assert audio_events(turn({"text": "hello"})) is None
    assert audio_events(turn({"inlineData": {"data": std}, "thought": True})) is None
    assert audio_events(turn(audio("not base64!"))) is None
    assert audio_events(turn()) is None
    assert audio_events({"serverContent": {"turnComplete": True}}) is None
    assert audio_events({"goAway": {"timeLeft": "5s"}}) is None


async def test_wire_events_equal_the_sdks_own_receive_for_every_message_the_emulator_sends():
    script = Script([
        WaitForText(timeout_s=5), Usage(prompt_tokens=7, response_tokens=0), Say("Hello there, how can I help?"),
        Hear("a question"), CallTools((ToolCallSpec("lookup", {"q": "x"}, id="fc-1"),), timeout_s=5),
        Say("Here it is."), GoAway(time_left_s=30, close_after=False),
    ])
    config = types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO], output_audio_transcription=types.AudioTranscriptionConfig(),
        input_audio_transcription=types.AudioTranscriptionConfig(),
        session_resumption=types.SessionResumptionConfig(),
    )
    by_sdk: list = []
    async with LiveEmulator(script, speed=math.inf) as emu:
        client = genai.Client(api_key="test", http_options=emu.http_options())
        async with client.aio.live.connect(model="gemini-3.1-flash-live-preview", config=config) as session:
            assert reader_for(session) is not None  # this SDK has what the direct reader needs
            await session.send_realtime_input(text="Greet the caller.")
            while not any(isinstance(e, GoAwayEvent) for events in by_sdk for e in events):
                async for message in session.receive():
                    by_sdk.append(translate(message))
                    if message.tool_call:
                        await session.send_tool_response(function_responses=[
                            types.FunctionResponse(id="fc-1", name="lookup", response={"ok": True})])
                    if message.go_away:
                        break
        sent = [r.message for r in emu.connections[0].sent if r.kind != "setup_complete"]
    sent = sent[: next(i for i, m in enumerate(sent) if "goAway" in m) + 1]  # we stopped reading there
    assert len(sent) == len(by_sdk) > 10
    assert [wire_events(message)[0] for message in sent] == by_sdk
    fast = [message for message in sent if audio_events(message) is not None]
    assert len(fast) >= 10  # the direct path carried the audio
    plain = [message for message in sent if plain_events(message) is not None]
    assert len(plain) >= 3 and not any(audio_events(m) for m in plain)  # and the turns' housekeeping
    kinds = {type(e).__name__ for events in by_sdk for e in events}
    assert {"AudioOut", "OutputText", "InputText", "TurnComplete", "ToolCalls", "Usage", "ResumptionUpdate",
            "GoAway"} <= kinds


def test_a_server_error_message_raises_as_the_sdk_does():
    with pytest.raises(genai_errors.APIError):
        sdk_message({"code": 3, "message": "bad request"})
    with pytest.raises(genai_errors.APIError) as raised:  # no code: a server error, not the SDK's TypeError
        sdk_message({"message": "something broke"})
    assert raised.value.code == 500


async def _link_events(fast_audio: bool) -> list:
    events: list = []
    done = asyncio.Event()

    async def sink(event: object) -> None:
        events.append(event)
        if isinstance(event, TurnComplete):
            done.set()

    script = Script([WaitForText(timeout_s=5), Say("Hello there, how can I help?")])
    async with LiveEmulator(script, speed=math.inf) as emu:
        client = genai.Client(api_key="test", http_options=emu.http_options())
        link = LiveLink(client, Agent(instructions="Test."), [], sink, fast_audio=fast_audio,
                        logger=logging.LoggerAdapter(logging.getLogger("test"), {}))
        runner = asyncio.create_task(link.run())
        await asyncio.wait_for(link.ready.wait(), 10)
        await link.send_text("Greet the caller.")
        await asyncio.wait_for(done.wait(), 10)
        await link.close()
        await asyncio.wait_for(runner, 10)
    return events


async def test_live_link_hears_the_same_events_through_the_direct_reader_and_the_sdks_receive():
    direct, through_sdk = await _link_events(True), await _link_events(False)
    assert direct == through_sdk
    assert sum(isinstance(e, AudioOut) for e in direct) > 10


# -- hostile and odd messages: the fast path takes only what the SDK reads the same way ------------------

PCM = bytes(range(256)) * 2
STD, URL = base64.b64encode(PCM).decode(), base64.urlsafe_b64encode(PCM).decode()

odd_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.integers(1, 4000).map(lambda n: 10**n)
    | st.floats(allow_nan=False) | st.text(max_size=10) | st.sampled_from(["7" * 5000, STD, URL, "audio/pcm"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
field_names = st.sampled_from([
    "serverContent", "modelTurn", "parts", "role", "inlineData", "data", "mimeType", "text", "finished",
    "outputTranscription", "inputTranscription", "interrupted", "turnComplete", "usageMetadata", "thought",
    "displayName", "someFutureField",
]) | st.text(min_size=1, max_size=8)


def _deep(depth: int) -> object:
    value: object = 0
    for _ in range(depth):
        value = {"a": value}
    return value


@st.composite
def audio_messages(draw: st.DrawFn) -> dict:
    """The model's audio message, with up to three fields added or replaced anywhere (extra fields, other types,
    both base64 alphabets at once, missing padding, deep nesting, huge numbers)."""
    parts = [{"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": draw(st.sampled_from(
        [STD, URL, STD[:100] + URL[100:], STD.rstrip("="), " " + STD]))}} for _ in range(draw(st.integers(1, 3)))]
    content: dict = {"modelTurn": {"parts": parts, **({"role": "model"} if draw(st.booleans()) else {})}}
    if draw(st.booleans()):
        content["outputTranscription"] = {"text": draw(st.text(max_size=5)), "finished": draw(st.booleans())}
    message = {"serverContent": content}
    for _ in range(draw(st.integers(0, 3))):
        dicts = [message]
        for item in dicts:
            dicts.extend(v for value in item.values() for v in (value if isinstance(value, list) else [value])
                         if isinstance(v, dict))
        target = draw(st.sampled_from(dicts))
        value = draw(odd_values | st.integers(10, 700).map(_deep))  # json.dumps must still write it
        target[draw(field_names | st.sampled_from(sorted(target)) if target else field_names)] = value
    return message


def _sdk_events(message: dict) -> object:
    try:
        return translate(sdk_message(message))
    except Exception as exc:  # noqa: BLE001 - the SDK's outcome, compared with ours
        return type(exc)


@given(audio_messages())
@settings(max_examples=200, deadline=None)
def test_the_fast_path_gives_the_sdks_events_or_leaves_the_message_to_the_sdk(message: dict) -> None:
    _holds_to_the_sdk(audio_events(message), message)


def _holds_to_the_sdk(fast: object, message: dict) -> None:
    """A fast path's events (None: it left the message alone) and wire_events' are the SDK's own."""
    if fast is not None:
        assert fast == _sdk_events(message)  # and so the SDK would not have refused it either
    events = _sdk_events(message)
    if isinstance(events, list):
        assert wire_events(message)[0] == events


def test_plain_events_take_transcripts_flags_and_resumption_updates_and_nothing_else():
    def content(**fields: object) -> dict:
        return {"serverContent": fields}

    assert plain_events(content(turnComplete=True)) == [TurnComplete()]
    assert plain_events(content(interrupted=True, turnComplete=True)) == [Interrupted(), TurnComplete()]
    (cut,) = plain_events(content(interrupted=True), received_at=12.5, epoch=3)  # type: ignore[misc]
    assert isinstance(cut, Interrupted) and (cut.received_at, cut.epoch) == (12.5, 3)  # the clear's reaction clock
    assert plain_events(content(inputTranscription={"text": "where is", "finished": True}, generationComplete=True,
                                outputTranscription={"text": "It "})) == [
        InputText("where is", True), OutputText("It "), GenerationComplete()]
    assert plain_events(content(inputTranscription={"text": ""}, turnComplete=False)) == []
    assert plain_events({"sessionResumptionUpdate": {"newHandle": "h-1", "resumable": True,
                                                     "lastConsumedClientMessageIndex": "41"}}) == [
        ResumptionUpdate("h-1", True)]
    assert plain_events({"sessionResumptionUpdate": {"resumable": False}}) == [ResumptionUpdate(None, False)]
    assert plain_events({"sessionResumptionUpdate": {"resumable": True}}) == [ResumptionUpdate(None, False)]
    for odd in (
        content(turnComplete="true"), content(interrupted=1), content(inputTranscription={"text": 3}),
        content(outputTranscription={"text": "a", "finished": "no"}), content(inputTranscription="hi"),
        content(turnComplete=True, usageMetadata={}), content(modelTurn={"parts": []}),
        content(turnCompleteReason="GENERATION_COMPLETE"), {**content(turnComplete=True), "usageMetadata": {}},
        {"sessionResumptionUpdate": {"newHandle": 5}}, {"sessionResumptionUpdate": {"resumable": "yes"}},
        {"sessionResumptionUpdate": {"lastConsumedClientMessageIndex": "-1"}},
        {"sessionResumptionUpdate": {"lastConsumedClientMessageIndex": "\u00b2"}},
        {"sessionResumptionUpdate": {"newHandle": "h", "extra": 1}}, {"sessionResumptionUpdate": None},
        {"setupComplete": {}}, {"goAway": {"timeLeft": "5s"}}, {"serverContent": None},
    ):
        assert plain_events(odd) is None, odd


@st.composite
def plain_messages(draw: st.DrawFn) -> dict:
    """A transcript, flag or resumption message, with up to three fields added or replaced anywhere."""
    if draw(st.booleans()):
        update = {"newHandle": draw(st.sampled_from(["h-1", "", None])), "resumable": draw(st.booleans()),
                  "lastConsumedClientMessageIndex": draw(st.sampled_from(["0", "41", "9" * 30, None]))}
        message: dict = {"sessionResumptionUpdate": {k: v for k, v in update.items() if v is not None}}
    else:
        content: dict = {}
        for flag in ("interrupted", "generationComplete", "turnComplete"):
            if draw(st.booleans()):
                content[flag] = draw(st.booleans())
        for name in ("inputTranscription", "outputTranscription"):
            if draw(st.booleans()):
                content[name] = {"text": draw(st.text(max_size=5)), "finished": draw(st.booleans())}
        message = {"serverContent": content}
    for _ in range(draw(st.integers(0, 3))):
        dicts = [message]
        for item in dicts:
            dicts.extend(v for v in item.values() if isinstance(v, dict))
        target = draw(st.sampled_from(dicts))
        names = field_names | st.sampled_from(["newHandle", "resumable", "lastConsumedClientMessageIndex",
                                                "generationComplete", "sessionResumptionUpdate"])
        target[draw(names | st.sampled_from(sorted(target)) if target else names)] = draw(odd_values)
    return message


@given(plain_messages())
@settings(max_examples=300, deadline=None)
def test_the_plain_path_gives_the_sdks_events_or_leaves_the_message_to_the_sdk(message: dict) -> None:
    _holds_to_the_sdk(plain_events(message), message)


def test_extra_or_mistyped_fields_leave_the_fast_path_for_the_sdks():
    def audio(**extra: object) -> dict:
        return {"serverContent": {"modelTurn": {"parts": [{"inlineData": {"data": STD}}], **extra}}}

    mixed = {"serverContent": {"modelTurn": {"parts": [{"inlineData": {"data": STD[:100] + URL[100:]}}]}}}
    odd_finished = {"serverContent": {**audio()["serverContent"], "outputTranscription": {"text": "a", "finished": [1]}}}
    for message in (audio(role=5), audio(role="model", extra=1), mixed, odd_finished):
        assert audio_events(message) is None
    assert wire_events(audio(role="model", extra=1))[0] == [AudioOut(PCM)]  # what the SDK makes of it


class FakeSocket:
    """The far end of the model's socket, as far as SessionReader reads it: frames handed over in order."""

    def __init__(self, *frames: bytes) -> None:
        self.frames = list(frames)

    async def recv(self, decode: bool = False) -> bytes:
        return self.frames.pop(0)


HOSTILE_MODEL_FRAMES = {
    "open_brackets": (b"[" * 10_000, "too_deep"),
    "objects_5000_deep": (b'{"a":' * 5_000 + b"1" + b"}" * 5_000, "too_deep"),
    "deep_inside_audio": (b'{"x":' + b"[" * 3000 + b"]" * 3000 + b',"serverContent":{"modelTurn":{"parts":'
                          + json.dumps([{"inlineData": {"data": STD}}]).encode() + b"}}}", "too_deep"),
    "number_5000_digits": (b'{"usageMetadata":{"totalTokenCount":' + b"1" * 5000 + b"}}", "not_json"),
    "not_utf8": (b'{"serverContent":"\xff\xfe"}', "not_json"),
    "truncated": (b'{"serverContent":{"modelTurn":', "not_json"),
    "array": (b"[1, 2]", "not_object"),
    "string": (b'"hello"', "not_object"),
    "wrong_types": (b'{"serverContent":{"modelTurn":"x"}}', "bad_message"),
    "deep_args_the_sdk_refuses": (b'{"toolCall":{"functionCalls":"x"}}', "bad_message"),
    "huge_integer_in_usage": (b'{"usageMetadata":{"totalTokenCount":' + b"9" * 4000 + b"}}", None),
}


@pytest.mark.parametrize(("frame", "reason"), HOSTILE_MODEL_FRAMES.values(), ids=HOSTILE_MODEL_FRAMES.keys())
async def test_the_direct_reader_turns_every_frame_into_events_or_a_tagged_model_protocol_error(frame, reason):
    reader = SessionReader(FakeSocket(frame))
    if reason is None:  # the SDK reads it: so does the reader, with the same events
        events, _ = await reader.next()
        assert events == _sdk_events(json.loads(frame))
        return
    with pytest.raises(ModelProtocolError) as raised:
        await reader.next(want_message=True)
    assert raised.value.reason == reason
    assert len(str(raised.value)) < 400  # one log line, not the frame


@given(st.binary(max_size=200) | odd_values.map(lambda v: json.dumps(v).encode())
       | audio_messages().map(lambda m: json.dumps(m).encode())
       | st.integers(500, 6000).map(lambda n: b"[" * n) | st.integers(4300, 6000).map(lambda n: b"1" * n))
@settings(max_examples=300, deadline=None)
def test_the_direct_reader_raises_nothing_but_its_own_errors(frame: bytes) -> None:
    try:
        events, message = asyncio.run(SessionReader(FakeSocket(frame)).next(want_message=True))
    except (ModelProtocolError, genai_errors.APIError):
        return
    assert isinstance(events, list) and isinstance(message, types.LiveServerMessage)


async def test_audio_with_extra_fields_reaches_the_call_as_the_sdk_would_give_it():
    """The emulator sends audio messages the fast path must not take; the link hears the same either way."""
    part = {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": STD}}
    odd = [{"serverContent": {"modelTurn": {"parts": [part], "role": "model", "futureField": 1}}},
           {"serverContent": {"modelTurn": {"parts": [{"inlineData": {"data": STD}}]},
                              "outputTranscription": {"text": "hi"}, "turnComplete": True}}]
    heard = []
    for fast in (True, False):
        events: list = []
        done = asyncio.Event()

        async def sink(event: object, events: list = events, done: asyncio.Event = done) -> None:
            events.append(event)
            if isinstance(event, TurnComplete):
                done.set()

        async with LiveEmulator(Script([WaitForText(timeout_s=5)]), speed=math.inf) as emu:
            client = genai.Client(api_key="test", http_options=emu.http_options())
            link = LiveLink(client, Agent(instructions="Test."), [], sink, fast_audio=fast,
                            logger=logging.LoggerAdapter(logging.getLogger("test"), {}))
            runner = asyncio.create_task(link.run())
            await asyncio.wait_for(link.ready.wait(), 10)
            for message in odd:
                await emu.connections[0].send_raw(message)
            await asyncio.wait_for(done.wait(), 10)
            await link.close()
            await asyncio.wait_for(runner, 10)
        heard.append(events)
    assert heard[0] == heard[1]
    assert [e for e in heard[0] if isinstance(e, (AudioOut, OutputText, TurnComplete))] == [
        AudioOut(PCM), AudioOut(PCM), OutputText("hi"), TurnComplete()]
