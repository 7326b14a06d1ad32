"""A lean Gemini Live server for load: the same wire protocol as phonebridge.testing.LiveEmulator, none of its
bookkeeping, and timestamps on everything the bench correlates.

Why not LiveEmulator itself: every message it records wakes every waiting step of every conversation (one
emulator-wide event), so its cost grows with the square of the number of calls. At 100 calls that is the
load generator's saturation, not the bridge's. Here each connection reacts only to its own messages.

Behaviour per connection (a caller-paced conversation, forever until the socket closes):
  setup -> setupComplete (and a resumption handle); the first realtime text (the bridge's greeting prompt) ->
  speak the greeting;
  caller speech (energy VAD, 20 ms frames: >= 200 ms loud, then 300 ms quiet) -> inputTranscription, then every
  `tool_every`-th answer a toolCall first (answered -> speak), else speak at once. Speaking sends 40 ms chunks of
  24 kHz speech paced at real time, with outputTranscription words; 100 ms of caller speech while speaking is a
  barge-in: stop, send interrupted + turnComplete.
Resumption, like the service: `resumable: false` while a turn or a tool call is open, a fresh handle after each
turn; a handle stands for the state when it was issued (greeted yet, answers given), so a resumed connection
starts from there and what the client sent after the handle must come again (the bridge sends it again).
Times are time.monotonic() (CLOCK_MONOTONIC, comparable across processes on one machine).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from phonebridge.testing.speech import synth_speech
from phonebridge.testing.tls import LocalTLS

OUT_RATE = 24000
CHUNK_S = 0.04
CHUNK_BYTES = int(OUT_RATE * CHUNK_S) * 2
LOUD_DBFS = -40.0
UTTERANCE_MIN_FRAMES = 10  # 200 ms of 20 ms frames
END_SILENCE_FRAMES = 15  # 300 ms
BARGE_FRAMES = 5  # 100 ms
_LOUD_MS2 = (32768.0 * 10 ** (LOUD_DBFS / 20)) ** 2


@dataclass
class Timeline:
    """What one connection saw and did, in monotonic seconds."""

    audio_in: list[float] = field(default_factory=list)  # each realtime audio message received
    turns: list[list[float]] = field(default_factory=list)  # per spoken turn: each audio chunk sent
    interrupted: list[float] = field(default_factory=list)  # interrupted sent
    tool_calls: list[float] = field(default_factory=list)  # toolCall sent
    tool_responses: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # received, response
    texts: list[str] = field(default_factory=list)


class _Speech:
    """The phrases this server speaks, synthesised once (synthesis is not what we measure)."""

    def __init__(self, answer_s: float) -> None:
        self.greeting = self._chunks(synth_speech("Thanks for calling, how can I help?", OUT_RATE, seconds=answer_s))
        self.answer = self._chunks(synth_speech("Your order is out for delivery today", OUT_RATE, seconds=answer_s))

    @staticmethod
    def _chunks(pcm: bytes) -> list[bytes]:
        """Each 40 ms chunk's whole message, encoded once: a turn sends the same text every time it is spoken."""
        usable = len(pcm) - len(pcm) % CHUNK_BYTES  # whole chunks: each becomes exactly two Twilio frames
        datas = [base64.b64encode(pcm[i : i + CHUNK_BYTES]).decode() for i in range(0, usable, CHUNK_BYTES)]
        return [encode(chunk_message(number, data)) for number, data in enumerate(datas)]


def chunk_message(number: int, data: str) -> dict[str, Any]:
    """Chunk `number` of a turn: its audio, and every 5th a word of output transcription."""
    part = {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": data}}
    content: dict[str, Any] = {"modelTurn": {"parts": [part]}}
    if number % 5 == 0:
        content["outputTranscription"] = {"text": "word "}
    return {"serverContent": content}


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


class Loudness:
    """The VAD's verdict on each realtime audio message, remembered by its text: a pure function of it, and
    the bridge sends the same few dozen texts over and over (silence, and the one clip every caller says,
    transcoded from the same filter state), so most messages are answered without json, base64 or numpy."""

    def __init__(self, limit: int = 4096) -> None:
        self._seen: dict[str | bytes, bool] = {}
        self._limit = limit

    def get(self, text: str | bytes) -> bool | None:
        return self._seen.get(text)

    def put(self, text: str | bytes, data: str) -> bool:
        if len(self._seen) >= self._limit:
            self._seen.clear()
        loud = self._seen[text] = is_loud(data)
        return loud


def is_loud(data: str) -> bool:
    """Mean square of the base64 PCM16 above LOUD_DBFS."""
    pcm = np.frombuffer(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)), dtype="<i2").astype(np.float32)
    return pcm.size > 0 and float(np.dot(pcm, pcm)) / pcm.size > _LOUD_MS2


