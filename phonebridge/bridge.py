"""One phone call: the only place where the Twilio media socket and the model session meet.

Concurrency: the Twilio socket is read only here, in the handler's task (`run`). The model is read by
LiveLink's task, which calls `_on_model_event`. Tool calls run in their own tasks. Anything may *send* on
the Twilio socket. Neither direction waits for the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

from phonebridge import twilio
from phonebridge.audio import InboundTranscoder, OutboundTranscoder
from phonebridge.call import (
    Action,
    CallState,
    HangUp,
    SendClear,
    SendMark,
    SendMedia,
    Transfer,
)
from phonebridge.call_services import CallServices, CallStats, Reactions, Recorder
from phonebridge.context import CallContext
from phonebridge.errors import ModelUnavailable, TwilioProtocolError
from phonebridge.model import LiveLink
from phonebridge.model_events import (
    AudioOut,
    GenerationComplete,
    GoAway,
    InputText,
    Interrupted,
    ModelEvent,
    OutputText,
    ResumptionUpdate,
    ToolCalls,
    ToolCancel,
    TurnComplete,
    Usage,
)
from phonebridge.stream_guard import IdleWatch, StreamGuard, agent_parameters
from phonebridge.tool_calls import HoldPlayer, ToolCallRunner
from phonebridge.tools import ToolDispatcher, ToolOutcome

log = logging.getLogger("phonebridge.call")

# Model events at which the caller's words so far are a line of the transcript (see _caller_line_ends).
_CALLER_LINE_ENDS = (AudioOut, OutputText, ToolCalls, Interrupted, TurnComplete)


async def _transfer_to(transfer: Callable[[str, str], Awaitable[Any]], target: str, call_sid: str) -> Any:
    return await transfer(call_sid, target)


class CallSession:
    """Runs one Media Streams WebSocket from `start` to the end of the call."""

    def __init__(self, ws: web.WebSocketResponse, services: CallServices, guard: StreamGuard | None = None) -> None:
        self._ws, self._svc = ws, services
        self._guard = guard or StreamGuard()
        self._loop = asyncio.get_running_loop()
        self._watch = IdleWatch(self._guard.start_timeout_s, self._guard.media_timeout_s, self._loop.time())
        self._watch_timer: asyncio.TimerHandle | None = None
        self._log: logging.LoggerAdapter[logging.Logger] = logging.LoggerAdapter(log, {"call_sid": "-"})
        self.stats = CallStats()
        self._reactions = Reactions(services.metrics)
        self.state = CallState()
        self._inbound, self._outbound = InboundTranscoder(), OutboundTranscoder()
        self._framer = twilio.UlawFramer()
        self._seq = twilio.SequenceTracker()
        self._start: twilio.Start | None = None
        self._link: LiveLink | None = None
        self._dispatcher: ToolDispatcher | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ended = asyncio.Event()
        self._stream_sid = ""
        self._hold: HoldPlayer | None = None
        self._tools: ToolCallRunner | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._partial = {"caller": "", "agent": ""}
        self._answering = False  # the model's turn has begun (its first audio or transcript)
        self._recorder: Recorder | None = None
        self._early: list[str] | None = []  # Twilio frames before `start`, for the recorder

    # -- the Twilio side (the handler's task) ------------------------------------------------------------

    async def run(self) -> CallStats:
        self._arm_watch()
        try:
            async for message in self._ws:
                if message.type == WSMsgType.TEXT:
                    self._watch.on_frame(self._loop.time())
                    if self._recorder is not None:
                        self._recorder.record("twilio_in", message.data)
                    elif self._early is not None and len(self._early) < 8:
                        self._early.append(message.data)
                    await self._on_twilio_text(message.data)
                elif message.type == WSMsgType.BINARY:
                    self._bad_frame(TwilioProtocolError("binary WebSocket frame", reason="binary_frame"))
                else:
                    break
                if self._ended.is_set():
                    break
            if self.stats.outcome == "unknown":
                self.stats.outcome = "caller_hung_up"
        finally:
            await self._shutdown()
        return self.stats

    async def _on_twilio_text(self, text: str) -> None:
        try:
            event = twilio.parse_event(text)
        except TwilioProtocolError as exc:
            self._bad_frame(exc)
            return
        if isinstance(event, twilio.Media):
            await self._on_media(event)
        elif isinstance(event, twilio.Mark):
            if self._ours(event):
                await self._execute(self.state.twilio_mark(event.name, time.monotonic()))
        elif isinstance(event, twilio.Start):
            await self._accept(event)
        elif isinstance(event, twilio.Dtmf):
            await self._on_dtmf(event)
        elif isinstance(event, twilio.Stop):
            if self._ours(event):
                self.stats.outcome = "caller_hung_up"
                self._ended.set()
        elif isinstance(event, twilio.Unknown):
            self._ignore(f"unknown event {event.event!r}")

    async def _on_media(self, event: twilio.Media) -> None:
        if not self._ours(event):
            return
        started = time.perf_counter()
        self.stats.frames_in += 1
        if self._link is not None:
            pcm = self._inbound.process(event.payload)
            transcoded = time.perf_counter()
            await self._link.send_audio(pcm)
            metrics = self._svc.metrics
            if metrics is not None:
                metrics.observe_transcode("inbound", transcoded - started)
                metrics.observe_inbound(time.perf_counter() - started)

    async def _on_dtmf(self, event: twilio.Dtmf) -> None:
        if not self._ours(event):
            return
        self.stats.dtmf.append(event.digit)
        self._log.info("caller pressed %s", event.digit)
        if self._link is not None and not await self._link.send_text(f"The caller pressed {event.digit} on the keypad."):
            self._log.warning("DTMF %s could not reach the model", event.digit)

    async def _accept(self, event: twilio.Start) -> None:
        """Open the call only for a start that proves it belongs to the call our webhook answered: nothing
        (no Live session, no REST action) happens for one that does not."""
        why = self._guard.refusal(event) if self._start is None else None
        if why is None:
            self._on_start(event)
            self._watch.on_start(self._loop.time())
            self._arm_watch()  # from the start deadline to the media one
            return
        self.stats.outcome = "stream_refused"
        self._guarded(why, "refused the media stream of call %s (account %s): %s; closing with 1008",
                      event.call_sid, event.account_sid, why)
        self._ended.set()
        await self._close_socket(1008, b"stream not issued for this call")

    def _arm_watch(self) -> None:
        if self._watch_timer is not None:
            self._watch_timer.cancel()
        self._watch_timer = self._loop.call_at(self._watch.deadline(), self._on_watch)

    def _on_watch(self) -> None:
        if self._ended.is_set():
            return
        why = self._watch.expired(self._loop.time())
        if why is None:
            self._arm_watch()
        elif why == "no_start":
            self.stats.outcome = why
            self._guarded(why, "no start within %g s of the upgrade: closing the socket", self._guard.start_timeout_s)
            self._ended.set()
            self._spawn(self._close_socket(1008, b"no start"))
        else:
            self.stats.outcome = why
            self._guarded(why, "no frame from Twilio for %g s: ending the call", self._guard.media_timeout_s)
            self._spawn(self._end_with(self._svc.hang_up, "the media stream went silent"))

    def _guarded(self, reason: str, message: str, *args: Any) -> None:
        if self._svc.metrics is not None:
            self._svc.metrics.stream_guarded(reason)
        if self._guard.log_gate.should_log(self._loop.time()):
            self._log.warning(message + " (#%d closed by the stream guard)", *args, self._guard.log_gate.count)

    def _on_start(self, event: twilio.Start) -> None:
        if self._start is not None:
            self._ignore("duplicate start")
            return
        self._start = event
        self._stream_sid = event.stream_sid
        self.stats.call_sid = event.call_sid
        self._log = logging.LoggerAdapter(log, {"call_sid": event.call_sid})
        self._seq.observe(event.sequence_number)
        params = agent_parameters(event)  # the stream token is ours, not the agent's
        context = CallContext(
            call_sid=event.call_sid, stream_sid=event.stream_sid, from_number=params.get("From", ""),
            to_number=params.get("To", ""), direction=params.get("Direction", "inbound"), parameters=params,
            _control=self,
        )
        self._dispatcher = ToolDispatcher(
            self._svc.registry, context, default_timeout_s=self._svc.agent.tool_timeout_s, logger=self._log,
            executor=self._svc.executor,
            on_outcome=self._on_tool_outcome,
        )
        self._hold = HoldPlayer(self._send_hold_frame, lambda: self.state.all_played, self._spawn, self._log)
        self._start_recording(event)
        try:
            client = self._svc.genai_client()
        except ModelUnavailable as exc:  # no usable credentials: end the stream so the fallback TwiML runs
            self._log.error("the model is unreachable, ending the stream so the fallback TwiML runs: %s", exc)
            self.stats.outcome = "model_unavailable"
            self._ended.set()
            return
        self._link = LiveLink(
            client, self._svc.agent, self._svc.declarations, self._on_model_event,
            logger=self._log, connect_timeout_s=self._svc.connect_timeout_s,
            reconnect_attempts=self._svc.reconnect_attempts,
            tap=self._recorder.record if self._recorder is not None else None,
            on_reconnect=lambda cause: self._emit("reconnect", cause=cause),
        )
        self._tools = ToolCallRunner(
            self._dispatcher, self._link, self._hold, self._svc.agent.hold_sound_after_s, self._spawn, self._log,
            on_sent=self._reactions.tool_response_sent,
        )
        if self._svc.log_caller_numbers:
            self._log.info("call started (stream %s, %s, from %s to %s)", event.stream_sid,
                           params.get("Direction", "inbound"), params.get("From", "?"), params.get("To", "?"))
        else:
            self._log.info("call started (stream %s, %s)", event.stream_sid, params.get("Direction", "inbound"))
        self._emit("call_start", call_sid=event.call_sid, stream_sid=event.stream_sid, parameters=params)
        self._spawn(self._run_model(self._link))

    def _start_recording(self, event: twilio.Start) -> None:
        early, self._early = self._early or [], None
        if self._svc.recorder_factory is None:
            return
        try:
            self._recorder = self._svc.recorder_factory(event)
        except Exception:  # noqa: BLE001 - a recording problem must not cost the call
            self._log.exception("cannot record this call; it goes on unrecorded")
            return
        for text in early:
            self._recorder.record("twilio_in", text)

    def _ours(self, event: twilio.Media | twilio.Mark | twilio.Dtmf | twilio.Stop) -> bool:
        if self._start is None:
            self._ignore(f"{type(event).__name__.lower()} before start")
            return False
        if event.stream_sid != self._stream_sid:
            self._ignore(f"{type(event).__name__.lower()} for another stream {event.stream_sid!r}")
            return False
        # Twilio numbers every event of the stream in one sequence (media, mark, dtmf, stop).
        self.stats.lost_frames += self._seq.observe(event.sequence_number)
        return True

    def _bad_frame(self, exc: TwilioProtocolError) -> None:
        self.stats.malformed += 1
        # Logged in full the first times, then sampled: a flood must not flood the log too.
        if self.stats.malformed <= 5 or self.stats.malformed % 100 == 0:
            self._log.warning("malformed frame from Twilio dropped (%s, #%d): %s", exc.reason, self.stats.malformed, exc)

    def _ignore(self, why: str) -> None:
        self.stats.ignored += 1
        if self.stats.ignored <= 5 or self.stats.ignored % 100 == 0:
            self._log.warning("Twilio frame ignored: %s (#%d)", why, self.stats.ignored)

    # -- the model side (LiveLink's task) -----------------------------------------------------------------

    async def _run_model(self, link: LiveLink) -> None:
        runner = asyncio.create_task(link.run())
        try:
            ready = asyncio.create_task(link.ready.wait())
            await asyncio.wait({runner, ready}, return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if link.ready.is_set() and self._svc.agent.greeting:
                await link.send_text(self._svc.agent.greeting)
            await runner
        except ModelUnavailable as exc:
            self._log.error("the model is unreachable, ending the stream so the fallback TwiML runs: %s", exc)
            self.stats.outcome = "model_unavailable"
        finally:
            if not runner.done():
                runner.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await runner
            self._ended.set()
            await self._close_socket()

    async def _on_model_event(self, event: ModelEvent) -> None:
        now = time.monotonic()
        if isinstance(event, _CALLER_LINE_ENDS):
            self._caller_line_ends(event, now)
        if isinstance(event, AudioOut):
            await self._on_agent_audio(event.pcm24k, now)
        elif isinstance(event, Interrupted):
            actions = self.state.agent_interrupted(now)
            await self._execute(actions)
            if self._link is not None and any(isinstance(a, SendClear) for a in actions):
                self._reactions.clear_sent(self._link.received_at)
            self._outbound.reset()
            self._framer.reset()
            if self.state.barge_ins:
                self.stats.barge_ins = len(self.state.barge_ins)
                heard = self.state.barge_ins[-1].heard_s
                self._log.info("caller barged in; heard %.2f s of the turn", heard)
                self._emit("barge_in", heard_s=heard, turn=self.state.turn)
        elif isinstance(event, TurnComplete):
            await self._on_turn_complete(now)
        elif isinstance(event, (InputText, OutputText)):
            self._on_transcript(event, now)
        elif isinstance(event, ToolCalls):
            self._on_tool_calls(event)
        elif isinstance(event, ToolCancel):
            if self._dispatcher is not None:
                self._dispatcher.cancel(event.ids)
            self._log.info("model cancelled tool calls %s", ", ".join(event.ids))
        elif isinstance(event, Usage):
            self.stats.prompt_tokens += event.prompt_tokens
            self.stats.response_tokens += event.response_tokens
        elif isinstance(event, (GenerationComplete, GoAway, ResumptionUpdate)):
            pass

    async def _on_agent_audio(self, pcm24k: bytes, now: float) -> None:
        if self.state.cut:
            self.state.dropped_cut_bytes += len(pcm24k) // 6
            return
        if self._hold is not None:
            self._hold.model_spoke()
        if self.stats.first_audio_s is None:
            self.stats.first_audio_s = now - self.stats.started
        started = time.perf_counter()
        frames = self._framer.push(self._outbound.process(pcm24k))
        transcoded = time.perf_counter()
        await self._execute(self.state.agent_audio(frames, now))
        metrics = self._svc.metrics
        if metrics is not None:
            metrics.observe_transcode("outbound", transcoded - started)
            metrics.observe_outbound(time.perf_counter() - started)

    async def _on_turn_complete(self, now: float) -> None:
        if not self.state.cut:  # a cut turn's transcoder was reset at `interrupted` and fed nothing since
            tail = self._framer.push(self._outbound.flush()) + [self._framer.flush()]
            await self._execute(self.state.agent_audio([f for f in tail if f], now))
            if self.state.speaking:
                self.stats.turns += 1
        self._flush_transcript("agent", now)
        await self._execute(self.state.agent_turn_complete(now))

    def _caller_line_ends(self, event: ModelEvent, now: float) -> None:
        """3.1 is reported to send the caller's words without `finished` (google/adk-python#6045 marks the first
        text finished itself; googleapis/js-genai#1429): so the caller's line also closes when the model starts
        answering (its first audio or transcript of a turn: words that trail in during the answer stay one
        line), calls a tool, is interrupted or ends its turn. `finished` still closes it at once, and a closed
        line is empty, so the two never write it twice."""
        if isinstance(event, (AudioOut, OutputText)):
            if self._answering:
                return
            self._answering = True
        elif isinstance(event, (Interrupted, TurnComplete)):
            self._answering = False
        if self._partial["caller"]:
            self._flush_transcript("caller", now)

    def _on_transcript(self, event: InputText | OutputText, now: float) -> None:
        if isinstance(event, InputText):
            self._partial["caller"] += event.text
            if event.finished:
                self._flush_transcript("caller", now)
        else:
            self._partial["agent"] += event.text

    def _flush_transcript(self, who: str, now: float) -> None:
        text = " ".join(self._partial[who].split())
        self._partial[who] = ""
        if not text:
            return
        at = now - self.stats.started
        self.stats.transcript.append((at, who, text))
        self._log.info("[%7.2f s] %s: %s", at, who, text)
        self._emit("transcript", at=at, who=who, text=text)
        if self._link is not None:
            self._link.remember("user" if who == "caller" else "model", text)

    # -- tools and hold sound -----------------------------------------------------------------------------

    def _on_tool_calls(self, event: ToolCalls) -> None:
        self.stats.tool_calls += len(event.calls)
        self._log.info("model calls %s", ", ".join(f"{c.name}({c.args or {}})" for c in event.calls))
        for call in event.calls:
            self._emit("tool_call", id=call.id, name=call.name, args=dict(call.args or {}))
        if self._link is not None:
            self._reactions.tool_calls([c.id for c in event.calls], self._link.received_at)
        if self._tools is not None:
            self._tools.on_tool_calls(event.calls)

    def _on_tool_outcome(self, outcome: ToolOutcome) -> None:
        self._reactions.tool_finished(outcome.id, outcome.started, outcome.finished)
        if self._recorder is not None:
            self._recorder.record("tool", {
                "id": outcome.id, "name": outcome.name, "args": dict(outcome.args), "status": outcome.status,
                "response": outcome.response, "latency_s": outcome.latency_s,
            })
        self._emit(
            "tool_result", id=outcome.id, name=outcome.name, status=outcome.status, response=outcome.response,
            latency_s=outcome.latency_s,
        )

    # -- CallControl (from handlers, on the loop) -------------------------------------------------------

    def request_hang_up(self) -> None:
        self._log.info("agent asked to hang up after its last words")
        self._spawn(self._execute(self.state.request_hang_up(time.monotonic())))
        self._arm_timer()

    def request_transfer(self, target: str) -> None:
        self._log.info("agent asked to transfer the call after its last words")
        self._spawn(self._execute(self.state.request_transfer(target, time.monotonic())))
        self._arm_timer()

    def _arm_timer(self) -> None:
        deadline = self.state.pending_deadline
        if deadline is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(0.0, deadline - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._spawn(self._execute(self.state.tick(time.monotonic())))

    # -- executing actions ---------------------------------------------------------------------------------

    async def _execute(self, actions: list[Action]) -> None:
        # Sent in order from the calling task: a clear goes out in the same loop turn as `interrupted`.
        for action in actions:
            if isinstance(action, SendMedia):
                self.stats.frames_out += 1
                await self._send(twilio.media_message(self._stream_sid, action.ulaw))
            elif isinstance(action, SendMark):
                await self._send(twilio.mark_message(self._stream_sid, action.name))
            elif isinstance(action, SendClear):
                await self._send(twilio.clear_message(self._stream_sid))
            elif isinstance(action, HangUp):
                self.stats.outcome = "agent_hung_up"
                self._spawn(self._end_with(self._svc.hang_up, action.reason))
            elif isinstance(action, Transfer):
                self.stats.outcome = "transferred"
                transfer = self._svc.transfer
                rest = functools.partial(_transfer_to, transfer, action.target) if transfer is not None else None
                self._spawn(self._end_with(rest, "transfer"))

    async def _send_hold_frame(self, ulaw: bytes) -> None:
        await self._send(twilio.media_message(self._stream_sid, ulaw))

    async def _send(self, text: str) -> None:
        if self._ws.closed:
            return
        if self._recorder is not None:
            self._recorder.record("twilio_out", text)
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await self._ws.send_str(text)

    async def _end_with(self, rest_action: Callable[[str], Awaitable[Any]] | None, why: str) -> None:
        self._log.info("ending the call: %s", why)
        if rest_action is not None and self.stats.call_sid:
            try:
                await rest_action(self.stats.call_sid)
            except Exception:  # noqa: BLE001 - still end our side of the call
                self._log.exception("Twilio REST %s failed; closing the stream instead", why)
        self._ended.set()
        await self._close_socket()

    async def _close_socket(self, code: int = 1000, message: bytes = b"") -> None:
        if self._ws.closed:
            return
        await self._ws.close(code=code, message=message)
        # aiohttp keeps a failed close's error (the caller already gone), and its traceback's frames hold the
        # socket: a reference cycle per call. The traceback is of no use once the call is over.
        error = self._ws.exception()
        if error is not None:
            error.__traceback__ = None

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self, why: str) -> None:
        """End the call from our side (server shutdown): the stream closes and Twilio runs what follows."""
        self._log.info("closing the call: %s", why)
        if self.stats.outcome == "unknown":
            self.stats.outcome = "server_closed"
        self._ended.set()
        await self._close_socket()

    async def _shutdown(self) -> None:
        self._ended.set()
        for who in ("caller", "agent"):  # words cut off by the end of the call still reach the log
            self._flush_transcript(who, time.monotonic())
        if self._timer is not None:
            self._timer.cancel()
        if self._watch_timer is not None:
            self._watch_timer.cancel()
        if self._link is not None:
            await self._link.close()
        if self._dispatcher is not None:
            await self._dispatcher.aclose()
        if self._hold is not None:
            self._hold.close()
            self.stats.hold_plays = self._hold.plays
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._close_socket()
        self._log.info(
            "call ended: %s after %.1f s, %d turns, %d barge-ins, %d tool calls, first audio %s, %d malformed",
            self.stats.outcome, time.monotonic() - self.stats.started, self.stats.turns, self.stats.barge_ins,
            self.stats.tool_calls,
            f"{self.stats.first_audio_s * 1000:.0f} ms" if self.stats.first_audio_s is not None else "never",
            self.stats.malformed,
        )
        self._emit("call_end", stats=self.stats)
        if self._recorder is not None:
            await self._recorder.aclose()
        self._release()

    def _release(self) -> None:
        """Drop the call's parts. Each holds callbacks into this session, so the call's whole object graph
        (transcoders, state, transcript, the model's history) would be a reference cycle that only the
        cyclic GC's rare full collections free: at 100 concurrent calls RSS climbed ~0.4 MiB a call."""
        if self._link is not None:
            self._link.detach()
        self._link = None
        self._dispatcher = None
        self._hold = None
        self._tools = None
        self._timer = None

    def _emit(self, kind: str, **data: Any) -> None:
        for observer in self._svc.observers:
            try:
                observer(kind, data)
            except Exception:  # noqa: BLE001 - an observer's bug must not end the call
                self._log.exception("call observer failed on %s", kind)
