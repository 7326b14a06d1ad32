"""A separate process configured only by the SDK's own environment reaches the emulator over TLS."""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys

from phonebridge.testing.live_emulator import LiveEmulator
from phonebridge.testing.live_script import Say, Script, WaitForText

CHILD = """
import asyncio, json
from google import genai
from google.genai import types

async def main():
    client = genai.Client()  # GEMINI_API_KEY, GOOGLE_GEMINI_BASE_URL and SSL_CERT_FILE from the environment
    config = types.LiveConnectConfig(response_modalities=["AUDIO"], output_audio_transcription={})
    async with client.aio.live.connect(model="gemini-3.1-flash-live-preview", config=config) as session:
        await session.send_realtime_input(text="hello from the child")
        text, audio = "", 0
        async for message in session.receive():
            content = message.server_content
            if content and content.output_transcription:
                text += content.output_transcription.text
            if content and content.model_turn:
                audio += sum(len(p.inline_data.data) for p in content.model_turn.parts)
    print(json.dumps({"text": text, "audio_bytes": audio}))

asyncio.run(main())
"""


async def test_subprocess_with_only_env_vars_connects_through_genai_client() -> None:
    async with LiveEmulator(Script([WaitForText(), Say("Hi child", seconds=0.2)]), speed=math.inf) as emu:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "GEMINI_", "SSL_CERT"))}
        env.update(emu.client_env())
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode == 0, err.decode()
    assert json.loads(out) == {"text": "Hi child", "audio_bytes": 2 * 4800}
    assert emu.connections[0].texts() == ["hello from the child"]
    assert emu.connections[0].path == "/ws/google.ai.generativelanguage.v1.GenerativeService.BidiGenerateContent"
    assert set(emu.client_env()) == {"GOOGLE_GEMINI_BASE_URL", "SSL_CERT_FILE", "GEMINI_API_KEY"}