class Handles:
    """Resumption handles and the state each stands for: (greeted, answers). Bounded: the newest `limit`."""

    def __init__(self, limit: int = 50_000) -> None:
        self._states: OrderedDict[str, tuple[bool, int]] = OrderedDict()
        self._limit, self._issued = limit, 0
        self.resumed = self.unknown = 0  # connections that resumed with a handle, or named an unknown one

    def issue(self, state: tuple[bool, int]) -> str:
        self._issued += 1
        handle = f"lean-{self._issued}"
        self._states[handle] = state
        if len(self._states) > self._limit:
            self._states.popitem(last=False)
        return handle

    def get(self, handle: str) -> tuple[bool, int] | None:
        state = self._states.get(handle)
        if state is None:
            self.unknown += 1
        else:
            self.resumed += 1
        return state


class LeanLive:
    """Start with `await start()`; `base_url` and `ca_file` are what the SDK needs; `connections` queues each new
    connection's Timeline in order of arrival."""

    def __init__(self, *, answer_s: float = 1.5, tool_every: int = 3) -> None:
        self._speech = _Speech(answer_s)
        self._tool_every = tool_every
        self.handles = Handles()
        self.loudness = Loudness()  # shared: every call's bridge sends the same texts
        self.connections: asyncio.Queue[Timeline] = asyncio.Queue()
        self.timelines: list[Timeline] = []
        self._tls: LocalTLS | None = None
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    @property
    def ca_file(self) -> str:
        assert self._tls is not None
        return str(self._tls.ca_file)

    async def start(self) -> None:
        self._tls = LocalTLS()
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._tls.server_context())
        await site.start()
        self.base_url = f"https://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._tls is not None:
            self._tls.close()

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0, autoping=True)
        await ws.prepare(request)
        timeline = Timeline()
        self.timelines.append(timeline)
        self.connections.put_nowait(timeline)
        conn = _Conversation(ws, timeline, self._speech, self._tool_every, self.handles, self.loudness)
        try:
            await conn.run()
        finally:
            conn.stop()
        return ws


