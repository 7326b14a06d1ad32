"""Twilio's outbound playback buffer, modelled: pure, no I/O, time is a parameter.

What Twilio does with the audio a bidirectional stream sends it (shared/PROTOCOLS.md section 1):

- media payloads queue up in order and play at 8000 bytes (8000 mu-law samples) a second;
- a mark is echoed when all the audio queued before it has played, or at once if nothing is queued;
- ``clear`` drops all queued audio and echoes every pending mark at once.

The model keeps exact time: audio plays in *runs*; a run starts when audio arrives at an idle buffer and its
bytes are due at ``run_start + offset / bytes_per_second``, so however coarsely (or late) ``advance`` is
called, the audio is reported with the instant it started to play and marks come due where the audio before
them ends. ``now`` never goes backwards: a smaller ``now`` than one already seen is taken as the latest one
(this lets a driver "play instantly" by advancing to :meth:`PlaybackBuffer.drain_time`).

Every method returns marks to echo *now*, in order; played audio is reported only by :meth:`advance` /
:meth:`advance_segments`, so a driver calls ``advance`` whenever it wants to know what was heard.

:class:`LegCore` is the rest of a simulated Twilio leg, still without I/O: it builds the frames Twilio sends
(sequence numbers, chunks, timestamps), takes the bridge's frames (checking them as Twilio would) into the
buffer, and records what was said and heard, and when. It does its own JSON and base64 rather than reuse
``phonebridge.twilio.protocol``: a fake must not share the parser of the code it tests. :func:`parse_twiml` reads a
voice webhook's answer as Twilio does.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from phonebridge.audio import ulaw_decode


@dataclass(frozen=True, slots=True)
class _Mark:
    name: str


# Float products like 0.12 * 8000 land a hair below the integer (and timers fire a hair early); this keeps a
# byte from arriving a tick late. 1e-3 byte is 0.125 us at 8000 bytes/s.
_EPSILON_BYTES = 1e-3


class PlaybackBuffer:
    """Twilio's playback queue for one stream: ``enqueue``/``mark``/``clear`` in, ``advance(now)`` out."""

    def __init__(self, bytes_per_second: int = 8000) -> None:
        if bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be positive")
        self._bps = bytes_per_second
        self._queue: deque[bytes | _Mark] = deque()  # invariant after _settle: empty, or audio first
        self._head_played = 0  # bytes of the head chunk already played
        self._queued_bytes = 0  # audio bytes not yet played
        self._run_start = 0.0
        self._run_played = 0
        self._now = -math.inf
        self._out_segments: list[tuple[float, bytes]] = []
        self._out_marks: list[str] = []

    # -- inputs ---------------------------------------------------------------------------------------

    def enqueue(self, ulaw: bytes, now: float) -> list[str]:
        """Queue audio at ``now``; returns marks that came due up to ``now`` (to echo before anything else)."""
        self._settle(now)
        if ulaw:
            if self._queued_bytes == 0:
                self._begin_run(self._now)
            self._queue.append(bytes(ulaw))
            self._queued_bytes += len(ulaw)
        return self._take_marks()

    def mark(self, name: str, now: float) -> list[str]:
        """Queue a mark; it is among the returned names at once if no audio is waiting before it."""
        self._settle(now)
        if self._queued_bytes == 0:
            self._out_marks.append(name)
        else:
            self._queue.append(_Mark(name))
        return self._take_marks()

    def clear(self, now: float) -> list[str]:
        """Drop every byte not yet played at ``now``; returns every pending mark (due ones first)."""
        self._settle(now)
        for item in self._queue:
            if isinstance(item, _Mark):
                self._out_marks.append(item.name)
        self._queue.clear()
        self._head_played = 0
        self._queued_bytes = 0
        return self._take_marks()

    # -- outputs --------------------------------------------------------------------------------------

    def advance(self, now: float) -> tuple[bytes, list[str]]:
        """Play up to ``now``: the bytes played since the last call, and the marks that came due."""
        segments, marks = self.advance_segments(now)
        return b"".join(chunk for _, chunk in segments), marks

    def advance_segments(self, now: float) -> tuple[list[tuple[float, bytes]], list[str]]:
        """Like :meth:`advance`, with each contiguous stretch of audio paired with the time it began."""
        self._settle(now)
        segments, self._out_segments = self._out_segments, []
        return segments, self._take_marks()

    @property
    def buffered_bytes(self) -> int:
        """Audio queued and not yet played (as of the last ``now`` seen)."""
        return self._queued_bytes

    @property
    def pending_marks(self) -> tuple[str, ...]:
        """Marks waiting for the audio before them to play."""
        return tuple(item.name for item in self._queue if isinstance(item, _Mark))

    def drain_time(self) -> float | None:
        """When everything queued will have played, or None if nothing is queued."""
        if self._queued_bytes == 0:
            return None
        return self._time_at(self._run_played + self._queued_bytes)

    def next_mark_time(self) -> float | None:
        """When the first pending mark will come due, or None if there is none."""
        ahead = -self._head_played
        for item in self._queue:
            if isinstance(item, _Mark):
                return self._time_at(self._run_played + ahead)
            ahead += len(item)
        return None

    # -- the clockwork --------------------------------------------------------------------------------

    def _begin_run(self, now: float) -> None:
        self._run_start = now
        self._run_played = 0

    def _time_at(self, run_offset: int) -> float:
        return self._run_start + run_offset / self._bps

    def _settle(self, now: float) -> None:
        """Play everything due by ``now`` into the out-boxes."""
        self._now = max(self._now, now)
        if self._queued_bytes:
            due = math.floor((self._now - self._run_start) * self._bps + _EPSILON_BYTES) - self._run_played
            self._play(min(max(due, 0), self._queued_bytes))
        self._pop_due_marks()

    def _play(self, budget: int) -> None:
        started = self._time_at(self._run_played)
        played = bytearray()
        while budget > 0:
            self._pop_due_marks()
            head = self._queue[0]
            assert isinstance(head, bytes)  # _pop_due_marks leaves audio (or nothing) at the head
            take = min(budget, len(head) - self._head_played)
            played += head[self._head_played : self._head_played + take]
            self._head_played += take
            budget -= take
            if self._head_played == len(head):
                self._queue.popleft()
                self._head_played = 0
        if played:
            self._run_played += len(played)
            self._queued_bytes -= len(played)
            self._record(started, bytes(played))

    def _record(self, started: float, chunk: bytes) -> None:
        # Merge with the previous stretch when it ends exactly where this one begins (same run).
        if self._out_segments:
            last_start, last = self._out_segments[-1]
            if abs(last_start + len(last) / self._bps - started) < 0.5 / self._bps:
                self._out_segments[-1] = (last_start, last + chunk)
                return
        self._out_segments.append((started, chunk))

    def _pop_due_marks(self) -> None:
        while self._queue and isinstance(self._queue[0], _Mark):
            mark = self._queue.popleft()
            assert isinstance(mark, _Mark)
            self._out_marks.append(mark.name)

    def _take_marks(self) -> list[str]:
        marks, self._out_marks = self._out_marks, []
        return marks


