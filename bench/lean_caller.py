"""A TwilioCaller for load: the same call on the wire, a fraction of the CPU per call (bench only).

What stays TwilioCaller's own: dialling (signed webhook, TwiML, signed upgrade, `connected`, `start`), `stop` on
hangup, closing, `wait_for`, the playback model (phonebridge.testing.playback.PlaybackBuffer) and the records the
bench reads (`events`, `marks_echoed`, `clears`). What changes is the machinery around each frame, which at 100
calls was most of the load generator's core:
- sending: TwilioCaller streams each 20 ms frame from a task (a sleep, two locks, a lambda, `send_str`); here a
  timer callback per frame builds it from text prepared once (`LeanLeg.media`, held equal to `LegCore.media`
  by tests/test_bench_lean_caller.py), stamps it and hands it to aiohttp's own frame writer at once. Each caller
  keeps its own 20 ms grid from its own stream start, as before: one ticker for every caller would line all
  their frames up in the same millisecond and measure a burst the real calls never make;
- playback: TwilioCaller's player wakes every 20 ms while audio is queued; here a timer fires only when the
  next mark comes due or the buffer drains, the only moments anything is echoed or waited for;
- reading: the bridge's media frames, in the exact form phonebridge writes them, are taken apart without
  `json.loads` (`LeanLeg.receive`); anything else goes through `LegCore.receive` itself.
The direct write is used only when `send_str` would do exactly that write and not wait: the writer has the
method it was written against, no compression, no backpressure, nothing else holding the wire. Otherwise the
frame goes the library path (`TwilioCaller._send`, under the wire lock), and every frame after it too until
that path is idle, so sequence numbers reach the wire in order.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType

from phonebridge.audio import ulaw_encode
from phonebridge.testing.playback import LegCore, Received
from phonebridge.testing.twilio_caller import FRAME_BYTES, FRAME_SECONDS, RATE, ULAW_SILENCE, TwilioCaller
from phonebridge.testing.wav import resample_pcm16

_TEXT = 0x1  # WSMsgType.TEXT: the opcode send_str writes
_SILENCE = ULAW_SILENCE * FRAME_BYTES
_CACHE_LIMIT = 4096  # distinct frames remembered (the bench speaks one clip: a few dozen)


class LeanLeg(LegCore):
    """LegCore with a media frame built from prepared text and the bridge's media frames read without json."""

    def __init__(self, stream_sid: str, account_sid: str, call_sid: str, bytes_per_second: int = 8000) -> None:
        super().__init__(stream_sid, account_sid, call_sid, bytes_per_second)
        sid = json.dumps(stream_sid)
        # json.dumps's own layout of LegCore.media's dict (", " and ": "), the sid escaped as it escapes it.
        self._media_head = '{"event": "media", "sequenceNumber": "'
        self._media_mid = f'", "streamSid": {sid}, "media": {{"track": "inbound", "chunk": "'
        # The bridge's media frame (phonebridge.twilio.messages.media_message), around the payload.
        self._in_head = f'{{"event":"media","streamSid":{sid},"media":{{"payload":"'
        self._payloads: dict[bytes, str] = {}

    def media(self, frame: bytes, start: float) -> str:
        self._chunk += 1
        self._seq += 1
        self.sent.append((start, frame))
        payload = self._payloads.get(frame)
        if payload is None:
            if len(self._payloads) >= _CACHE_LIMIT:
                self._payloads.clear()
            payload = self._payloads[frame] = base64.b64encode(frame).decode("ascii")
        return (f'{self._media_head}{self._seq}{self._media_mid}{self._chunk}", "timestamp": '
                f'"{round(start * 1000)}", "payload": "{payload}"}}}}')

    def receive(self, text: str, now: float) -> list[str]:
        head = self._in_head
        if not (text.startswith(head) and text.endswith('"}}')):
            return super().receive(text, now)
        payload = text[len(head) : -3]
        try:
            # Strict base64 has no quote, backslash or control character: the text is then exactly the JSON
            # object below, the one json.loads would have built. Anything else: LegCore's own path.
            audio = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            return super().receive(text, now)
        self.events.append(Received(now, {"event": "media", "streamSid": self.stream_sid, "media": {"payload": payload}}))
        self.media_bytes_received += len(audio)
        marks = self.buffer.enqueue(audio, now)
        self.marks_echoed.extend(marks)
        return marks


