"""TwilioCaller: a simulated Twilio call leg speaking Twilio's real wire protocol (shared/PROTOCOLS.md 1).

1. Dials as Twilio does (:mod:`phonebridge.testing.twilio_dial`): POSTs the voice webhook (Twilio's form) to
   the local ``server_url``, signed over the *public* URL; reads ``<Response><Connect><Stream url="wss://...">``
   and its ``<Parameter>``s from the TwiML; opens the WebSocket with a signed upgrade.
2. The parameters go back as ``start.customParameters``, the call's stream token among them, as Twilio does.
   ``start_overrides`` forges the ``start`` instead, for security tests.
3. Sends ``connected``, ``start``, then ``media`` (160 mu-law bytes per 20 ms), ``dtmf``, ``stop``:
   ``sequenceNumber`` is shared and rises by one, ``chunk`` counts frames from 1, ``timestamp`` is the frame's
   ms on the call's timeline.
4. Plays what the bridge sends through Twilio's playback buffer (:mod:`phonebridge.testing.playback`),
   echoing marks as Twilio does, and records what the caller heard and when (the audio views are
   :mod:`phonebridge.testing.twilio_recording`'s).

Time: the call's timeline starts at 0 with the stream. At a finite ``speed`` it is the loop's clock times
``speed``; at ``math.inf`` frames go as fast as the socket takes them, each moves the timeline 20 ms, and
received audio plays instantly. An injected ``clock`` drives playback instead (move it, then ``await
caller.tick()``) and frames are sent unpaced.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import secrets
import ssl
import time
from collections.abc import Callable
from os import PathLike
from typing import Any

import aiohttp
from twilio.request_validator import RequestValidator

from phonebridge.audio import ulaw_encode
from phonebridge.testing.playback import LegCore, Received
from phonebridge.testing.speech import synth_speech
from phonebridge.testing.twilio_dial import (
    CallRejected,
    forge_start,
    local_url,
    open_media_socket,
    post_voice_webhook,
    read_twiml,
)
from phonebridge.testing.twilio_recording import CallRecording
from phonebridge.testing.wav import read_wav, resample_pcm16

__all__ = ["CallRejected", "TwilioCaller", "DTMF_DIGITS", "FRAME_BYTES", "FRAME_SECONDS", "RATE", "ULAW_SILENCE"]

RATE = 8000
FRAME_BYTES = 160
FRAME_SECONDS = 0.02
ULAW_SILENCE = b"\xff"  # mu-law code for 0
DTMF_DIGITS = frozenset("0123456789*#ABCD")


class TwilioCaller(CallRecording):
    """One simulated inbound call to the phonebridge server at ``server_url``. See the module docstring."""

    _rate = RATE

    def __init__(
        self,
        server_url: str,
        *,
        public_url: str = "https://agent.example.com",
        auth_token: str = "test-auth-token",
        account_sid: str = "AC" + "0" * 32,
        call_sid: str | None = None,
        from_number: str = "+15551230001",
        to_number: str = "+15557654321",
        speed: float = 1.0,
        voice_path: str = "/twilio/voice",
        extra_form: dict[str, str] | None = None,
        sign: bool = True,
        clock: Callable[[], float] | None = None,
        continuous: bool | None = None,
        ssl_context: ssl.SSLContext | None = None,
        start_overrides: dict[str, Any] | None = None,
    ) -> None:
        if not speed > 0:
            raise ValueError("speed must be positive (math.inf: as fast as possible)")
        paced = math.isfinite(speed) and clock is None
        if continuous and not paced:
            raise ValueError("continuous streaming needs a finite speed and the default clock")
        self.server_url, self.public_url, self.voice_path = server_url.rstrip("/"), public_url.rstrip("/"), voice_path
        self.account_sid, self.call_sid = account_sid, call_sid or "CA" + secrets.token_hex(16)
        self.from_number, self.to_number = from_number, to_number
        self.speed, self.sign, self.continuous = speed, sign, paced if continuous is None else continuous
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self._validator, self._extra_form, self._clock = RequestValidator(auth_token), dict(extra_form or {}), clock
        self._ssl = ssl_context  # trust for an https/wss server_url (a TLS proxy with a test CA); None: the default
        self._start_overrides = dict(start_overrides or {})  # fields of start.start replaced as is
        self.twiml = ""  # what the webhook answered
        self.stream_url = ""
        self.parameters: dict[str, str] = {}
        self.close_code: int | None = None  # set when the socket closes; see closed_by_server
        self.closed_by_server = False
        self._core = LegCore(self.stream_sid, self.account_sid, self.call_sid, RATE)
        # The ear's records, shared (the same lists) so that tests read them off the caller.
        self.events: list[Received] = self._core.events
        self.clears: list[float] = self._core.clears
        self.marks_echoed: list[str] = self._core.marks_echoed
        self.protocol_errors: list[str] = self._core.protocol_errors
        self._init_machinery()

    def _init_machinery(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wire = asyncio.Lock()  # one sequenceNumber order on the wire
        self._media = asyncio.Lock()  # one speaker at a time: say() takes over from continuous silence
        self._changed = asyncio.Event()
        self._wake_player = asyncio.Event()
        self._closed = asyncio.Event()
        self._ending = False
        self._cursor = 0.0  # where the next media frame starts on the timeline
        self._vnow = 0.0  # the timeline at infinite speed
        self._t0: float | None = None
        self.started_at: float | None = None  # time.monotonic() when the stream started (timeline 0)

    # -- dialling ---------------------------------------------------------------------------------------

    async def __aenter__(self) -> TwilioCaller:
        await self.dial()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.hangup()

    async def dial(self) -> None:
        """Webhook, TwiML, signed WebSocket upgrade, then ``connected`` and ``start``."""
        if self._session is not None:
            raise RuntimeError("this caller has already dialled")
        connector = aiohttp.TCPConnector(ssl=self._ssl) if self._ssl is not None else None
        self._session = aiohttp.ClientSession(connector=connector)
        try:
            await self._post_webhook()
            await self._open_stream()
        except BaseException:
            await self.close()
            raise

    def webhook_form(self) -> dict[str, str]:
        """The form Twilio POSTs for an inbound call (plus ``extra_form``)."""
        return {**self._core.webhook_form(self.from_number, self.to_number), **self._extra_form}

    async def _post_webhook(self) -> None:
        assert self._session is not None
        url, form = self.public_url + self.voice_path, self.webhook_form()
        self.twiml = await post_voice_webhook(self._session, url, self._local(url), form, self._signer)
        self.stream_url, self.parameters = read_twiml(self.twiml)

    async def _open_stream(self) -> None:
        assert self._session is not None
        self._ws = await open_media_socket(self._session, self.stream_url, self._local(self.stream_url), self._signer)
        # time.monotonic(), not the loop's clock: the same under asyncio, and uvloop's is cached per iteration
        # (a millisecond stale), which would make arrival times earlier than the sends that caused them.
        self._t0 = self.started_at = time.monotonic()
        await self.send_raw(self._core.connected())
        await self._send(self._start_message)
        self._tasks.append(asyncio.create_task(self._read()))
        if self._clock is None and math.isfinite(self.speed):
            self._tasks.append(asyncio.create_task(self._play()))
        if self.continuous:
            self._tasks.append(asyncio.create_task(self._keep_streaming()))

    def _start_message(self) -> str:
        return forge_start(self._core.start(self.parameters, RATE), self._start_overrides)

    @property
    def _signer(self) -> RequestValidator | None:
        return self._validator if self.sign else None

    def _local(self, public: str) -> str:
        return local_url(public, self.public_url, self.server_url, self.twiml)

    # -- talking ----------------------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        """The media stream is open and neither side has ended it."""
        return self._ws is not None and not self._ws.closed and not self._ending

    async def say(self, audio: bytes | str, *, rate: int = RATE) -> None:
        """Speak: PCM16 mono at ``rate``, or text through ``synth_speech``. Returns when the last frame is sent
        (or at once if the call is over)."""
        pcm = synth_speech(audio, RATE) if isinstance(audio, str) else resample_pcm16(audio, rate, RATE)
        await self._stream(ulaw_encode(pcm))

    async def say_wav(self, path: str | PathLike[str]) -> None:
        """Speak a WAV file (any PCM rate and channel count)."""
        await self._stream(ulaw_encode(read_wav(path, RATE)))

    async def silence(self, seconds: float) -> None:
        """Send ``seconds`` of silent frames, paced like speech."""
        await self._stream(ULAW_SILENCE * round(seconds * RATE))

    async def press(self, digit: str) -> None:
        """Press a key: a ``dtmf`` event."""
        if digit not in DTMF_DIGITS:
            raise ValueError(f"not a DTMF digit: {digit!r}")
        if self.up:
            await self._send(lambda: self._core.dtmf(digit))

    async def send_raw(self, message: str | dict[str, Any]) -> None:
        """Send any text frame as is: no sequencing (for malformed-frame tests)."""
        assert self._ws is not None, "dial() first"
        async with self._wire:
            await self._ws.send_str(message if isinstance(message, str) else json.dumps(message))

    async def _stream(self, ulaw: bytes) -> None:
        if len(ulaw) % FRAME_BYTES:
            ulaw += ULAW_SILENCE * (FRAME_BYTES - len(ulaw) % FRAME_BYTES)
        async with self._media:
            for offset in range(0, len(ulaw), FRAME_BYTES):
                if not self.up:
                    return
                await self._send_frame(ulaw[offset : offset + FRAME_BYTES])

    async def _keep_streaming(self) -> None:
        # Real Twilio sends a frame every 20 ms whether or not the caller talks.
        frame = ULAW_SILENCE * FRAME_BYTES
        while self.up:
            async with self._media:
                await self._send_frame(frame)

    async def _send_frame(self, frame: bytes) -> None:
        start = self._cursor if self.continuous else max(self._cursor, self._now())
        end = start + FRAME_SECONDS
        if self._clock is None and math.isfinite(self.speed):
            await asyncio.sleep(max(0.0, end - self._now()) / self.speed)  # pacing: a frame is sent once spoken
        if not self.up:
            return
        self._cursor = end
        if math.isinf(self.speed):
            self._vnow = max(self._vnow, end)  # at infinite speed, sending is what moves the timeline
        await self._send(lambda: self._core.media(frame, start))

    async def _send(self, build: Callable[[], str]) -> None:
        """Build a sequenced frame and send it under the wire lock, so sequence numbers reach the wire in order."""
        assert self._ws is not None
        async with self._wire:
            if not self._ws.closed:
                await self._ws.send_str(build())

    # -- hanging up -------------------------------------------------------------------------------------

    async def hangup(self) -> None:
        """End the call as Twilio does: a ``stop`` event, then close the socket. Idempotent."""
        if self.up:
            self._ending = True  # say() and the silence stream stop at their next frame...
            await self._media.acquire()  # ...and a frame in flight finishes first: stop is the last event
            self._media.release()
            await self._send(self._core.stop)
        await self.close()

    async def drop(self) -> None:
        """Lose the call abruptly: the TCP connection goes away with no ``stop`` and no close frame."""
        self._ending = True
        await self._cancel_tasks()
        if self._session is not None:
            await self._session.close()  # closes the transport under the WebSocket: no close handshake
        await self.close()

    async def close(self) -> None:
        """Release the socket and tasks (without ``stop``: use :meth:`hangup` for a proper end)."""
        self._ending = True
        await self._cancel_tasks()
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        self._closed.set()
        self._notify()

    async def _cancel_tasks(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- listening --------------------------------------------------------------------------------------

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for message in self._ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    self.protocol_errors.append(f"non-text frame: {message.type.name}")
                    continue
                await self._echo(self._core.receive(message.data, self._now()))
                await self.tick()  # also wakes waiters, whatever came
        finally:
            self.close_code = self._ws.close_code
            self.closed_by_server = not self._ending
            self._ending = True
            self._closed.set()
            self._notify()

    async def tick(self) -> None:
        """Play what is due on the clock now, echo due marks, wake waiters (call it after moving a clock)."""
        now = self._now()
        if self._clock is None and math.isinf(self.speed):
            now = max(now, self._core.buffer.drain_time() or now)  # play instantly
        await self._echo(self._core.advance(now))
        self._wake_player.set()
        self._notify()

    async def _echo(self, marks: list[str]) -> None:
        for name in marks:
            await self._send(functools.partial(self._core.mark, name))

    async def _play(self) -> None:
        # Wakes when audio arrives and every 20 ms of timeline while some is queued, or when a mark is due.
        while True:
            drain, mark_due = self._core.buffer.drain_time(), self._core.buffer.next_mark_time()
            self._wake_player.clear()
            if drain is None:
                await self._wake_player.wait()
                continue
            now = self._now()
            target = min(now + FRAME_SECONDS, drain, math.inf if mark_due is None else mark_due)
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that lands as the event
            # fires, leaving this task alive after close().
            try:
                async with asyncio.timeout(max(0.0, target - now) / self.speed):
                    await self._wake_player.wait()
            except TimeoutError:
                await self.tick()

    def _now(self) -> float:
        if self._clock is not None:
            return self._clock()
        if math.isinf(self.speed):
            return self._vnow
        if self._t0 is None:
            return 0.0
        return (time.monotonic() - self._t0) * self.speed

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- waiting ----------------------------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[TwilioCaller], bool], timeout: float = 10.0) -> None:
        """Return once ``predicate(self)`` holds; re-checked whenever something arrives or plays."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate(self):
                    await self._changed.wait()
        except TimeoutError:
            state = f"heard {self.heard_seconds:.2f}s, {len(self.events)} events, marks {self.marks_echoed}"
            raise TimeoutError(f"not within {timeout}s: {state}, closed={self._closed.is_set()}") from None

    async def wait_heard(self, seconds: float, timeout: float = 10.0) -> None:
        await self.wait_for(lambda caller: caller.heard_seconds >= seconds, timeout)

    async def closed(self, timeout: float = 10.0) -> None:
        """Return once the socket is closed (``closed_by_server`` and ``close_code`` say how)."""
        async with asyncio.timeout(timeout):
            await self._closed.wait()
