"""Sans-I/O: the call's outbound state machine (no clock either: `now` is a parameter).

It knows what was queued to Twilio and what the caller has actually heard. Marks are the only proof of
playback: we send one after every ~100 ms of agent audio and at each turn's end, and a mark echoed
because of a `clear` proves nothing, so marks outstanding at a clear are written off. Inputs are events
from the model and from Twilio; outputs are actions that phonebridge.call.core.Call turns into frames and
effects, in order.

The turn state is the table `TURN` below; audio that arrives while `cut` belongs to the interrupted turn
and is dropped. Every model event has a move in every state (the peer may send any of them at any time);
a move the table lacks is our own bug and raises LocalProtocolError.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from phonebridge.errors import LocalProtocolError

BYTES_PER_SECOND = 8000  # 8 kHz mu-law: one byte a sample

IDLE, SPEAKING, CUT = "idle", "speaking", "cut"
AUDIO, INTERRUPTED, TURN_COMPLETE = "audio", "interrupted", "turn_complete"

TURN: dict[str, dict[str, str]] = {  # state -> event -> next state
    IDLE: {AUDIO: SPEAKING, INTERRUPTED: IDLE, TURN_COMPLETE: IDLE},  # a stray `interrupted` cuts nothing
    SPEAKING: {AUDIO: SPEAKING, INTERRUPTED: CUT, TURN_COMPLETE: IDLE},
    CUT: {AUDIO: CUT, INTERRUPTED: CUT, TURN_COMPLETE: IDLE},  # late audio of the cut turn is dropped here
}


def next_turn_state(state: str, event: str) -> str:
    """The move `event` makes from `state`; a move the table lacks is our bug, not the peer's."""
    try:
        return TURN[state][event]
    except KeyError:
        raise LocalProtocolError(f"no turn move for {event!r} in state {state!r}") from None


@dataclass(frozen=True, slots=True)
class SendMedia:
    ulaw: bytes


@dataclass(frozen=True, slots=True)
class SendMark:
    name: str


@dataclass(frozen=True, slots=True)
class SendClear:
    pass


@dataclass(frozen=True, slots=True)
class HangUp:
    reason: str


@dataclass(frozen=True, slots=True)
class Transfer:
    target: str


Action = SendMedia | SendMark | SendClear | HangUp | Transfer


@dataclass(frozen=True, slots=True)
class BargeIn:
    turn: int
    sent_bytes: int
    heard_bytes: int

    @property
    def heard_s(self) -> float:
        return self.heard_bytes / BYTES_PER_SECOND


@dataclass(slots=True)
class _MarkInfo:
    turn: int
    turn_bytes: int