def direct_writer(ws: Any) -> Any:
    """aiohttp's frame writer under `ws` when `send_str` would only write one frame now, else None."""
    writer = writer_of(ws)
    return writer if writer is not None and writable(ws, writer) else None


def writer_of(ws: Any) -> Any:
    """The frame writer under `ws` if it is the one `write_text` was written against, uncompressed; else None.
    What it checks cannot change while the socket lives: check it once per socket."""
    writer: Any = getattr(ws, "_writer", None)
    if not all(hasattr(writer, name) for name in ("_write_websocket_frame", "protocol", "transport", "_limit")):
        return None
    if getattr(writer, "compress", 1) or not isinstance(getattr(writer, "_output_size", None), int):
        return None
    if not hasattr(writer.protocol, "_paused") or not hasattr(writer, "_closing"):
        return None
    return writer


def writable(ws: Any, writer: Any) -> bool:
    """`send_str` would write at once and not wait: open, not closing, no backpressure."""
    return not (ws.closed or writer._closing or writer.protocol._paused or writer.transport.is_closing())


def write_text(writer: Any, text: str) -> None:
    """What `send_str(text)` does when it does not wait: one TEXT frame, the writer's flow-control count kept."""
    writer._write_websocket_frame(text.encode("utf-8"), _TEXT, 0)
    if writer._output_size > writer._limit:  # send_frame: reset the count; it would wait only if paused
        writer._output_size = 0


