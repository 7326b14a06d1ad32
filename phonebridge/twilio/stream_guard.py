"""Sans-I/O: what a media stream must prove, and keep doing, to be kept. Time is a parameter.

- At ``start``: the call's stream token (issued in the TwiML our webhook answered) for *this* callSid and
  accountSid, and our account when TWILIO_ACCOUNT_SID is set. A signed upgrade alone proves nothing about
  the call: Twilio signs the same ``wss://host/twilio/media`` URL for every call, so a captured header would
  otherwise let anyone name another live call's callSid and have our REST hang-up or transfer act on it.
- Before ``start``: the socket must send it within ``start_timeout_s`` (frames before it do not count),
  so idle signed sockets cannot hold the call slots.
- After ``start``: some frame at least every ``media_timeout_s`` (Twilio sends media every 20 ms).
- One stream per callSid, once, per server process (:class:`CallClaims`): the token is stateless, so a
  captured ``start`` replayed on another socket carries a genuine token; without this it opened a second
  Live session for the live call, whose media timeout (or ``end_call``) then hung the victim up.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import phonebridge.twilio.protocol as twilio
from phonebridge.twilio.signatures import STREAM_TOKEN_PARAMETER, StreamTokens

START_TIMEOUT_S = 10.0
MEDIA_TIMEOUT_S = 15.0
REMEMBER_ENDED = 4096  # ended callSids kept to refuse replays; ~100 bytes each


@dataclass(frozen=True)
class StreamGuard:
    """One app's stream rules. ``tokens`` None: tokens are not checked (signature validation is off)."""

    tokens: StreamTokens | None = None
    account_sid: str | None = None
    start_timeout_s: float = START_TIMEOUT_S
    media_timeout_s: float = MEDIA_TIMEOUT_S
    log_gate: SparseLog = field(default_factory=lambda: SparseLog(), compare=False)  # shared by the app's calls
    remember_ended: int = REMEMBER_ENDED
    claims: CallClaims = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "claims", CallClaims(self.remember_ended))

    def refusal(self, start: twilio.Start) -> str | None:
        """None when this ``start`` may open a call, which then holds its callSid until :meth:`release`;
        otherwise the reason (a metric label)."""
        if self.tokens is None:
            return None
        if self.account_sid and start.account_sid != self.account_sid:
            return "wrong_account"
        token = start.custom_parameters.get(STREAM_TOKEN_PARAMETER)
        if not token:
            return "missing_token"
        if not self.tokens.valid(start.call_sid, start.account_sid, token):
            return "bad_token"
        return self.claims.claim(start.call_sid)

    def release(self, call_sid: str) -> None:
        """The stream that opened ``call_sid`` has ended (harmless for a callSid it never claimed)."""
        self.claims.release(call_sid)


class CallClaims:
    """The callSids this process is streaming, and the last ``remember`` it streamed. Twilio opens one
    stream per ``<Connect><Stream>``, and phonebridge's TwiML never leads back to it for the same call, so a
    second ``start`` for a callSid is a replay: while the call is live ("duplicate_stream") or after
    ("replayed_stream": the call may still be live, in the fallback ``<Dial>``). Per process only: tokens
    stay stateless, so a replay reaching another instance is not caught (see docs/robustness.md)."""

    __slots__ = ("_ended", "_live", "_remember")

    def __init__(self, remember: int = REMEMBER_ENDED) -> None:
        self._remember = remember
        self._live: set[str] = set()
        self._ended: OrderedDict[str, None] = OrderedDict()

    def claim(self, call_sid: str) -> str | None:
        if call_sid in self._live:
            return "duplicate_stream"
        if call_sid in self._ended:
            return "replayed_stream"
        self._live.add(call_sid)
        return None

    def release(self, call_sid: str) -> None:
        if call_sid not in self._live:
            return
        self._live.discard(call_sid)
        self._ended[call_sid] = None
        while len(self._ended) > self._remember:
            self._ended.popitem(last=False)  # the oldest first

    def ended_count(self) -> int:
        return len(self._ended)


def agent_parameters(start: twilio.Start) -> dict[str, str]:
    """The ``<Parameter>``s the agent sees: everything but the stream token."""
    return {k: v for k, v in start.custom_parameters.items() if k != STREAM_TOKEN_PARAMETER}


class IdleWatch:
    """When a stream has been quiet too long: ``expired(now)`` gives "no_start" or "media_timeout"."""

    __slots__ = ("_media_s", "_start_s", "last", "started")

    def __init__(self, start_timeout_s: float, media_timeout_s: float, now: float) -> None:
        self._start_s, self._media_s = start_timeout_s, media_timeout_s
        self.last, self.started = now, False

    def on_start(self, now: float) -> None:
        self.started, self.last = True, now

    def on_frame(self, now: float) -> None:
        """Any frame after ``start`` (before it, frames do not delay the start deadline)."""
        if self.started:
            self.last = now

    def deadline(self) -> float:
        return self.last + (self._media_s if self.started else self._start_s)

    def expired(self, now: float) -> str | None:
        if now < self.deadline():
            return None
        return "media_timeout" if self.started else "no_start"


class SparseLog:
    """Whether to log the n-th occurrence of a repeated refusal: the first ``first`` ones, then at most once
    per ``every_s`` seconds (the line carries the count, so nothing is lost but the repetition)."""

    __slots__ = ("_every_s", "_first", "_last_logged", "count")

    def __init__(self, first: int = 5, every_s: float = 60.0) -> None:
        self._first, self._every_s = first, every_s
        self.count = 0
        self._last_logged: float | None = None

    def should_log(self, now: float) -> bool:
        """Count one occurrence; True when this one should be logged."""
        self.count += 1
        if self.count <= self._first or self._last_logged is None or now - self._last_logged >= self._every_s:
            self._last_logged = now
            return True
        return False