@dataclass
class CallState:
    """What the caller was sent and has heard; when to hang up or transfer."""

    mark_every_bytes: int = 800
    end_action_grace_s: float = 15.0
    turn: int = 0
    phase: str = IDLE
    barge_ins: list[BargeIn] = field(default_factory=list)
    dropped_cut_bytes: int = 0
    _marks: dict[str, _MarkInfo] = field(default_factory=dict)
    _written_off: set[str] = field(default_factory=set)
    _mark_seq: int = 0
    _turn_sent: int = 0
    _unmarked: int = 0
    _turn_heard: int = 0
    _heard_at: float | None = None
    _first_sent_at: float | None = None
    _pending: HangUp | Transfer | None = None
    _pending_deadline: float = 0.0
    _pending_armed: bool = False

    @property
    def speaking(self) -> bool:
        return self.phase == SPEAKING

    @property
    def cut(self) -> bool:
        return self.phase == CUT

    # -- the model's side ------------------------------------------------------------------------------

    def drop_cut(self, ulaw_bytes: int) -> bool:
        """True (and counted) when the turn is cut: its late audio is dropped, even before transcoding."""
        if self.phase == CUT:
            self.dropped_cut_bytes += ulaw_bytes
            return True
        return False

    def agent_audio(self, frames: list[bytes], now: float) -> list[Action]:
        """Frames of mu-law for the current turn -> media (and marks) to send, or nothing if the turn is cut."""
        size = sum(len(f) for f in frames)
        if self.drop_cut(size) or not size:
            return []
        if self.phase == IDLE:
            self.phase, self.turn = next_turn_state(self.phase, AUDIO), self.turn + 1
            self._turn_sent, self._turn_heard, self._heard_at, self._first_sent_at = 0, 0, None, now
        actions: list[Action] = []
        for frame in frames:
            if not frame:
                continue
            actions.append(SendMedia(frame))
            self._turn_sent += len(frame)
            self._unmarked += len(frame)
            if self._unmarked >= self.mark_every_bytes:
                actions.append(self._mark())
        return actions

    def agent_interrupted(self, now: float) -> list[Action]:
        """The caller barged in: clear Twilio's buffer and write off everything queued for this turn."""
        if self.phase != SPEAKING:
            # Cut already, or nothing of this turn was sent: nothing to cut, and a stray `interrupted` (no
            # turnComplete after it) must not silence the next turn.
            return [SendClear()] if self._marks and self.phase == IDLE else []
        self.phase = next_turn_state(self.phase, INTERRUPTED)
        heard = self._estimate_heard(now)
        self.barge_ins.append(BargeIn(self.turn, self._turn_sent, heard))
        self._written_off.update(self._marks)
        self._marks.clear()
        self._unmarked = 0
        return [SendClear()]

    def agent_turn_complete(self, now: float) -> list[Action]:
        actions: list[Action] = []
        if self.speaking and self._unmarked:
            actions.append(self._mark())
        was_cut = self.cut
        self.phase = next_turn_state(self.phase, TURN_COMPLETE)
        if self._pending is not None and not was_cut:
            self._pending_armed = True
        return actions + self._pending_due(now)

    # -- Twilio's side ---------------------------------------------------------------------------------

    def twilio_mark(self, name: str, now: float) -> list[Action]:
        """A mark came back: the audio before it has played (unless it was written off by a clear)."""
        if name in self._written_off:
            self._written_off.discard(name)
            return []
        info = self._marks.pop(name, None)
        if info is None:
            return []
        # Marks come back in order, so any older outstanding mark has played too.
        for older in [n for n, i in self._marks.items() if (i.turn, i.turn_bytes) <= (info.turn, info.turn_bytes)]:
            del self._marks[older]
        if info.turn == self.turn:
            self._turn_heard, self._heard_at = info.turn_bytes, now
        return self._pending_due(now)

    @property
    def all_played(self) -> bool:
        """Everything sent has been confirmed played (or cleared)."""
        return not self._marks and self._unmarked == 0

    # -- ending the call after the agent's last words ----------------------------------------------------

    def request_hang_up(self, now: float) -> list[Action]:
        return self._request(HangUp("agent ended the call"), now)

    def request_transfer(self, target: str, now: float) -> list[Action]:
        return self._request(Transfer(target), now)

    def tick(self, now: float) -> list[Action]:
        """Deadlines: the end action happens at the latest `end_action_grace_s` after it was asked for."""
        if self._pending is not None and now >= self._pending_deadline:
            return self._fire()
        return []

    @property
    def pending_deadline(self) -> float | None:
        return self._pending_deadline if self._pending is not None else None

    def _request(self, action: HangUp | Transfer, now: float) -> list[Action]:
        self._pending, self._pending_deadline = action, now + self.end_action_grace_s
        # The agent speaks its goodbye after the tool response; if it is idle, nothing more is coming.
        self._pending_armed = False
        return []

    def _pending_due(self, now: float) -> list[Action]:
        if self._pending is not None and self._pending_armed and self.all_played:
            return self._fire()
        return []

    def _fire(self) -> list[Action]:
        action, self._pending = self._pending, None
        return [action] if action is not None else []

    def _mark(self) -> SendMark:
        self._mark_seq += 1
        name = f"t{self.turn}.{self._mark_seq}"
        self._marks[name] = _MarkInfo(self.turn, self._turn_sent)
        self._unmarked = 0
        return SendMark(name)

    def _estimate_heard(self, now: float) -> int:
        # Playback runs at 8000 bytes/s from the last proof of playback (or from the turn's first send).
        since = self._heard_at if self._heard_at is not None else self._first_sent_at
        extra = round(max(0.0, now - since) * BYTES_PER_SECOND) if since is not None else 0
        return min(self._turn_sent, self._turn_heard + extra)