class LeanCaller(TwilioCaller):
    """A continuously streaming TwilioCaller at real time (speed 1.0, the loop's own clock). `frame_times`:
    when each media frame was handed to its socket, stamped as it is built, just before the write (stamping
    after a write that yielded would be late, and the Live side of the bench could read the bridge's message
    for the frame first)."""

    def __init__(self, server_url: str, **kwargs: Any) -> None:
        if kwargs.get("speed", 1.0) != 1.0 or kwargs.get("clock") is not None or kwargs.get("continuous") is False:
            raise ValueError("LeanCaller streams continuously at real time only")
        super().__init__(server_url, **kwargs)
        self._core = LeanLeg(self.stream_sid, self.account_sid, self.call_sid, RATE)
        self.events, self.clears = self._core.events, self._core.clears
        self.marks_echoed, self.protocol_errors = self._core.marks_echoed, self._core.protocol_errors
        self.frame_times: list[float] = []
        self._speech: deque[bytes] = deque()  # frames say() queued, in order
        self._said: deque[tuple[int, asyncio.Future[None]]] = deque()  # (frames sent when done, say's future)
        self._queued_frames = self._said_frames = 0  # say()'s frames queued, and sent
        self._next = _SILENCE  # the frame being spoken now: sent once its 20 ms have passed
        self._next_said = False  # ...and whether say() queued it
        self._frame_timer: asyncio.TimerHandle | None = None
        self._play_timer: asyncio.TimerHandle | None = None
        self._play_at = math.inf
        self._slow = 0  # frames on the library path not yet written
        self._writer: Any = None  # aiohttp's frame writer, once checked (False: not the one we know)

    # -- talking ----------------------------------------------------------------------------------------

    async def say(self, audio: bytes | str, *, rate: int = RATE) -> None:
        if isinstance(audio, str):
            await super().say(audio, rate=rate)
            return
        ulaw = _ulaw_of(audio, rate)
        if not self.up:
            return
        frames = [ulaw[i : i + FRAME_BYTES] for i in range(0, len(ulaw), FRAME_BYTES)]
        if frames and len(frames[-1]) < FRAME_BYTES:
            frames[-1] += ULAW_SILENCE * (FRAME_BYTES - len(frames[-1]))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._speech.extend(frames)
        self._queued_frames += len(frames)
        self._said.append((self._queued_frames, done))
        await done

    async def _keep_streaming(self) -> None:
        loop = asyncio.get_running_loop()
        self._frame_timer = loop.call_later(max(0.0, self._cursor + FRAME_SECONDS - self._now()), self._on_frame)
        try:
            await self._closed.wait()
        finally:
            self._stop_streaming()

    def _on_frame(self) -> None:
        self._frame_timer = None
        if not self.up:
            self._stop_streaming()
            return
        frame, start, said = self._next, self._cursor, self._next_said
        self._cursor = start + FRAME_SECONDS
        # What say() queued while this frame was spoken starts with the next one, as TwilioCaller's does.
        self._next_said = bool(self._speech)
        self._next = self._speech.popleft() if self._next_said else _SILENCE
        self._send_now(lambda: self._core.media(frame, start), stamp=True)
        if said:
            self._said_frames += 1
            while self._said and self._said[0][0] <= self._said_frames:  # say() returns once its last is sent
                self._said.popleft()[1].set_result(None)
        delay = max(0.0, self._cursor + FRAME_SECONDS - self._now())
        self._frame_timer = asyncio.get_running_loop().call_later(delay, self._on_frame)

    def _stop_streaming(self) -> None:
        if self._frame_timer is not None:
            self._frame_timer.cancel()
            self._frame_timer = None
        self._speech.clear()
        while self._said:
            future = self._said.popleft()[1]
            if not future.done():
                future.set_result(None)

    def _send_now(self, build: Callable[[], str], *, stamp: bool = False) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            return
        writer = self._writer
        if writer is None:
            writer = self._writer = writer_of(ws) or False
        if not writer or self._slow or self._wire.locked() or not writable(ws, writer):
            self._slow += 1
            asyncio.ensure_future(self._send_slow(build, stamp))
            return
        text = build()
        if stamp:
            self.frame_times.append(time.monotonic())
        write_text(writer, text)

    async def _send_slow(self, build: Callable[[], str], stamp: bool) -> None:
        def stamped() -> str:
            text = build()
            self.frame_times.append(time.monotonic())
            return text

        try:
            await self._send(stamped if stamp else build)
        finally:
            self._slow -= 1

    # -- listening --------------------------------------------------------------------------------------

    async def _read(self) -> None:
        """TwilioCaller._read without a playback step per message: what a frame makes due (marks queued
        after no audio) `receive` returns; the rest comes due on the player's timer."""
        ws = self._ws
        assert ws is not None
        closing = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED)
        try:
            while True:
                message = await ws.receive()
                if message.type in closing:  # where `async for` stops
                    break
                if message.type != WSMsgType.TEXT:
                    self.protocol_errors.append(f"non-text frame: {message.type.name}")
                    continue
                now = self._now()
                self._echo_now(self._core.receive(message.data, now))
                self._arm_player(now)
                self._notify()
        finally:
            self.close_code = ws.close_code
            self.closed_by_server = not self._ending
            self._ending = True
            self._closed.set()
            self._notify()

    async def _echo(self, marks: list[str]) -> None:
        self._echo_now(marks)

    def _echo_now(self, marks: list[str]) -> None:
        for name in marks:
            self._send_now(functools.partial(self._core.mark, name))

    async def tick(self) -> None:
        self._tick_now()

    def _tick_now(self) -> None:
        now = self._now()
        self._echo_now(self._core.advance(now))
        self._arm_player(now)
        self._notify()

    async def _play(self) -> None:
        return  # playback is timed by _arm_player: a wake-up only when a mark is due or the buffer drains

    def _arm_player(self, now: float) -> None:
        buffer = self._core.buffer
        drain, mark = buffer.drain_time(), buffer.next_mark_time()
        due = min(math.inf if drain is None else drain, math.inf if mark is None else mark)
        if due == math.inf or (self._play_timer is not None and self._play_at <= due):
            return  # nothing to wait for, or a timer that fires first re-arms from there
        if self._play_timer is not None:
            self._play_timer.cancel()
        self._play_at = due
        self._play_timer = asyncio.get_running_loop().call_later(max(0.0, due - now), self._on_play_timer)

    def _on_play_timer(self) -> None:
        self._play_timer = None
        if self.up:
            self._tick_now()

    async def close(self) -> None:
        if self._play_timer is not None:
            self._play_timer.cancel()
            self._play_timer = None
        await super().close()


_ULAW: dict[tuple[bytes, int], bytes] = {}


def _ulaw_of(pcm: bytes, rate: int) -> bytes:
    """say()'s transcoding, done once per clip (every caller of the bench says the same one)."""
    key = (pcm, rate)
    ulaw = _ULAW.get(key)
    if ulaw is None:
        if len(_ULAW) >= 16:
            _ULAW.clear()
        ulaw = _ULAW[key] = ulaw_encode(resample_pcm16(pcm, rate, RATE))
    return ulaw
