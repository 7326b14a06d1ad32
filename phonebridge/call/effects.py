"""Sans-I/O: what the call core (phonebridge.call.core) hands its pump, and the statistics it keeps. Plain
frozen dataclasses; the pump (phonebridge.call.bridge) executes each one.

Messages for the model link: Say (send text), Remember (keep a transcript line for a reconnection).
Effects: Open, Refuse, Expire, Stopped (the stream), Cleared (a barge-in's clear went out), StartTools,
CancelTools, SendToolResponse (phonebridge.call.tool_turns decides when), Observe (for the app's observers), and
phonebridge.call.state's HangUp and Transfer. Tool calls and results are phonebridge.call.tool_types', never the SDK's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import phonebridge.twilio.protocol as twilio
from phonebridge.call.state import HangUp, Transfer
from phonebridge.call.tool_types import ToolCall, ToolResult


@dataclass
class CallStats:
    """What happened on one call: for the summary log line, metrics and tests."""

    started: float = 0.0  # on the pump's monotonic clock; the core is given it, it reads no clock
    call_sid: str = ""
    outcome: str = "unknown"
    frames_in: int = 0
    frames_out: int = 0
    malformed: int = 0
    ignored: int = 0
    lost_frames: int = 0
    dtmf: list[str] = field(default_factory=list)
    turns: int = 0
    barge_ins: int = 0
    tool_calls: int = 0
    hold_plays: int = 0
    first_audio_s: float | None = None
    prompt_tokens: int = 0
    response_tokens: int = 0
    transcript: list[tuple[float, str, str]] = field(default_factory=list)


# -- what the core asks of the model link ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Say:
    """Send this text to the model as the caller's side of the conversation (e.g. a keypad press)."""
    text: str
    about: str  # for the log line if it cannot be sent


@dataclass(frozen=True, slots=True)
class Remember:
    """Keep this transcript line in the history a reconnection replays ("user" or "model")."""
    role: str
    text: str


ModelMessage = Say | Remember


# -- what the core asks the pump to do (HangUp and Transfer come from phonebridge.call.state) -------------------

@dataclass(frozen=True, slots=True)
class Open:
    """A `start` proved it belongs to our call: open the model session, tools and recording for it."""
    start: twilio.Start
    parameters: dict[str, str]


@dataclass(frozen=True, slots=True)
class Refuse:
    """The stream guard refused this `start` (`reason` a metric label): close with 1008, open nothing."""
    start: twilio.Start
    reason: str


@dataclass(frozen=True, slots=True)
class Expire:
    """A stream guard deadline passed: "no_start" (close with 1008) or "media_timeout" (hang up)."""
    reason: str


@dataclass(frozen=True, slots=True)
class Stopped:
    """Twilio's `stop` for our stream: the caller hung up."""


@dataclass(frozen=True, slots=True)
class Cleared:
    """A `clear` for a barge-in went out (for the reaction-time metric, from `received_at` of the cause)."""
    received_at: float = field(default=0.0, compare=False)


@dataclass(frozen=True, slots=True)
class StartTools:
    """Run these calls' handlers now, and report each outcome back (Call.tool_finished)."""
    calls: tuple[ToolCall, ...]
    received_at: float = field(default=0.0, compare=False)  # when their toolCall came off the socket


@dataclass(frozen=True, slots=True)
class SendToolResponse:
    """Send these answers on connection `epoch` only, then tell the core whether it went (Call.tool_response_sent)."""
    number: int
    epoch: int
    results: tuple[ToolResult, ...]


@dataclass(frozen=True, slots=True)
class CancelTools:
    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Observe:
    """An event for the app's call observers."""
    kind: str
    data: dict[str, Any]


Effect = (
    Open | Refuse | Expire | Stopped | Cleared | StartTools | CancelTools | SendToolResponse | Observe | HangUp | Transfer
)
