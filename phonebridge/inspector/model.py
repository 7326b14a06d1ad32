"""Sans-I/O: a cassette as a call timeline: what the caller said and heard, when, and what the agent did.

Times here are *line time*: seconds on the phone line as the caller lived it. A cassette's own `t` is the
bridge's clock, which is the line's in a real call but runs many times faster in a test recording (the
emulator and the simulated caller go flat out). So the line clock is rebuilt from the audio itself:

- the caller's stream is a clock: each inbound frame is its own length of speech, and it arrives once spoken;
- the agent's audio plays in order at 8000 bytes a second from when it was queued, like Twilio's buffer;
- an echoed mark proves the audio before it has played, so the line is at least that far on;
- a `clear` empties the buffer: what had not played by then was never heard;
- and line time never runs behind the recorded `t`.
In a real-time recording these agree with `t`; in a fast one they spread the call out as it would have sounded.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from phonebridge.errors import PhonebridgeError
from phonebridge.inspector.audio import RATE, Envelope, envelope, peak
from phonebridge.cassette.record import Cassette, Record, decode_bytes

JITTER_S = 0.06  # caller frames up to this late (3 frames) still follow on from the previous one
VOICED_PEAK = 1000  # of 32767: a caller frame louder than this has speech in it (line noise is far below)


@dataclass(frozen=True)
class Utterance:
    """One line of the transcript. For the agent, `unheard` is the part cut off by a barge-in."""

    at: float
    who: str  # "caller" or "agent"
    text: str
    unheard: str = ""
    turn: int | None = None


@dataclass(frozen=True)
class ToolCall:
    at: float  # line time the model asked for it
    done_at: float  # line time its answer was recorded
    id: str
    name: str
    args: Any
    status: str
    response: Any
    latency_s: float | None


@dataclass(frozen=True)
class BargeIn:
    at: float  # line time of the clear
    turn: int
    sent_s: float  # agent audio of the turn sent to Twilio
    heard_s: float  # of it, played before the clear
    confirmed_s: float  # of it, proven played by an echoed mark
    heard_text: str
    unheard_text: str


@dataclass(frozen=True)
class Event:
    """A point on the timeline: mark, echo, clear, reconnect, dtmf, interrupted, go_away, prompt, stop."""

    at: float
    kind: str
    label: str


@dataclass(frozen=True)
class Timeline:
    path: str
    header: dict[str, Any]
    complete: bool
    dropped: int
    duration_s: float
    caller_audio: tuple[tuple[float, bytes], ...]  # (line time, mu-law) runs the caller spoke
    agent_audio: tuple[tuple[float, bytes], ...]  # (line time, mu-law) runs the caller heard
    caller_envelope: Envelope
    agent_envelope: Envelope
    utterances: tuple[Utterance, ...]
    tools: tuple[ToolCall, ...]
    barge_ins: tuple[BargeIn, ...]
    events: tuple[Event, ...]
    first_audio_s: float | None

    def count(self, kind: str) -> int:
        return sum(e.kind == kind for e in self.events)

    @property
    def reconnects(self) -> int:
        return self.count("reconnect")


@dataclass
class _Segment:
    start: float
    ulaw: bytes
    turn: int = 0


@dataclass
class _Mark:
    played_at: float  # line time the audio before it finished playing
    turn: int
    turn_bytes: int


@dataclass
class _Turn:
    number: int
    sent: int = 0
    heard_limit: int | None = None  # bytes heard, once a clear cut the turn
    confirmed: int = 0
    chunks: list[tuple[int, str, bool]] = field(default_factory=list)  # (byte offset, text, arrived while cut)
    started_at: float | None = None


class _Builder:
    """Walks the records in order, keeping the line clock and the call's state as the bridge saw it."""

    def __init__(self) -> None:
        self.now = 0.0  # line time
        self.inbound_end = 0.0
        self.queue_end = 0.0
        self.caller: list[_Segment] = []
        self.agent: list[_Segment] = []
        self.marks: dict[str, _Mark] = {}
        self.utterances: list[Utterance] = []
        self.tools: list[ToolCall] = []
        self.barge_ins: list[BargeIn] = []
        self.events: list[Event] = []
        self.asked_at: dict[str, float] = {}
        self.turn: _Turn | None = None  # the agent turn being spoken (or cut and not yet complete)
        self.next_turn = 1
        self.cut = False
        self.closed = False  # turn_complete came; the bridge's last frames of the turn may still follow
        self.voiced: list[float] = []  # line times of caller frames with speech in them
        self.caller_text: list[str] = []
        self.caller_at = 0.0
        self.caller_since = 0.0  # where the caller's current line can start: after their previous one
        self.caller_done = False
        self._handlers = {
            "twilio_in": self._twilio_in, "twilio_out": self._twilio_out, "model_connect": self._model_connect,
            "model_in": self._model_in, "model_out": self._model_out, "tool": self._tool,
        }

    def feed(self, record: Record) -> None:
        self.now = max(self.now, record.t if math.isfinite(record.t) else 0.0)
        data = record.data if isinstance(record.data, dict) else {}
        handler = self._handlers.get(record.kind)
        if handler is not None:
            handler(data)

    # -- Twilio ------------------------------------------------------------------------------------------

    def _twilio_in(self, data: dict[str, Any]) -> None:
        event = data.get("event")
        if event == "media" and _get(data, "media", "track") in (None, "inbound") and (ulaw := _payload(data)):
            length = len(ulaw) / RATE
            # A frame arrives once spoken; jitter within JITTER_S keeps the stream back to back.
            start = max(self.inbound_end, self.now - length - JITTER_S)
            self.caller.append(_Segment(start, ulaw))
            if peak(ulaw) >= VOICED_PEAK:
                self.voiced.append(start)
            self.inbound_end = start + length
            self.now = max(self.now, self.inbound_end)
        elif event == "mark":
            name = str(_get(data, "mark", "name"))
            mark = self.marks.pop(name, None)
            if mark is not None:
                self.now = max(self.now, mark.played_at)
                if self.turn is not None and mark.turn == self.turn.number:
                    self.turn.confirmed = max(self.turn.confirmed, mark.turn_bytes)
            self.events.append(Event(self.now, "echo", name))
        elif event == "dtmf":
            self.events.append(Event(self.now, "dtmf", str(_get(data, "dtmf", "digit"))))
        elif event == "stop":
            self.events.append(Event(self.now, "stop", "the caller hung up"))

    def _twilio_out(self, data: dict[str, Any]) -> None:
        event = data.get("event")
        if event == "media":
            self._agent_media(_payload(data))
        elif event == "mark":
            name = str(_get(data, "mark", "name"))
            turn = self.turn
            self.marks[name] = _Mark(self.queue_end, turn.number if turn else 0, turn.sent if turn else 0)
            self.events.append(Event(self.now, "mark", name))
        elif event == "clear":
            self._clear()

    def _agent_media(self, ulaw: bytes) -> None:
        if not ulaw:
            return
        if self.turn is None:
            self.turn = _Turn(self.next_turn)
            self.next_turn += 1
        start = max(self.queue_end, self.now)
        if self.turn.started_at is None:
            self.turn.started_at = start
        self.agent.append(_Segment(start, ulaw, self.turn.number))
        self.turn.sent += len(ulaw)
        self.queue_end = start + len(ulaw) / RATE

    def _clear(self) -> None:
        turn, now = self.turn, self.now
        unplayed = 0  # of this turn; the queue is in order, so what had not played is at its end
        while self.agent and self.agent[-1].start + len(self.agent[-1].ulaw) / RATE > now:
            segment = self.agent.pop()
            played = min(len(segment.ulaw), max(0, round((now - segment.start) * RATE)))
            if turn is not None and segment.turn == turn.number:
                unplayed += len(segment.ulaw) - played
            if played:
                self.agent.append(_Segment(segment.start, segment.ulaw[:played], segment.turn))
                break
        self.queue_end = min(self.queue_end, now)
        self.marks = {n: m for n, m in self.marks.items() if m.played_at <= now}  # the rest prove nothing now
        self.events.append(Event(now, "clear", "Twilio's buffer emptied"))
        if turn is not None and turn.heard_limit is None:
            heard = turn.heard_limit = turn.sent - unplayed
            heard_text, unheard_text = _split(turn)
            self.barge_ins.append(BargeIn(now, turn.number, turn.sent / RATE, heard / RATE, turn.confirmed / RATE,
                                          heard_text, unheard_text))

    # -- the model ---------------------------------------------------------------------------------------

    def _model_connect(self, data: dict[str, Any]) -> None:
        cause = str(data.get("cause", "?"))
        if cause != "start":
            how = "resumed" if data.get("resumed") else "seeded" if data.get("seeded") else "fresh"
            self.events.append(Event(self.now, "reconnect", f"model reconnected ({cause}, {how})"))

    def _model_out(self, data: dict[str, Any]) -> None:
        body = data.get("realtime_input")
        if isinstance(body, dict) and isinstance(body.get("text"), str):
            self.events.append(Event(self.now, "prompt", body["text"]))

    def _model_in(self, data: dict[str, Any]) -> None:
        content = data.get("server_content")
        if isinstance(content, dict):
            self._server_content(content)
        calls = _get(data, "tool_call", "function_calls")
        if self.closed and calls:
            self._end_turn()
        for call in calls if isinstance(calls, list) else []:
            if isinstance(call, dict):
                self.asked_at.setdefault(str(call.get("id")), self.now)
        if "tool_call_cancellation" in data:
            ids = _get(data, "tool_call_cancellation", "ids")
            self.events.append(Event(self.now, "cancel", f"model cancelled {ids}"))
        if "go_away" in data:
            self.events.append(Event(self.now, "go_away", f"goAway {_get(data, 'go_away', 'time_left') or ''}"))

    def _server_content(self, content: dict[str, Any]) -> None:
        if self.closed and ("model_turn" in content or "output_transcription" in content):
            self._end_turn()  # the next turn begins
        heard_by_caller = _get(content, "input_transcription", "text")
        if isinstance(heard_by_caller, str) and heard_by_caller:
            self._caller_chunk(heard_by_caller, bool(_get(content, "input_transcription", "finished")))
        said = _get(content, "output_transcription", "text")
        if isinstance(said, str) and said:
            self._agent_chunk(said)
        if content.get("interrupted"):
            self.events.append(Event(self.now, "interrupted", "the model heard the caller and stopped"))
            self.cut = self.turn is not None
        if content.get("turn_complete"):
            self.closed = self.turn is not None

    def _caller_chunk(self, text: str, finished: bool) -> None:
        if self.caller_done or not self.caller_text:
            self._flush_caller()
            self.caller_at = self.now
        self.caller_text.append(text)
        self.caller_done = finished

    def _agent_chunk(self, text: str) -> None:
        self._flush_caller()
        if self.turn is None:  # text ahead of the turn's first audio
            self.turn = _Turn(self.next_turn)
            self.next_turn += 1
        self.turn.chunks.append((self.turn.sent, text, self.cut))

    def _end_turn(self) -> None:
        turn, self.turn, self.cut, self.closed = self.turn, None, False, False
        if turn is None or not turn.chunks:
            return
        heard, unheard = _split(turn)
        for index, barge in enumerate(self.barge_ins):  # words that came after the clear were never heard either
            if barge.turn == turn.number:
                self.barge_ins[index] = dataclasses.replace(barge, heard_text=heard, unheard_text=unheard)
        at = turn.started_at if turn.started_at is not None else self.now
        self.utterances.append(Utterance(at, "agent", heard, unheard, turn.number))

    def _flush_caller(self) -> None:
        text = "".join(self.caller_text).strip()
        if text:
            # The transcription comes once the words are said: the line starts at the first speech since the
            # caller's previous line.
            first = bisect.bisect_right(self.voiced, self.caller_since)
            spoken = self.voiced[first] if first < len(self.voiced) else self.caller_at
            self.utterances.append(Utterance(min(spoken, self.caller_at), "caller", text))
            self.caller_since = self.caller_at
        self.caller_text, self.caller_done = [], False

    # -- tools -------------------------------------------------------------------------------------------

    def _tool(self, data: dict[str, Any]) -> None:
        call_id = str(data.get("id"))
        latency = data.get("latency_s")
        self.tools.append(ToolCall(
            self.asked_at.get(call_id, self.now), self.now, call_id, str(data.get("name")), data.get("args"),
            str(data.get("status")), data.get("response"),
            float(latency) if isinstance(latency, (int, float)) and math.isfinite(latency) else None,
        ))

    def finish(self) -> None:
        self._flush_caller()
        if self.turn is not None:  # the call ended mid-turn
            self._end_turn()


