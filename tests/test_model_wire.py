"""The bridge's direct audio message is what the SDK itself would send, compression is declined, and the direct
reader of the model's audio messages gives the same events as the SDK's own receive."""

from __future__ import annotations

import asyncio
import base64
import logging
import math

import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from phonebridge.agent import Agent
from phonebridge.app import NO_COMPRESSION
from phonebridge.model import AUDIO_MIME, LiveLink, audio_message
from phonebridge.model_events import AudioOut, OutputText, TurnComplete, translate
from phonebridge.model_events import GoAway as GoAwayEvent
from phonebridge.model_wire import audio_events, reader_for, sdk_message, wire_events
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
    assert len(fast) >= 10  # the direct path carried the audio, the SDK the rest
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