class _Conversation:
    def __init__(
        self, ws: web.WebSocketResponse, timeline: Timeline, speech: _Speech, tool_every: int, handles: Handles,
        loudness: Loudness,
    ) -> None:
        self._ws, self.t, self._speech, self._tool_every = ws, timeline, speech, tool_every
        self._handles, self._loudness = handles, loudness
        self._resumable = False  # the client asked for resumption handles
        self._speaker: asyncio.Task[None] | None = None
        self._loud = self._quiet = self._barge = 0
        self._answers = 0
        self._greeted = False
        self._open_call: str | None = None

    async def run(self) -> None:
        loudness = self._loudness
        async for msg in self._ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                break
            loud = loudness.get(msg.data)
            if loud is not None:  # a realtime audio message seen before: the same as below, parsed once
                self.t.audio_in.append(time.monotonic())
                self._on_audio(loud)
                continue
            data = json.loads(msg.data)
            audio = _audio_data(data)
            if audio is not None:
                self.t.audio_in.append(time.monotonic())  # each realtime audio message, as it is read
                self._on_audio(loudness.put(msg.data, audio))
                continue
            if "setup" in data:
                if not self._setup(data["setup"]):
                    await self._ws.close(code=1008, message=b"session resumption handle is invalid or has expired")
                    return
                await self._send({"setupComplete": {}})
                await self._send_handle()
                continue
            realtime = data.get("realtimeInput") or data.get("realtime_input")
            if realtime is not None:
                self._on_realtime(realtime)
                continue
            response = data.get("toolResponse") or data.get("tool_response")
            if response is not None:
                self._on_tool_response(response)

    def _setup(self, setup: dict[str, Any]) -> bool:
        resumption = setup.get("sessionResumption", setup.get("session_resumption"))  # {} asks for handles too
        self._resumable = isinstance(resumption, dict)
        handle = resumption.get("handle") if isinstance(resumption, dict) else None
        if not handle:
            return True
        state = self._handles.get(str(handle))
        if state is None:
            return False
        self._greeted, self._answers = state
        return True

    async def _send_handle(self) -> None:
        """A fresh handle for the state now (nothing open: called between turns)."""
        if self._resumable:
            handle = self._handles.issue((self._greeted, self._answers))
            await self._send({"sessionResumptionUpdate": {"newHandle": handle, "resumable": True}})

    async def _send_not_resumable(self) -> None:
        if self._resumable:
            await self._send({"sessionResumptionUpdate": {"resumable": False}})

    def stop(self) -> None:
        if self._speaker is not None:
            self._speaker.cancel()

    def _on_realtime(self, realtime: dict[str, Any]) -> None:
        if "text" in realtime:
            self.t.texts.append(realtime["text"])
            if not self._greeted:
                self._greeted = True
                self._speak(self._speech.greeting)

    def _on_audio(self, loud: bool) -> None:
        speaking = self._speaker is not None and not self._speaker.done()
        if loud:
            self._loud, self._quiet = self._loud + 1, 0
            self._barge += 1
            if speaking and self._barge >= BARGE_FRAMES:
                self._speaker.cancel()  # type: ignore[union-attr]  # its finally sends interrupted
        else:
            self._quiet += 1
            if self._loud >= UTTERANCE_MIN_FRAMES and self._quiet >= END_SILENCE_FRAMES and not speaking:
                self._loud = 0
                self._on_utterance()
            elif self._quiet >= END_SILENCE_FRAMES:
                self._barge = 0

    def _on_utterance(self) -> None:
        if self._open_call is not None:
            return
        self._answers += 1
        self._spawn_send({"serverContent": {"inputTranscription": {"text": "where is my order", "finished": True}}})
        if self._tool_every and self._answers % self._tool_every == 0:
            self._open_call = f"fc-{self._answers}"
            self.t.tool_calls.append(time.monotonic())
            call = {"id": self._open_call, "name": "lookup_order", "args": {"order_id": "A-1"}}
            if self._resumable:
                self._spawn_send({"sessionResumptionUpdate": {"resumable": False}})
            self._spawn_send({"toolCall": {"functionCalls": [call]}}, stamp=self.t.tool_calls)
        else:
            self._speak(self._speech.answer)

    def _on_tool_response(self, response: dict[str, Any]) -> None:
        received = time.monotonic()
        for item in response.get("functionResponses") or response.get("function_responses") or []:
            self.t.tool_responses.append((received, dict(item.get("response") or {})))
        self._open_call = None
        self._speak(self._speech.answer)

    def _speak(self, chunks: list[bytes]) -> None:
        if self._speaker is None or self._speaker.done():
            self._barge = 0
            self._speaker = asyncio.ensure_future(self._speak_turn(chunks))

    async def _speak_turn(self, chunks: list[bytes]) -> None:
        sent: list[float] = []
        self.t.turns.append(sent)
        start = time.monotonic()
        await self._send_not_resumable()
        try:
            for number, message in enumerate(chunks):
                handed = time.monotonic()  # as handed to the socket: the caller may read it before the write returns
                await self._send_encoded(message)
                sent.append(handed)
                await asyncio.sleep(max(0.0, start + (number + 1) * CHUNK_S - time.monotonic()))
        except asyncio.CancelledError:
            if not self._ws.closed:
                await self._send({"serverContent": {"interrupted": True}})
                self.t.interrupted.append(time.monotonic())
                await self._send({"serverContent": {"turnComplete": True}})
                await self._send_handle()
            raise
        await self._send({"serverContent": {"generationComplete": True}})
        await self._send({"serverContent": {"turnComplete": True}})
        await self._send_handle()

    def _spawn_send(self, message: dict[str, Any], stamp: list[float] | None = None) -> None:
        async def send() -> None:
            if stamp is not None:  # re-stamp as the message is handed to the socket: the call left here then
                stamp[-1] = time.monotonic()
            await self._send(message)

        asyncio.ensure_future(send())

    async def _send(self, message: dict[str, Any]) -> None:
        await self._send_encoded(encode(message))

    async def _send_encoded(self, payload: bytes) -> None:
        if self._ws.closed:
            return
        try:
            await self._ws.send_bytes(payload)
        except (ConnectionError, RuntimeError):
            return


def _audio_data(data: Any) -> str | None:
    """The base64 audio of a realtime audio message (either spelling of the key), else None."""
    realtime = data.get("realtimeInput") or data.get("realtime_input") if isinstance(data, dict) else None
    audio = realtime.get("audio") if isinstance(realtime, dict) else None
    return audio.get("data") if isinstance(audio, dict) else None
