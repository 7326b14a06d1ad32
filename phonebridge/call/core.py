"""Sans-I/O core of one call: the policy between the Twilio media stream and the model, with no sockets,
no tasks and no clock (`now` is a parameter, on the pump's monotonic clock).

It owns the stream rules (nothing counts before `start`, frames of another streamSid are ignored,
sequence gaps are counted), the stream guard's start and media deadlines, transcoding the agent's audio into
Twilio frames, what the caller was sent and heard (CallState: marks, barge-in, the cut turn's late audio),
turn counting, the transcript (its lines: phonebridge.call.transcript), the call's statistics,
the hang-up or transfer that waits for the goodbye, and, through phonebridge.call.tool_turns, its function calls
(one answer per id, epochs, kept results) and when the hold sound plays (its frames come out here too).

The pump (phonebridge.call.bridge) feeds it and then drains it, in this order::

    media = call.receive_twilio(text, now)     # or receive_binary, receive_model, agent_audio, tool_finished,
                                               # tool_response_sent, epoch_changed, handle_timer,
                                               # request_hang_up, request_transfer, finish
    for frame in call.twilio_to_send(): ...    # str frames for the Twilio socket, in order
    for message in call.model_to_send(): ...   # Say / Remember for the model link
    for effect in call.effects(): ...          # Open, Refuse, Expire, Stopped, HangUp, Transfer, StartTools, ...
    timer.reset(call.next_deadline())          # at least when call.tools.moved; see phonebridge.call.effects

`receive_twilio` (and `receive_media`, which takes media alone) hands inbound media straight back: the pump
transcodes it with `inbound` and sends it to the model; media produces no other output, so no drain follows
it. A drain with nothing to give returns a shared empty tuple: a quiet drain allocates nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import phonebridge.twilio.protocol as twilio
from phonebridge.audio import InboundTranscoder, OutboundTranscoder
from phonebridge.call.state import Action, CallState, HangUp, SendClear, SendMark, SendMedia, Transfer
from phonebridge.call.effects import (
    CallStats, CancelTools, Cleared, Effect, Expire, ModelMessage, Observe, Open, Refuse, Remember, Say, Stopped,
)
from phonebridge.errors import LocalProtocolError, TwilioProtocolError
from phonebridge.live.events import (
    AudioOut, GenerationComplete, GoAway, InputText, Interrupted, ModelEvent, OutputText, ResumptionUpdate, ToolCalls,
    ToolCancel, TurnComplete, Usage,
)
from phonebridge.twilio.stream_guard import IdleWatch, StreamGuard, agent_parameters
from phonebridge.call.tool_turns import HOLD_AFTER_RESPONSE_MAX_S, ToolTurns
from phonebridge.call.transcript import Transcript

log = logging.getLogger("phonebridge.call")

_NOTHING: tuple[Any, ...] = ()


class Call:
    """One call's policy. Feed it what arrived, with the time; drain what it wants sent and done."""

    def __init__(
        self, guard: StreamGuard, now: float, *, state: CallState | None = None, hold_after_s: float = 1.0,
        hold_grace_s: float = HOLD_AFTER_RESPONSE_MAX_S,
    ) -> None:
        self.stats = CallStats(started=now)
        self.state = state or CallState()
        self.log: logging.LoggerAdapter[logging.Logger] = logging.LoggerAdapter(log, {"call_sid": "-"})
        self.inbound = InboundTranscoder()  # the pump runs it on the hot path, timing it
        self.start: twilio.Start | None = None
        self.stream_sid = ""
        self._guard = guard
        self._watch: IdleWatch | None = IdleWatch(guard.start_timeout_s, guard.media_timeout_s, now)
        self._seq = twilio.SequenceTracker()
        self._outbound, self._framer = OutboundTranscoder(), twilio.UlawFramer()
        self._frames: list[str] = []
        self._model: list[ModelMessage] = []
        self._effects: list[Effect] = []
        self.tools = ToolTurns(self._effects_append, self.log, hold_after_s=hold_after_s, grace_s=hold_grace_s)
        self.transcript = Transcript(self._line)
        self._end_unlogged = False  # the app's gate held back this socket's guard line (a flood): end at DEBUG too

    # -- draining ----------------------------------------------------------------------------------------

    def twilio_to_send(self) -> Sequence[str]:
        if not self._frames:
            return _NOTHING
        frames, self._frames = self._frames, []
        return frames

    def model_to_send(self) -> Sequence[ModelMessage]:
        if not self._model:
            return _NOTHING
        messages, self._model = self._model, []
        return messages

    def effects(self) -> Sequence[Effect]:
        if not self._effects:
            return _NOTHING
        effects, self._effects = self._effects, []
        return effects

    def _effects_append(self, effect: Effect) -> None:
        self._effects.append(effect)

    def next_deadline(self) -> float | None:
        """When to call handle_timer next (None: no deadline)."""
        times = (self.state.pending_deadline, self._watch.deadline() if self._watch is not None else None,
                 self.tools.deadline())
        return min((t for t in times if t is not None), default=None)

    # -- Twilio's side -----------------------------------------------------------------------------------

    def receive_twilio(self, text: str, now: float) -> twilio.Media | None:
        """One text frame from Twilio. Returns our stream's media for the pump to transcode and send."""
        if self._watch is not None:
            self._watch.on_frame(now)
        try:
            event = twilio.parse_event(text)
        except TwilioProtocolError as exc:
            self._bad_frame(exc)
            return None
        if type(event) is twilio.Media:  # 50 a second: _ours' checks inline, and no match
            if self.start is not None and event.stream_sid == self.stream_sid:
                return self._counted(event)
            self._ours(event)  # not ours: the same checks say why, and count and log it
            return None
        match event:
            case twilio.Mark():
                if self._ours(event):
                    self._act(self.state.twilio_mark(event.name, now))
            case twilio.Start():
                self._accept(event, now)
            case twilio.Dtmf():
                self._on_dtmf(event)
            case twilio.Stop():
                if self._ours(event):
                    self.stats.outcome = "caller_hung_up"
                    self._effects.append(Stopped())
            case twilio.Unknown():
                self._ignore(f"unknown event {event.event!r}")
            case twilio.Connected():
                pass
        return None

    def receive_media(self, text: str, now: float) -> twilio.Media | None:
        """`receive_twilio` for our stream's media only (the pump's path with no await): None, having changed
        nothing, for any other frame, which then goes to `receive_twilio`."""
        try:
            event = twilio.parse_event(text)
        except TwilioProtocolError:
            return None
        if type(event) is not twilio.Media or self.start is None or event.stream_sid != self.stream_sid:
            return None
        if self._watch is not None:
            self._watch.on_frame(now)
        return self._counted(event)

    def _counted(self, media: twilio.Media) -> twilio.Media:
        self.stats.lost_frames += self._seq.observe(media.sequence_number)
        self.stats.frames_in += 1
        return media

    def receive_binary(self, now: float) -> None:
        """A binary WebSocket frame: Twilio sends only text."""
        self._bad_frame(TwilioProtocolError("binary WebSocket frame", reason="binary_frame"))

    def _accept(self, event: twilio.Start, now: float) -> None:
        """Open the call only for a start that proves it belongs to the call our webhook answered: nothing
        (no Live session, no REST action) happens for one that does not."""
        why = self._guard.refusal(event) if self.start is None else None
        if why is not None:
            self.stats.outcome = "stream_refused"
            self._watch = None
            self._guarded(now, "refused the media stream of call %s (account %s): %s; closing with 1008",
                          event.call_sid, event.account_sid, why)
            self._effects.append(Refuse(event, why))
            return
        if self._watch is not None:
            self._watch.on_start(now)  # from the start deadline to the media one
        if self.start is not None:
            self._ignore("duplicate start")
            return
        self.start, self.stream_sid = event, event.stream_sid
        self.stats.call_sid = event.call_sid
        self.log = self.tools.log = logging.LoggerAdapter(log, {"call_sid": event.call_sid})
        self._seq.observe(event.sequence_number)
        self._effects.append(Open(event, agent_parameters(event)))  # the stream token is ours, not the agent's

    def _on_dtmf(self, event: twilio.Dtmf) -> None:
        if not self._ours(event):
            return
        self.stats.dtmf.append(event.digit)
        self.log.info("caller pressed %s", event.digit)
        self._model.append(Say(f"The caller pressed {event.digit} on the keypad.", f"DTMF {event.digit}"))

    def _ours(self, event: twilio.Media | twilio.Mark | twilio.Dtmf | twilio.Stop) -> bool:
        if self.start is None:
            self._ignore(f"{type(event).__name__.lower()} before start")
            return False
        if event.stream_sid != self.stream_sid:
            self._ignore(f"{type(event).__name__.lower()} for another stream {event.stream_sid!r}")
            return False
        # Twilio numbers every event of the stream in one sequence (media, mark, dtmf, stop).
        self.stats.lost_frames += self._seq.observe(event.sequence_number)
        return True

    def _bad_frame(self, exc: TwilioProtocolError) -> None:
        self.stats.malformed += 1
        # Logged in full the first times, then sampled: a flood must not flood the log too.
        if self.stats.malformed <= 5 or self.stats.malformed % 100 == 0:
            self.log.warning("malformed frame from Twilio dropped (%s, #%d): %s", exc.reason, self.stats.malformed, exc)

    def _ignore(self, why: str) -> None:
        self.stats.ignored += 1
        if self.stats.ignored <= 5 or self.stats.ignored % 100 == 0:
            self.log.warning("Twilio frame ignored: %s (#%d)", why, self.stats.ignored)

    # -- time ----------------------------------------------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        """A deadline may have passed: the stream guard's (once), the pending hang-up's or transfer's, the hold's."""
        why = self._watch.expired(now) if self._watch is not None else None
        if why == "no_start":
            self._guarded(now, "no start within %g s of the upgrade: closing the socket", self._guard.start_timeout_s)
        elif why is not None:
            self._guarded(now, "no frame from Twilio for %g s: ending the call", self._guard.media_timeout_s)
        if why is not None:
            self._watch = None
            self.stats.outcome = why
            self._effects.append(Expire(why))
        self._act(self.state.tick(now))
        for ulaw in self.tools.handle_timer(now, self.may_hold()):
            self._frames.append(self.hold_frame(ulaw))

    def _guarded(self, now: float, message: str, *args: Any) -> None:
        self._end_unlogged = not self._guard.log_gate.should_log(now)
        if not self._end_unlogged:
            self.log.warning(message + " (#%d closed by the stream guard)", *args, self._guard.log_gate.count)

    # -- the hold sound (phonebridge.call.tool_turns says when; its frames go out with ours, unmarked) -------------

    def may_hold(self) -> bool:  # only once everything of the agent's has played (or was cleared)
        return self.state.all_played

    def hold_frame(self, ulaw: bytes) -> str:
        """A hold-sound frame for Twilio. Not marked: it is not the agent's, and proves nothing it said."""
        return twilio.media_message(self.stream_sid, ulaw)

    def stop_watching(self) -> None:
        """The call is ending (our side): the stream guard's deadlines no longer apply."""
        self._watch = None

    # -- the model's side ----------------------------------------------------------------------------------

    def agent_audio(self, pcm24k: bytes, now: float) -> bool:
        """The agent's audio (the hot path): frames to send, or dropped (False) when its turn was cut."""
        self.transcript.answer_begins(now)
        if self.state.drop_cut(len(pcm24k) // 6):  # 24 kHz 16-bit -> 8 kHz mu-law bytes, untranscoded
            return False
        if not self.tools.spoke:
            self.tools.model_spoke()
        if self.stats.first_audio_s is None:
            self.stats.first_audio_s = now - self.stats.started
        self._act(self.state.agent_audio(self._framer.push(self._outbound.process(pcm24k)), now))
        return True

    def receive_model(self, event: ModelEvent, now: float) -> None:
        """Any model event (AudioOut may also go straight to agent_audio)."""
        match event:
            case AudioOut():
                self.agent_audio(event.pcm24k, now)
            case Interrupted():
                self._on_interrupted(now, event.received_at)
            case TurnComplete():
                self._on_turn_complete(now)
            case InputText():
                self.transcript.add("caller", event.text)
                if event.finished:
                    self.transcript.close("caller", now)
            case OutputText():
                self.transcript.answer_begins(now)
                self.transcript.add("agent", event.text)
            case ToolCalls():
                self.transcript.close_caller(now)
                self.stats.tool_calls += len(event.calls)
                self.tools.calls(event.calls, event.epoch, now, event.received_at)
            case ToolCancel():
                self.tools.epoch_changed(event.epoch)
                self._effects.append(CancelTools(event.ids))
                self.log.info("model cancelled tool calls %s", ", ".join(event.ids))
            case Usage():
                self.stats.prompt_tokens += event.prompt_tokens
                self.stats.response_tokens += event.response_tokens
            case GenerationComplete() | GoAway() | ResumptionUpdate():
                pass  # the link's housekeeping: nothing for the call
            case _:
                raise LocalProtocolError(f"the call core has no rule for {type(event).__name__}")

    def _on_interrupted(self, now: float, received_at: float) -> None:
        self.transcript.turn_over(now)
        barge_ins = len(self.state.barge_ins)
        actions = self.state.agent_interrupted(now)
        self._act(actions)
        if any(isinstance(a, SendClear) for a in actions):
            self._effects.append(Cleared(received_at))
        self._outbound.reset()
        self._framer.reset()
        if len(self.state.barge_ins) > barge_ins:
            self.stats.barge_ins = len(self.state.barge_ins)
            heard = self.state.barge_ins[-1].heard_s
            self.log.info("caller barged in; heard %.2f s of the turn", heard)
            self._effects.append(Observe("barge_in", {"heard_s": heard, "turn": self.state.turn}))

    def _on_turn_complete(self, now: float) -> None:
        self.transcript.turn_over(now)
        if not self.state.cut:  # a cut turn's transcoder was reset at `interrupted` and fed nothing since
            tail = self._framer.push(self._outbound.flush()) + [self._framer.flush()]
            self._act(self.state.agent_audio([f for f in tail if f], now))
            if self.state.speaking:
                self.stats.turns += 1
        self.transcript.close("agent", now)
        self._act(self.state.agent_turn_complete(now))

    def tool_finished(self, outcome: Any, now: float) -> None:
        """A started handler's outcome (phonebridge.agent.tools.ToolOutcome): observed, and its call answered."""
        self._effects.append(Observe("tool_result", {
            "id": outcome.id, "name": outcome.name, "status": outcome.status, "response": outcome.response,
            "latency_s": outcome.latency_s,
        }))
        self.tools.finished(outcome.id, None if outcome.status == "cancelled" else outcome.response, now)

    def tool_response_sent(self, number: int, ok: bool, now: float) -> None:
        """The pump's report on SendToolResponse `number`: sent, or refused by the link (another connection)."""
        self.tools.sent(number, ok, now)

    def epoch_changed(self, epoch: int) -> None:
        """The model link moved to connection `epoch` (a reconnection): answers for older ones are kept."""
        self.tools.epoch_changed(epoch)

    # -- the transcript ------------------------------------------------------------------------------------

    def _line(self, who: str, text: str, now: float) -> None:
        at = now - self.stats.started
        self.stats.transcript.append((at, who, text))
        self.log.info("[%7.2f s] %s: %s", at, who, text)
        self._effects.append(Observe("transcript", {"at": at, "who": who, "text": text}))
        self._model.append(Remember("user" if who == "caller" else "model", text))

    def finish(self, now: float) -> None:
        """The call is over: words cut off by its end still become transcript lines; no more hold sound."""
        self._watch = None
        self.tools.close()
        self.stats.hold_plays = self.tools.plays
        self.transcript.close_all(now)

    def log_summary(self, now: float) -> None:
        s, level = self.stats, logging.DEBUG if self._end_unlogged else logging.INFO
        self.log.log(
            level, "call ended: %s after %.1f s, %d turns, %d barge-ins, %d tool calls, first audio %s, %d malformed",
            s.outcome, now - s.started, s.turns, s.barge_ins, s.tool_calls,
            f"{s.first_audio_s * 1000:.0f} ms" if s.first_audio_s is not None else "never", s.malformed,
        )

    # -- ending the call after the agent's last words (requests from handlers) --------------------------------

    def request_hang_up(self, now: float) -> None:
        self.log.info("agent asked to hang up after its last words")
        self._act(self.state.request_hang_up(now))

    def request_transfer(self, target: str, now: float) -> None:
        self.log.info("agent asked to transfer the call after its last words")
        self._act(self.state.request_transfer(target, now))

    def _act(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case SendMedia():
                    self.stats.frames_out += 1
                    self._frames.append(twilio.media_message(self.stream_sid, action.ulaw))
                case SendMark():
                    self._frames.append(twilio.mark_message(self.stream_sid, action.name))
                case SendClear():
                    self._frames.append(twilio.clear_message(self.stream_sid))
                case HangUp():
                    self.stats.outcome = "agent_hung_up"
                    self._effects.append(action)
                case Transfer():
                    self.stats.outcome = "transferred"
                    self._effects.append(action)
