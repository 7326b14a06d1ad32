"""One phone call: the only place where the Twilio media socket and the model session meet.

Concurrency: the Twilio socket is read only here, in the handler's task (`run`). The model is read by
LiveLink's task, which calls `_on_model_event`. Tool calls run in their own tasks. Anything may *send* on
the Twilio socket. Neither direction waits for the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from concurrent.futures import Executor
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import WSMsgType, web
from google import genai
from google.genai import types

from phonebridge import twilio
from phonebridge.agent import Agent
from phonebridge.audio import InboundTranscoder, OutboundTranscoder
from phonebridge.call import Action, CallState, HangUp, SendClear, SendMark, SendMedia, Transfer
from phonebridge.context import CallContext
from phonebridge.errors import ModelUnavailable, TwilioProtocolError
from phonebridge.hold import HoldSound
from phonebridge.metrics import Metrics
from phonebridge.model import LiveLink
from phonebridge.model_events import (
    AudioOut, GenerationComplete, GoAway, InputText, Interrupted, ModelEvent, OutputText, ResumptionUpdate, ToolCalls,
    ToolCancel, TurnComplete, Usage,
)
from phonebridge.tools import ToolDispatcher, ToolOutcome, ToolRegistry

log = logging.getLogger("phonebridge.call")
HOLD_FRAME_S = 0.02
HOLD_AFTER_RESPONSE_MAX_S = 5.0
MAX_KEPT_RESULTS = 32


@dataclass
class CallStats:
    """What happened on one call: for the summary log line, metrics and tests."""

    started: float = field(default_factory=time.monotonic)
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


class CallServices:
    """What every call of an app shares (immutable from a call's point of view)."""

    def __init__(
        self,
        agent: Agent,
        registry: ToolRegistry,
        genai_client: Callable[[], genai.Client],
        *,
        hang_up: Callable[[str], Awaitable[Any]] | None = None,
        transfer: Callable[[str, str], Awaitable[Any]] | None = None,
        connect_timeout_s: float = 10.0,
        reconnect_attempts: int = 5,
        observers: Sequence[Callable[[str, dict[str, Any]], None]] = (),
        executor: Executor | None = None,
        recorder_factory: Callable[[twilio.Start], Recorder] | None = None,
        metrics: Metrics | None = None,
        log_caller_numbers: bool = False,
    ) -> None:
        self.log_caller_numbers = log_caller_numbers
        self.metrics = metrics
        self.recorder_factory = recorder_factory
        self.agent, self.registry, self.genai_client = agent, registry, genai_client
        # Sync handlers run here, not in the loop's default executor: a stuck handler can't starve others.
        self.executor = executor
        self.declarations: list[types.FunctionDeclaration] = registry.declarations()
        self.hang_up, self.transfer = hang_up, transfer
        self.connect_timeout_s, self.reconnect_attempts = connect_timeout_s, reconnect_attempts
        self.observers = list(observers)


class Recorder(Protocol):
    """Where a call's wire traffic is written (phonebridge.recording): must never block or raise."""

    def record(self, kind: str, payload: Any) -> None: ...

    async def aclose(self) -> None: ...


def _call_key(call: types.FunctionCall) -> str:
    return f"{call.name}:{json.dumps(call.args or {}, sort_keys=True, default=str)}"


class CallSession:
    """Runs one Media Streams WebSocket from `start` to the end of the call."""

    def __init__(self, ws: web.WebSocketResponse, services: CallServices) -> None:
        self._ws, self._svc = ws, services
        self._log: logging.LoggerAdapter[logging.Logger] = logging.LoggerAdapter(log, {"call_sid": "-"})
        self.stats = CallStats()
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
        self._hold_task: asyncio.Task[None] | None = None
        self._hold_stopper: asyncio.Task[None] | None = None
        self._tool_batches = 0  # toolCalls whose handlers are still running
        self._model_spoke = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._partial = {"caller": "", "agent": ""}
        self._sent_first_audio = False
        self._recorder: Recorder | None = None
        # Results by (name, arguments) for calls the model may re-issue after a connection switch.
        self._tool_results: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._early: list[str] | None = []  # Twilio frames before `start`, for the recorder

    # -- the Twilio side (the handler's task) ------------------------------------------------------------

    async def run(self) -> CallStats:
        try:
            async for message in self._ws:
                if message.type == WSMsgType.TEXT:
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
            self._on_start(event)
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

    def _on_start(self, event: twilio.Start) -> None:
        if self._start is not None:
            self._ignore("duplicate start")
            return
        self._start = event
        self._stream_sid = event.stream_sid
        self.stats.call_sid = event.call_sid
        self._log = logging.LoggerAdapter(log, {"call_sid": event.call_sid})
        self._seq.observe(event.sequence_number)
        params = dict(event.custom_parameters)
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
        self._start_recording(event)
        self._link = LiveLink(
            self._svc.genai_client(), self._svc.agent, self._svc.declarations, self._on_model_event,
            logger=self._log, connect_timeout_s=self._svc.connect_timeout_s,
            reconnect_attempts=self._svc.reconnect_attempts,
            tap=self._recorder.record if self._recorder is not None else None,
            on_reconnect=lambda cause: self._emit("reconnect", cause=cause),
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
            if not self._ws.closed:
                await self._ws.close()

    async def _on_model_event(self, event: ModelEvent) -> None:
        now = time.monotonic()
        if isinstance(event, AudioOut):
            await self._on_agent_audio(event.pcm24k, now)
        elif isinstance(event, Interrupted):
            await self._execute(self.state.agent_interrupted(now))
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
        self._model_spoke.set()
        if not self._sent_first_audio:
            self._sent_first_audio = True
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
        if self.state.cut:
            self._outbound.reset()
            self._framer.reset()
        else:
            tail = self._framer.push(self._outbound.flush()) + [self._framer.flush()]
            await self._execute(self.state.agent_audio([f for f in tail if f], now))
            if self.state.speaking:
                self.stats.turns += 1
        self._flush_transcript("agent", now)
        await self._execute(self.state.agent_turn_complete(now))

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
        self._model_spoke.clear()
        if self._hold_stopper is not None:  # a chained call: the hold sound goes on
            self._hold_stopper.cancel()
            self._hold_stopper = None
        self._tool_batches += 1
        self._spawn(self._answer_tools(event.calls))

    async def _answer_tools(self, calls: Sequence[types.FunctionCall]) -> None:
        """Run the calls and send their responses, exactly once per call the model is waiting for.

        If the model connection changes while handlers run, the new connection resumed from before these calls
        and the model issues them again with new ids: the responses are not sent on the wrong connection but
        kept, and a re-issued call with the same name and arguments gets the kept (or still running) result
        instead of running the handler twice.
        """
        assert self._dispatcher is not None and self._link is not None
        epoch = self._link.epoch
        loop = asyncio.get_running_loop()
        fresh: list[types.FunctionCall] = []
        shared: list[tuple[types.FunctionCall, asyncio.Future[dict[str, Any]]]] = []
        for call in calls:
            key = _call_key(call)
            if key in self._tool_results:
                shared.append((call, self._tool_results[key]))
            else:
                self._tool_results[key] = loop.create_future()
                fresh.append(call)
        hold = loop.call_later(self._svc.agent.hold_sound_after_s, self._start_hold)
        try:
            answered = {r.id: r for r in await self._dispatcher.dispatch(fresh)}
            for call in fresh:
                future = self._tool_results[_call_key(call)]
                if call.id in answered:
                    future.set_result(answered[call.id].response or {})
                else:  # cancelled: nobody gets an answer for it
                    future.cancel()
                    del self._tool_results[_call_key(call)]
            for call, future in shared:
                with contextlib.suppress(asyncio.CancelledError):
                    answered[call.id] = types.FunctionResponse(id=call.id, name=call.name, response=await future)
        finally:
            hold.cancel()
            self._tool_batches -= 1
        responses = [answered[c.id] for c in calls if c.id in answered]
        if self._link.epoch != epoch or (responses and not await self._link.send_tool_response(responses)):
            # The model resumes from before these calls and will issue them again: keep the results.
            self._log.warning("model connection changed while tools ran: results kept for the re-issued calls")
            self._forget_old_results()
            return
        for call in calls:
            self._tool_results.pop(_call_key(call), None)
        if self._hold_task is not None and self._tool_batches == 0:
            self._hold_stopper = self._spawn(self._stop_hold_later())

    def _forget_old_results(self) -> None:
        # Bounded: results nobody asked for again are dropped, oldest first.
        while len(self._tool_results) > MAX_KEPT_RESULTS:
            self._tool_results.pop(next(iter(self._tool_results)))

    def _on_tool_outcome(self, outcome: ToolOutcome) -> None:
        if self._recorder is not None:
            self._recorder.record("tool", {
                "id": outcome.id, "name": outcome.name, "args": dict(outcome.args), "status": outcome.status,
                "response": outcome.response, "latency_s": outcome.latency_s,
            })
        self._emit(
            "tool_result", id=outcome.id, name=outcome.name, status=outcome.status, response=outcome.response,
            latency_s=outcome.latency_s,
        )

    def _start_hold(self) -> None:
        if self._hold_task is None and not self._ended.is_set():
            self.stats.hold_plays += 1
            self._log.info("handler is slow: playing the hold sound")
            self._hold_task = self._spawn(self._play_hold())

    async def _play_hold(self) -> None:
        sound = HoldSound()
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not self._model_spoke.is_set() and not self._ws.closed:
            if self.state.all_played:  # never talk over the agent's own queued words
                await self._send(twilio.media_message(self._stream_sid, sound.next_frame()))
            next_at += HOLD_FRAME_S
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    async def _stop_hold_later(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HOLD_AFTER_RESPONSE_MAX_S):
                await self._model_spoke.wait()
        self._model_spoke.set()
        self._hold_task = None

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
                self._spawn(self._end_with(
                    (lambda sid: transfer(sid, action.target)) if transfer is not None else None, "transfer"
                ))

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
        if not self._ws.closed:
            await self._ws.close()

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
        if not self._ws.closed:
            await self._ws.close()

    async def _shutdown(self) -> None:
        self._ended.set()
        for who in ("caller", "agent"):  # words cut off by the end of the call still reach the log
            self._flush_transcript(who, time.monotonic())
        if self._timer is not None:
            self._timer.cancel()
        if self._link is not None:
            await self._link.close()
        if self._dispatcher is not None:
            await self._dispatcher.aclose()
        self._model_spoke.set()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if not self._ws.closed:
            await self._ws.close()
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

    def _emit(self, kind: str, **data: Any) -> None:
        for observer in self._svc.observers:
            try:
                observer(kind, data)
            except Exception:  # noqa: BLE001 - an observer's bug must not end the call
                self._log.exception("call observer failed on %s", kind)