@dataclass(frozen=True, slots=True)
class Received:
    """One message the bridge sent, with the call-timeline second it arrived."""

    t: float
    message: dict[str, Any]


class LegCore:
    """A Twilio media stream's far end without I/O: Twilio's frames out, the bridge's frames in."""

    def __init__(self, stream_sid: str, account_sid: str, call_sid: str, bytes_per_second: int = 8000) -> None:
        self.stream_sid, self.account_sid, self.call_sid = stream_sid, account_sid, call_sid
        self.buffer = PlaybackBuffer(bytes_per_second)
        self.events: list[Received] = []
        self.clears: list[float] = []
        self.marks_echoed: list[str] = []
        self.protocol_errors: list[str] = []  # what the bridge sent that Twilio would not accept
        self.media_bytes_received = 0
        self.heard: list[tuple[float, bytes]] = []  # (when it began to play, mu-law)
        self.heard_bytes = 0
        self.sent: list[tuple[float, bytes]] = []  # (start on the timeline, mu-law frame)
        self._seq = 0
        self._chunk = 0

    # -- what Twilio sends: each method returns the text frame to send now ----------------------------

    def webhook_form(self, from_number: str, to_number: str) -> dict[str, str]:
        """The form of Twilio's voice webhook for an inbound call."""
        form = {"AccountSid": self.account_sid, "ApiVersion": "2010-04-01", "CallSid": self.call_sid,
                "CallStatus": "ringing", "Direction": "inbound", "From": from_number, "To": to_number,
                "Caller": from_number, "Called": to_number}  # fmt: skip
        for prefix in ("From", "To", "Caller", "Called"):
            form.update({f"{prefix}City": "", f"{prefix}State": "", f"{prefix}Zip": "", f"{prefix}Country": "US"})
        return form

    def connected(self) -> str:
        return json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    def start(self, parameters: dict[str, str], rate: int = 8000) -> str:
        media_format = {"encoding": "audio/x-mulaw", "sampleRate": rate, "channels": 1}
        start = {"streamSid": self.stream_sid, "accountSid": self.account_sid, "callSid": self.call_sid,
                 "tracks": ["inbound"], "customParameters": parameters, "mediaFormat": media_format}  # fmt: skip
        return self.event("start", {"start": start})

    def media(self, frame: bytes, start: float) -> str:
        """A media frame that began at ``start`` seconds on the call's timeline."""
        self._chunk += 1
        self.sent.append((start, frame))
        media = {"track": "inbound", "chunk": str(self._chunk), "timestamp": str(round(start * 1000)),
                 "payload": base64.b64encode(frame).decode("ascii")}  # fmt: skip
        return self.event("media", {"media": media})

    def dtmf(self, digit: str) -> str:
        return self.event("dtmf", {"dtmf": {"track": "inbound_track", "digit": digit}})

    def mark(self, name: str) -> str:
        return self.event("mark", {"mark": {"name": name}})

    def stop(self) -> str:
        return self.event("stop", {"stop": {"accountSid": self.account_sid, "callSid": self.call_sid}})

    def event(self, event: str, body: dict[str, Any]) -> str:
        """Any sequenced event: ``sequenceNumber`` is shared by all of them and rises by one."""
        self._seq += 1
        return json.dumps({"event": event, "sequenceNumber": str(self._seq), "streamSid": self.stream_sid, **body})

    # -- what the bridge sends ------------------------------------------------------------------------

    def receive(self, text: str, now: float) -> list[str]:
        """Take one text frame; returns the marks to echo now, in order (bad frames are recorded, not played)."""
        try:
            message = json.loads(text)
            if not isinstance(message, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            self.protocol_errors.append(f"bad JSON: {exc}")
            return []
        self.events.append(Received(now, message))
        if message.get("streamSid") != self.stream_sid:
            self.protocol_errors.append(f"wrong or missing streamSid in {message.get('event')!r}")
            return []
        try:
            return self._echo(self._apply(message, now))
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            self.protocol_errors.append(f"malformed {message.get('event')!r}: {exc!r}")
            return []

    def advance(self, now: float) -> list[str]:
        """Play what is due at ``now``; returns the marks that came due."""
        segments, marks = self.buffer.advance_segments(now)
        self.heard.extend(segments)
        self.heard_bytes += sum(len(chunk) for _, chunk in segments)
        return self._echo(marks)

    def heard_ulaw(self) -> bytes:
        return b"".join(chunk for _, chunk in self.heard)

    def _apply(self, message: dict[str, Any], now: float) -> list[str]:
        event = message["event"]
        if event == "media":
            payload = base64.b64decode(message["media"]["payload"], validate=True)
            self.media_bytes_received += len(payload)
            return self.buffer.enqueue(payload, now)
        if event == "mark":
            return self.buffer.mark(str(message["mark"]["name"]), now)
        if event == "clear":
            self.clears.append(now)
            return self.buffer.clear(now)
        raise ValueError(f"unknown event {event!r}")

    def _echo(self, marks: list[str]) -> list[str]:
        self.marks_echoed.extend(marks)
        return marks


def render_timeline(segments: list[tuple[float, bytes]], rate: int = 8000) -> bytes:
    """mu-law stretches with start times -> PCM16 on the timeline, silence where nothing was."""
    end = max((round(t * rate) + len(chunk) for t, chunk in segments), default=0)
    out = np.zeros(end, dtype="<i2")
    for t, chunk in segments:
        start = max(round(t * rate), 0)
        out[start : start + len(chunk)] = np.frombuffer(ulaw_decode(chunk), dtype="<i2")[: end - start]
    return out.tobytes()


def parse_twiml(body: str) -> tuple[str, dict[str, str]]:
    """TwiML -> (stream url without its query, as Twilio uses it; ``<Parameter>``s). ValueError if Twilio
    could not stream it: not TwiML, no ``<Connect><Stream url>``, or not ``wss://``."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise ValueError(f"the answer is not TwiML: {exc}") from None
    stream = root.find("./Connect/Stream")
    url = stream.get("url", "") if stream is not None and root.tag == "Response" else ""
    if stream is None or not url:
        raise ValueError("the TwiML has no <Connect><Stream url=...>")
    parts = urlsplit(url)
    if parts.scheme != "wss":
        raise ValueError(f"Twilio streams only to wss:// URLs, not {url}")
    params = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), params
