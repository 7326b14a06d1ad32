"""What the Live emulator remembers: connections (one WebSocket each) and conversations (one scripted call,
which survives session resumption across connections). Tests assert on these records."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from phonebridge.testing.live_script import Script
from phonebridge.testing.live_wire import EnergyDetector, close_reason, duration

_RECENT_AUDIO_S = 2.0  # caller audio kept to prime a WaitForCaller that starts mid-utterance


class ConnectionGone(Exception):
    """The client's socket is closed or dropped: the script stops on this connection."""


@dataclass(frozen=True)
class Received:
    """One message, `t` seconds after the emulator started. `message` is normalised to camelCase."""

    t: float
    kind: str
    message: dict[str, Any]


@dataclass(frozen=True)
class ToolResponseRecord:
    id: str
    name: str
    response: dict[str, Any]
    latency_s: float


@dataclass(frozen=True)
class ConversationState:
    next_step: int
    recent_audio: bytes
    audio_rate: int
    audio_bytes_in: int
    pending_texts: tuple[str, ...]


@dataclass
class Conversation:
    """One scripted call. `next_step` is where a resumed connection goes on."""

    index: int
    script: Script
    resumable: bool
    connections: list[Connection] = field(default_factory=list)
    tool_responses: list[ToolResponseRecord] = field(default_factory=list)
    barge_ins: int = 0
    turns_spoken: int = 0
    failures: list[str] = field(default_factory=list)
    finished: bool = False
    next_step: int = 0
    active: Connection | None = None
    pending_texts: deque[str] = field(default_factory=deque)
    open_calls: dict[str, tuple[str, float]] = field(default_factory=dict)
    listeners: list[EnergyDetector] = field(default_factory=list)
    recent_audio: bytearray = field(default_factory=bytearray)
    audio_rate: int = 16000
    audio_bytes_in: int = 0
    calls_issued: int = 0
    handles_issued: int = 0

    def fail(self, message: str) -> None:
        self.failures.append(f"{self.script.name}#{self.index}: {message}")

    def new_call_id(self) -> str:
        self.calls_issued += 1
        return f"fc-{self.calls_issued}"

    def hear_audio(self, pcm16: bytes, rate: int) -> None:
        """Caller audio: feed every waiting detector and keep a short tail."""
        if rate != self.audio_rate:
            self.recent_audio.clear()
            self.audio_rate = rate
        self.audio_bytes_in += len(pcm16)
        self.recent_audio += pcm16
        excess = len(self.recent_audio) - int(_RECENT_AUDIO_S * rate) * 2
        if excess > 0:
            del self.recent_audio[:excess]
        for detector in self.listeners:
            detector.feed(pcm16, rate)

    def snapshot(self) -> ConversationState:
        """The state a resumption handle stands for: where the script is and the input it has not used yet."""
        return ConversationState(self.next_step, bytes(self.recent_audio), self.audio_rate, self.audio_bytes_in,
                                 tuple(self.pending_texts))

    def restore(self, state: ConversationState) -> None:
        """Resumed from an older handle: what the service heard and did after it is gone (the client sends
        its input again; the script runs the steps after the handle again). Counters of what was said stay."""
        self.next_step = state.next_step
        self.recent_audio = bytearray(state.recent_audio)
        self.audio_rate, self.audio_bytes_in = state.audio_rate, state.audio_bytes_in
        self.pending_texts = deque(state.pending_texts)

    def hear_end_of_stream(self) -> None:
        for detector in self.listeners:
            detector.end_of_stream()


class Connection:
    """One client WebSocket. Fault injection (`go_away`, `drop`, `close`, `send_raw`) works from tests."""

    def __init__(
        self,
        index: int,
        request: web.Request,
        ws: web.WebSocketResponse,
        clock: Callable[[], float],
        notify: Callable[[], None],
        *,
        binary: bool,
        speed: float,
    ) -> None:
        self.index = index
        self.path = request.path
        self.setup: dict[str, Any] = {}
        self.raw_setup: dict[str, Any] = {}
        self.received: list[Received] = []
        self.sent: list[Received] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.resumed_from: str | None = None
        self.conversation: Conversation | None = None
        self.client_messages = 0
        self.realtime_seen = False
        self.runner: asyncio.Task[None] | None = None
        self._request, self._ws, self._clock, self._notify = request, ws, clock, notify
        self._binary, self._speed = binary, speed
        self._timers: set[asyncio.Task[None]] = set()
        self._audio: list[bytes] = []

    @property
    def open(self) -> bool:
        return self.close_code is None and not self._ws.closed

    def audio_in(self) -> bytes:
        """All caller audio received on this connection, concatenated (16 kHz PCM16 from the bridge)."""
        return b"".join(self._audio)

    def texts(self) -> list[str]:
        """realtime_input texts received, in order."""
        return [r.message["realtimeInput"]["text"] for r in self.received if r.kind == "text"]

    def record_in(self, kind: str, message: dict[str, Any], audio: bytes | None = None) -> None:
        self.received.append(Received(self._clock(), kind, message))
        if audio is not None:
            self._audio.append(audio)
        self._notify()

    async def send(self, message: dict[str, Any], kind: str) -> None:
        """Send one server message (binary frames by default, as the real service does) and record it."""
        if not self.open:
            raise ConnectionGone(f"connection {self.index} is closed")
        text = json.dumps(message, separators=(",", ":"))
        try:
            if self._binary:
                await self._ws.send_bytes(text.encode())
            else:
                await self._ws.send_str(text)
        except (ConnectionError, RuntimeError) as exc:
            raise ConnectionGone(f"connection {self.index}: {exc}") from exc
        self.sent.append(Received(self._clock(), kind, message))
        self._notify()

    async def send_raw(self, message: dict[str, Any]) -> None:
        await self.send(message, "raw")

    async def go_away(self, time_left_s: float = 10.0, close_after: bool = True,
                      code: int = 1011, reason: str = "Deadline expired before operation could complete.") -> None:
        """goAway{timeLeft}; then, if the client is still here when the time is up (scaled by speed), close."""
        await self.send({"goAway": {"timeLeft": duration(time_left_s)}}, "go_away")
        if close_after:
            timer = asyncio.create_task(self._close_later(time_left_s / self._speed, code, reason))
            self._timers.add(timer)
            timer.add_done_callback(self._timers.discard)

    async def _close_later(self, delay: float, code: int, reason: str) -> None:
        await asyncio.sleep(delay)
        await self.close(code, reason)

    async def close(self, code: int = 1011, reason: str = "Internal error encountered.") -> None:
        """Close with a close frame carrying `code` and `reason` (surfaces in the SDK as APIError)."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, close_reason(reason)
            self._notify()
            with contextlib.suppress(ConnectionError):
                await self._ws.close(code=code, message=self.close_reason.encode())

    async def drop(self) -> None:
        """Abort the TCP connection without a close frame (the client sees 1006)."""
        if self.close_code is None:
            self.close_code, self.close_reason = 1006, "dropped by the emulator"
            self._notify()
            transport = self._request.transport
            if transport is not None:
                transport.abort()

    def finished(self, code: int | None, reason: str | None) -> None:
        """Called by the handler when the socket is gone: record how (unless we closed it), stop timers."""
        if self.close_code is None:
            self.close_code = code if code is not None else 1006
            self.close_reason = reason
        for timer in list(self._timers):
            timer.cancel()
        self._notify()

    async def wait_timers(self) -> None:
        if self._timers:
            await asyncio.wait(list(self._timers))
