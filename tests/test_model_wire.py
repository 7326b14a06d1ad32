"""The bridge's direct audio message is what the SDK itself would send, and compression is declined."""

from __future__ import annotations

import base64
import math

from google import genai
from google.genai import types

from phonebridge.app import NO_COMPRESSION
from phonebridge.model import AUDIO_MIME, audio_message
from phonebridge.testing.live_emulator import LiveEmulator
from phonebridge.testing.live_script import Script, WaitForText


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
