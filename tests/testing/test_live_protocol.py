"""The emulator's wire details, driven by a plain websockets client speaking literal JSON (things the SDK
cannot or does not send: a missing key, two fields at once, snake_case and camelCase spellings)."""

from __future__ import annotations

import base64
import contextlib
import json
import math
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from phonebridge.testing.live_emulator import LiveEmulator
from phonebridge.testing.live_script import CallTools, Say, Script, ToolCallSpec, WaitForCaller, WaitForText
from phonebridge.testing.speech import silence, synth_speech

PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
SETUP = {"setup": {"model": "models/gemini-3.1-flash-live-preview", "generation_config": {"response_modalities": ["AUDIO"]}}}


async def open_ws(emu: LiveEmulator, key: str | None = "k") -> ClientConnection:
    url = emu.base_url.replace("https://", "wss://") + PATH
    headers = {"x-goog-api-key": key} if key else {}
    return await websockets.connect(url, ssl=emu.ssl_context, additional_headers=headers)


async def started(emu: LiveEmulator, setup: dict[str, Any] = SETUP) -> ClientConnection:
    ws = await open_ws(emu)
    await ws.send(json.dumps(setup))
    assert json.loads(await ws.recv()) == {"setupComplete": {}}
    return ws


async def until_closed(ws: ClientConnection) -> None:
    """Read until the server closes (iteration raises on a close code other than 1000/1001)."""
    with contextlib.suppress(websockets.ConnectionClosed):
        async for _ in ws:
            pass


async def test_missing_api_key_is_closed_with_1008() -> None:
    async with LiveEmulator(Script([Say("x")]), speed=math.inf) as emu:
        ws = await open_ws(emu, key=None)
        await until_closed(ws)
    assert (ws.close_code, ws.close_reason) == (1008, "Missing API key: pass one in the x-goog-api-key header.")


async def test_snake_and_camel_audio_keys_and_padless_urlsafe_base64_are_accepted() -> None:
    pcm = bytes(range(256)) * 3 + b"\xfb\xff"  # bytes that need '-' and '_' in the URL-safe alphabet
    data = base64.urlsafe_b64encode(pcm).decode().rstrip("=")
    async with LiveEmulator(Script([WaitForText()]), speed=math.inf) as emu:
        ws = await started(emu)
        await ws.send(json.dumps({"realtime_input": {"audio": {"data": data, "mime_type": "audio/pcm;rate=16000"}}}))
        await ws.send(json.dumps({"realtimeInput": {"audio": {"data": data, "mimeType": "audio/pcm;rate=16000"}}}))
        await ws.send(json.dumps({"realtimeInput": {"audioStreamEnd": True}}))
        await emu.wait_for(lambda: len(emu.connections[0].received) == 4)
        await ws.close()
    conn = emu.connections[0]
    assert conn.audio_in() == pcm + pcm
    assert [r.kind for r in conn.received] == ["setup", "audio", "audio", "audio_stream_end"]
    assert conn.setup["generationConfig"] == {"responseModalities": ["AUDIO"]}
    assert conn.raw_setup == SETUP["setup"]


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({"realtimeInput": {"text": "a", "audioStreamEnd": True}}, "Invalid argument: realtime_input must set exactly one field, got 2."),
        ({"bogus": {}}, "Invalid JSON payload received. Unknown name ['bogus']: Cannot find field."),
        ({"setup": SETUP["setup"]}, "Invalid argument: setup may be sent only once, as the first message."),
    ],
)
async def test_refused_messages_close_with_1007_and_the_reason(message: dict[str, Any], reason: str) -> None:
    async with LiveEmulator(Script([WaitForText()]), speed=math.inf) as emu:
        ws = await started(emu)
        await ws.send(json.dumps(message))
        await until_closed(ws)
    assert (ws.close_code, ws.close_reason) == (1007, reason)


async def test_frames_are_binary_by_default_and_text_on_request() -> None:
    for binary in (True, False):
        async with LiveEmulator(Script([Say("hi", seconds=0.04)]), speed=math.inf, binary_frames=binary) as emu:
            ws = await open_ws(emu)
            await ws.send(json.dumps(SETUP))
            frames = [await ws.recv() for _ in range(4)]
            await ws.close()
        assert [type(f) for f in frames] == [bytes if binary else str] * 4
        assert [json.loads(f) for f in frames][-1] == {
            "serverContent": {"turnComplete": True},
            "usageMetadata": {
                "promptTokenCount": 0,
                "responseTokenCount": 1,
                "totalTokenCount": 1,
                "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": 1}],
            },
        }


