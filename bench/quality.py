"""Audio quality and cost per frame, in this process (no network): PESQ of both chains against the G.711
ceiling, algorithmic delay, transcoding microseconds per 20 ms frame, and the google-genai SDK's own cost per
message (send_realtime_input and receive) measured against a fake socket.

PESQ (ITU-T P.862, narrowband, the `pesq` package) is run on synthetic speech (phonebridge.testing.speech):
it has pitch, formants and syllables but is not real speech, so the scores are indicative; what matters is
the gap between our chain and mu-law alone, measured here on the same signal.
References are "ideal" resamplings (FFT brick-wall over the whole signal): what a perfect resampler gives.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import numpy as np

from phonebridge.audio import InboundTranscoder, OutboundTranscoder, ulaw_decode, ulaw_encode
from phonebridge.testing.speech import synth_speech

SENTENCES = (
    "thanks for calling the front desk, how can I help you today",
    "your order is out for delivery and should arrive in twenty minutes",
    "would you like to book a table for four people on friday evening",
)


def ideal_resample(pcm16: bytes, src: int, dst: int) -> bytes:
    """Band-limit and resample the whole signal at once in the frequency domain."""
    x = np.frombuffer(pcm16, dtype="<i2").astype(np.float64)
    m = len(x) * dst // src
    spectrum = np.fft.rfft(x)
    keep = min(len(spectrum), m // 2 + 1)
    y = np.fft.irfft(spectrum[:keep], m) * (m / len(x))
    return np.clip(np.round(y), -32768, 32767).astype("<i2").tobytes()


def speech(rate: int) -> bytes:
    gap = b"\x00\x00" * (rate // 4)
    return gap + gap.join(synth_speech(s, rate) for s in SENTENCES) + gap


def _pesq(rate: int, ref: bytes, deg: bytes) -> float:
    from pesq import pesq

    n = min(len(ref), len(deg)) // 2
    r = np.frombuffer(ref, dtype="<i2")[:n].astype(np.float64)
    d = np.frombuffer(deg, dtype="<i2")[:n].astype(np.float64)
    return float(pesq(rate, r, d, "nb"))


def pesq_scores() -> dict[str, float]:
    """Outbound: 24 kHz speech -> our resampler + mu-law -> decoded, against the ideal 8 kHz signal; inbound:
    mu-law -> our 16 kHz, against the ideal 16 kHz signal. Each next to its ceiling: mu-law alone."""
    s24 = speech(24000)
    ref8 = ideal_resample(s24, 24000, 8000)
    out = OutboundTranscoder()
    ours_out = ulaw_decode(out.process(s24) + out.flush())
    ulaw_ref = ulaw_encode(ref8)
    ceiling8 = ulaw_decode(ulaw_ref)
    inbound = InboundTranscoder()
    ours_in = inbound.process(ulaw_ref + b"\xff" * 800)  # silence after: pushes the filter's tail out
    ref16 = ideal_resample(ref8, 8000, 16000)
    ceiling16 = ideal_resample(ceiling8, 8000, 16000)
    return {
        "outbound_pesq": _pesq(8000, ref8, ours_out), "outbound_ceiling": _pesq(8000, ref8, ceiling8),
        "inbound_pesq": _pesq(16000, ref16, ours_in), "inbound_ceiling": _pesq(16000, ref16, ceiling16),
    }


class _FakeSocket:
    """The far end of a websockets connection, as much as AsyncSession uses: send() and recv()."""

    def __init__(self, incoming: list[bytes]) -> None:
        self._incoming = incoming
        self._next = 0
        self.sent = 0

    async def send(self, message: str) -> None:
        self.sent += 1

    async def recv(self, decode: bool = True) -> bytes:
        message = self._incoming[self._next % len(self._incoming)]
        self._next += 1
        return message


async def _sdk_costs(messages: int) -> dict[str, float]:
    from google.genai import types
    from google.genai._api_client import BaseApiClient
    from google.genai.live import AsyncSession

    import base64

    pcm16k = synth_speech("hello", 16000, seconds=0.02)[:640]
    chunk = synth_speech("hello there", 24000, seconds=0.04)[:1920]
    audio = {"serverContent": {"modelTurn": {"parts": [{"inlineData": {
        "mimeType": "audio/pcm;rate=24000", "data": base64.b64encode(chunk).decode()}}]},
        "outputTranscription": {"text": "word "}}}
    wire = json.dumps(audio).encode()
    session = AsyncSession(api_client=BaseApiClient(api_key="bench"), websocket=_FakeSocket([wire]))  # type: ignore[arg-type]
    blob = types.Blob(data=pcm16k, mime_type="audio/pcm;rate=16000")
    start = time.perf_counter()
    for _ in range(messages):
        await session.send_realtime_input(audio=types.Blob(data=pcm16k, mime_type="audio/pcm;rate=16000"))
    send_us = (time.perf_counter() - start) / messages * 1e6
    start = time.perf_counter()
    for _ in range(messages):  # the floor any client pays: base64 and JSON
        json.dumps({"realtime_input": {"audio": {"data": base64.b64encode(pcm16k).decode(), "mime_type": blob.mime_type}}})
    send_floor_us = (time.perf_counter() - start) / messages * 1e6
    receive = session.receive()
    start = time.perf_counter()
    for _ in range(messages):
        await receive.__anext__()
    recv_us = (time.perf_counter() - start) / messages * 1e6
    start = time.perf_counter()
    for _ in range(messages):
        base64.b64decode(json.loads(wire)["serverContent"]["modelTurn"]["parts"][0]["inlineData"]["data"])
    recv_floor_us = (time.perf_counter() - start) / messages * 1e6
    # What the bridge itself does instead (phonebridge.live.link.audio_message, phonebridge.live.wire).
    # The old flat paths on purpose: they resolve in this tree (phonebridge._moved) and in a baseline from
    # before the subpackages (bench/run --baseline), where the new ones do not exist.
    from phonebridge.model import audio_message
    from phonebridge.model_wire import wire_events

    start = time.perf_counter()
    for _ in range(messages):
        audio_message(pcm16k)
    direct_send_us = (time.perf_counter() - start) / messages * 1e6
    start = time.perf_counter()
    for _ in range(messages):
        wire_events(json.loads(wire))
    direct_recv_us = (time.perf_counter() - start) / messages * 1e6
    return {"sdk_send_us": send_us, "send_floor_us": send_floor_us, "sdk_recv_us": recv_us, "recv_floor_us": recv_floor_us,
            "direct_send_us": direct_send_us, "direct_recv_us": direct_recv_us}


def costs(messages: int = 2000) -> dict[str, float]:
    """Microseconds: transcoding per 20 ms frame each way (CPU time, median batch: bench/audio.per_frame_us);
    the SDK per message (one message carries one inbound 20 ms frame, or one 40 ms outbound chunk = two frames)."""
    import audio as bench_audio  # bench/audio.py: its timing loop and delay measurement

    inbound_frames = [ulaw_encode(f) for f in bench_audio._frames(synth_speech("the caller says", 8000, seconds=2.0), 320)]
    outbound_frames = bench_audio._frames(synth_speech("the model answers", 24000, seconds=2.0), 960)
    result = {
        "inbound_transcode_us": bench_audio.per_frame_us(InboundTranscoder().process, inbound_frames, repeats=10),
        "outbound_transcode_us": bench_audio.per_frame_us(OutboundTranscoder().process, outbound_frames, repeats=10),
        "inbound_delay_ms": bench_audio.measured_delay_ms(8000, 16000),
        "outbound_delay_ms": bench_audio.measured_delay_ms(24000, 8000),
    }
    result.update(asyncio.run(_sdk_costs(messages)))
    result["sdk_inbound_per_frame_us"] = result["sdk_send_us"]
    result["sdk_outbound_per_frame_us"] = result["sdk_recv_us"] / 2
    return result


def measure(messages: int = 2000) -> dict[str, Any]:
    return {**pesq_scores(), **costs(messages)}


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2))