def build_timeline(cassette: Cassette) -> Timeline:
    """The call in `cassette` as a timeline; PhonebridgeError if its records cannot be read as a call."""
    builder = _Builder()
    for record in cassette.records:
        builder.feed(record)
    builder.finish()
    ends = [builder.now, builder.inbound_end, builder.queue_end]
    ends += [s.start + len(s.ulaw) / RATE for s in builder.agent]
    duration = max(ends)
    caller, agent = _runs(builder.caller), _runs(builder.agent)
    utterances = sorted(builder.utterances, key=lambda u: u.at)
    return Timeline(
        cassette.path, cassette.header, cassette.complete, cassette.dropped, duration, caller, agent,
        envelope(caller, duration), envelope(agent, duration), tuple(utterances), tuple(builder.tools),
        tuple(builder.barge_ins), tuple(builder.events),
        builder.agent[0].start if builder.agent else None,
    )


def _split(turn: _Turn) -> tuple[str, str]:
    """The turn's transcript split where the caller stopped hearing it."""
    limit = turn.heard_limit
    heard = "".join(t for at, t, cut in turn.chunks if not cut and (limit is None or at < limit))
    unheard = "".join(t for at, t, cut in turn.chunks if cut or (limit is not None and at >= limit))
    return heard.strip(), unheard.strip()


def _runs(segments: list[_Segment]) -> tuple[tuple[float, bytes], ...]:
    """Back-to-back segments merged into runs (a 20 ms frame each is too many to draw or embed one by one)."""
    runs: list[tuple[float, bytearray]] = []
    for segment in sorted(segments, key=lambda s: s.start):
        if runs and abs(runs[-1][0] + len(runs[-1][1]) / RATE - segment.start) < 0.5 / RATE:
            runs[-1][1].extend(segment.ulaw)
        else:
            runs.append((segment.start, bytearray(segment.ulaw)))
    return tuple((start, bytes(data)) for start, data in runs)


def _payload(data: dict[str, Any]) -> bytes:
    payload = _get(data, "media", "payload")
    if not isinstance(payload, str):
        return b""
    try:
        return decode_bytes(payload)
    except PhonebridgeError:
        return b""  # the bridge counted it as malformed too; the viewer draws the rest of the call


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data