async def test_unknown_tool_response_can_be_only_recorded() -> None:
    script = Script([CallTools((ToolCallSpec("f", {}, id="call-a"),), timeout_s=5.0)])
    async with LiveEmulator(script, speed=math.inf, unknown_tool_response_close=None) as emu:
        ws = await started(emu)
        call = json.loads(await ws.recv())
        await ws.send(json.dumps({"tool_response": {"function_responses": [{"id": "zzz", "name": "f", "response": {}}]}}))
        await ws.send(json.dumps({"toolResponse": {"functionResponses": [{"id": "call-a", "name": "f", "response": {"ok": 1}}]}}))
        await emu.wait_for(lambda: emu.conversations[0].finished)
        await ws.close()
    assert call == {"toolCall": {"functionCalls": [{"id": "call-a", "name": "f", "args": {}}]}}
    assert emu.failures == ["script#0: tool_response for unknown or closed call id(s) zzz"]
    assert [(r.id, r.response) for r in emu.conversations[0].tool_responses] == [("call-a", {"ok": 1})]


async def test_not_strict_accepts_what_31_refuses() -> None:
    setup = {"setup": {**SETUP["setup"], "proactivity": {"proactive_audio": True}}}
    async with LiveEmulator(Script([WaitForText()]), speed=math.inf, strict=False) as emu:
        ws = await started(emu, setup)
        await ws.send(json.dumps({"realtime_input": {"media_chunks": [{"data": "AAA", "mime_type": "audio/pcm"}]}}))
        await ws.send(json.dumps({"realtime_input": {"text": "still here"}}))
        await emu.wait_for(lambda: emu.conversations[0].finished)
        await ws.close()
    assert emu.connections[0].texts() == ["still here"]


async def test_a_callable_script_gets_the_setup_and_the_default_script_loops() -> None:
    seen: list[dict[str, Any]] = []

    def per_call(setup: dict[str, Any]) -> Script:
        seen.append(setup)
        return Script([Say("custom", seconds=0.04)])

    async with LiveEmulator(per_call, speed=math.inf) as emu:
        ws = await started(emu)
        await until_turn_complete(ws)
        await ws.close()
    assert seen == [{"model": "models/gemini-3.1-flash-live-preview", "generationConfig": {"responseModalities": ["AUDIO"]}}]

    async with LiveEmulator(speed=math.inf) as emu:
        ws = await started(emu)
        await ws.send(json.dumps({"realtimeInput": {"text": "greet"}}))
        await until_turn_complete(ws)
        for _ in range(2):
            speech = synth_speech("hello there", 16000) + silence(0.4, 16000)
            data = base64.urlsafe_b64encode(speech).decode()
            await ws.send(json.dumps({"realtimeInput": {"audio": {"data": data, "mimeType": "audio/pcm;rate=16000"}}}))
            await until_turn_complete(ws)  # read, or the server's sends stall on flow control
        await ws.close()
    assert emu.conversations[0].script.name == "default" and emu.conversations[0].turns_spoken == 3
    assert isinstance(emu.conversations[0].script.steps[2], WaitForCaller)


async def until_turn_complete(ws: ClientConnection) -> None:
    while not json.loads(await ws.recv()).get("serverContent", {}).get("turnComplete"):
        pass


@pytest.mark.parametrize("marker", [{"audioStreamEnd": True}, {"activity_end": {}}])
async def test_audio_stream_end_or_activity_end_ends_the_callers_turn(marker: dict[str, Any]) -> None:
    speech = base64.urlsafe_b64encode(synth_speech("no trailing silence", 16000)).decode()
    async with LiveEmulator(Script([WaitForCaller(timeout_s=2.0), Say("heard you", seconds=0.04)]), speed=math.inf) as emu:
        ws = await started(emu)
        await ws.send(json.dumps({"realtimeInput": {"audio": {"data": speech, "mimeType": "audio/pcm;rate=16000"}}}))
        await ws.send(json.dumps({"realtimeInput": marker}))
        await until_turn_complete(ws)
        await ws.close()
    assert emu.conversations[0].turns_spoken == 1 and emu.failures == []
