"""Sans-I/O bookkeeping of a call's function calls, and when the hold sound plays: no tasks, no clock.

gemini-3.1 calls functions synchronously: it is silent until every call of a toolCall is answered. The rules:

- **One answer per id.** A toolCall's calls are answered together, in one tool_response, once each has a result
  (a call the model cancelled gets none); an id already running or answered is never run or answered again.
- **Epochs.** The model link's connection epoch rises whenever a connection ends. A new connection resumes from
  before the calls the old one asked, and the model issues them again with new ids: an answer is sent only on
  the epoch that asked (the link refuses it otherwise), else its results are *kept*.
- **Kept results.** A call with the same name and arguments as one kept or still running shares that result
  instead of running the handler twice. At most MAX_KEPT_RESULTS are kept (the oldest unclaimed go first).
- **The hold sound** starts after `hold_after_s` of a toolCall still running while the model is silent, plays a
  20 ms frame every HOLD_FRAME_S while the agent's own audio has all played, and stops when the model speaks, or
  `grace_s` after the last answer went out if it does not.

The call core (phonebridge.call.core.Call) drives it: `calls(...)` for a toolCall, `finished(...)` for a
handler's result, `sent(...)` once the pump sent (or failed to send) a response, `model_spoke()`,
`epoch_changed(...)` and `handle_timer(now, may_play)`, which returns the hold frames due. What it wants done
goes to the `emit` it was given (StartTools, SendToolResponse); `deadline()` is when
it next wants `handle_timer`, and `moved` says a deadline earlier than the last one may have appeared.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from phonebridge.call.effects import Effect, Observe, SendToolResponse, StartTools
from phonebridge.call.hold import HoldSound
from phonebridge.call.tool_types import ToolCall, ToolResult

HOLD_FRAME_S = 0.02
HOLD_AFTER_RESPONSE_MAX_S = 5.0  # after the last response, the model has this long to speak before hold stops
MAX_KEPT_RESULTS = 32
MAX_ANSWERED_IDS = 256  # ids remembered for "one answer per id": a bound against a model that floods calls

Log = logging.Logger | logging.LoggerAdapter[logging.Logger]


def call_key(call: ToolCall) -> str:
    """What makes a re-issued call the same call: its name and arguments."""
    return f"{call.name}:{json.dumps(call.args or {}, sort_keys=True, default=str)}"


@dataclass(slots=True, eq=False)
class _Batch:
    """One toolCall: answered together once every call has settled."""

    number: int
    calls: tuple[ToolCall, ...]
    epoch: int
    hold_at: float | None
    unsettled: int
    answers: dict[str | None, ToolResult] = field(default_factory=dict)


class ToolTurns:
    """The function calls of one call and its hold sound; see the module's docstring."""

    def __init__(self, emit: Callable[[Effect], None], log: Log, *, hold_after_s: float,
                 grace_s: float = HOLD_AFTER_RESPONSE_MAX_S) -> None:
        self._emit, self.log = emit, log
        self._hold_after_s, self._grace_s = hold_after_s, grace_s
        self.epoch = 0
        self._kept: dict[str, dict[str, Any] | None] = {}  # key -> the result, None while its handler runs
        self._waiting: dict[str, list[tuple[_Batch, ToolCall]]] = {}  # key -> the calls waiting on it
        self._running: dict[str | None, str] = {}  # id of a started call -> its key
        self._seen: dict[str, None] = {}  # ids running or answered (ordered, bounded)
        self._batches: list[_Batch] = []  # still running
        self._sending: dict[int, _Batch] = {}  # responses handed to the pump, not yet confirmed sent
        self._numbers = 0
        # The hold sound. `spoke`: the model spoke since the last toolCall (the pump checks it on the hot path).
        self.spoke = False
        self.playing = False  # from the start of a hold until it is stopped (the frames may have ended sooner)
        self.plays = 0
        self.moved = False
        self._next_frame: float | None = None
        self._stop_at: float | None = None
        self._sound: HoldSound | None = None

    # -- the model asks ---------------------------------------------------------------------------------

    def calls(self, calls: tuple[ToolCall, ...], epoch: int, now: float, received_at: float = 0.0) -> None:
        """A toolCall from connection `epoch`: start what is new, share what is kept or running."""
        self.log.info("model calls %s", ", ".join(f"{c.name}({c.args or {}})" for c in calls))
        for call in calls:
            self._emit(Observe("tool_call", {"id": call.id, "name": call.name, "args": dict(call.args or {})}))
        self.epoch_changed(epoch)
        self.spoke = False  # silent until answered; a chained call keeps the hold sound going
        self._stop_at = None
        fresh: list[ToolCall] = []
        batch = _Batch(self._numbers, (), epoch, now + self._hold_after_s, 0)
        self._numbers += 1
        for call in calls:
            if call.id is not None and call.id in self._seen:
                self.log.warning("model sent call id %s again: it has its answer already", call.id)
                continue
            if call.id is not None:
                self._remember(call.id)
            batch.calls += (call,)
            key = call_key(call)
            if key not in self._kept:
                self._kept[key] = None
                self._running[call.id] = key
                fresh.append(call)
            batch.unsettled += 1
            self._waiting.setdefault(key, []).append((batch, call))
        self._batches.append(batch)
        self.moved = True
        if fresh:
            self._emit(StartTools(tuple(fresh), received_at))
        for key in {call_key(c) for c in batch.calls}:
            if self._kept.get(key) is not None:  # kept from before a reconnection: answered at once
                self._settle(key, self._kept[key], now)
        if not batch.calls:
            self._done(batch, now)

    def finished(self, call_id: str | None, response: dict[str, Any] | None, now: float) -> None:
        """A started call's handler ended: its response, or None when it was cancelled (no answer)."""
        key = self._running.pop(call_id, None)
        if key is None:
            return
        if response is None:
            self._kept.pop(key, None)
        elif key in self._kept:  # not pushed out by the bound meanwhile
            self._kept[key] = response
        self._settle(key, response, now)

    def sent(self, number: int, ok: bool, now: float) -> None:
        """The pump sent SendToolResponse `number` (ok), or the link refused it (another connection)."""
        batch = self._sending.pop(number, None)
        if batch is None:
            return
        if not ok:
            self._keep()
            return
        for call in batch.calls:
            self._kept.pop(call_key(call), None)
        if not self._batches:
            self._answered(now)

    def epoch_changed(self, epoch: int) -> None:
        self.epoch = max(self.epoch, epoch)

    def _settle(self, key: str, response: dict[str, Any] | None, now: float) -> None:
        for batch, call in self._waiting.pop(key, ()):
            if response is not None:
                batch.answers[call.id] = ToolResult(call.id, call.name, response)
            batch.unsettled -= 1
            if batch.unsettled == 0:
                self._done(batch, now)

    def _done(self, batch: _Batch, now: float) -> None:
        self._batches.remove(batch)
        results = tuple(batch.answers[c.id] for c in batch.calls if c.id in batch.answers)
        if batch.epoch != self.epoch:
            self._keep()
        elif results:
            self._sending[batch.number] = batch
            self._emit(SendToolResponse(batch.number, batch.epoch, results))
        else:  # every call was cancelled: nothing to send
            for call in batch.calls:
                self._kept.pop(call_key(call), None)
            if not self._batches:
                self._answered(now)

    def _keep(self) -> None:
        self.log.warning("model connection changed while tools ran: results kept for the re-issued calls")
        while len(self._kept) > MAX_KEPT_RESULTS:  # bounded: oldest unclaimed results go first
            self._kept.pop(next(iter(self._kept)))

    def _remember(self, call_id: str) -> None:
        self._seen[call_id] = None
        while len(self._seen) > MAX_ANSWERED_IDS:
            self._seen.pop(next(iter(self._seen)))

    # -- the hold sound ---------------------------------------------------------------------------------

    def model_spoke(self) -> None:
        """The model's audio (not of a cut turn): the hold sound stops at once."""
        self.spoke = True
        self._next_frame = None
        if self._stop_at is not None:
            self._stop_at = None
            self.playing = False

    def _answered(self, now: float) -> None:
        """Every running toolCall has been answered: stop once the model speaks, or after the grace period."""
        if self.playing:
            if self.spoke:
                self.playing = False
            else:
                self._stop_at = now + self._grace_s
                self.moved = True

    def _start(self, now: float) -> None:
        if self.playing or self.spoke:
            return
        self.plays += 1
        self.playing = True
        self.log.info("handler is slow: playing the hold sound")
        if self._sound is None:
            self._sound = HoldSound()
        self._sound.reset()  # every hold starts from the loop's beginning
        self._next_frame = now  # the first frame at once, then paced at real time

    def close(self) -> None:
        self.model_spoke()

    def handle_timer(self, now: float, may_play: bool) -> list[bytes]:
        """The hold frames due now (mu-law, 20 ms each), after starting or stopping the hold as due."""
        for batch in self._batches:
            if batch.hold_at is not None and batch.hold_at <= now:
                batch.hold_at = None
                self._start(now)
        if self._stop_at is not None and self._stop_at <= now:
            self.model_spoke()
            self.playing = False
        frames: list[bytes] = []
        sound = self._sound
        while self._next_frame is not None and self._next_frame <= now and sound is not None:
            if may_play:  # never talk over the agent's own queued words
                frames.append(sound.next_frame())
            self._next_frame += HOLD_FRAME_S
        return frames

    def deadline(self) -> float | None:
        self.moved = False
        times = [b.hold_at for b in self._batches if b.hold_at is not None]
        if self._stop_at is not None:
            times.append(self._stop_at)
        if self._next_frame is not None:
            times.append(self._next_frame)
        return min(times) if times else None
