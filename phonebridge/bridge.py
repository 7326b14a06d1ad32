"""One phone call's I/O: a pump between the Twilio media socket, the model session and the call's core.

The policy (stream rules, turns, barge-in, transcripts, deadlines) is phonebridge.call_core.Call, which does
no I/O. This module feeds it what arrives and executes what it asks for. Concurrency: the Twilio socket is read
only here, in the handler's task (`run`). The model is read by LiveLink's task, which calls `_on_model_event`.
Tool calls run in their own tasks. Anything may *send* on the Twilio socket. Neither direction waits for the
other. One asyncio timer serves every deadline of the core (`next_deadline`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from phonebridge import call_effects as fx
from phonebridge import twilio
from phonebridge.call import HangUp, Transfer
from phonebridge.call_core import Call
from phonebridge.call_services import CallServices, CallStats, Reactions, Recorder
from phonebridge.context import CallContext
from phonebridge.errors import ModelUnavailable
from phonebridge.model import LiveLink
from phonebridge.model_events import AudioOut, ModelEvent
from phonebridge.stream_guard import StreamGuard
from phonebridge.tool_calls import HoldPlayer, ToolCallRunner
from phonebridge.tools import ToolDispatcher, ToolOutcome


@dataclass(slots=True)
class _Live:
    """What a call opens once its `start` is accepted and the model is reachable: all of it or none."""

    link: LiveLink
    dispatcher: ToolDispatcher
    hold: HoldPlayer
    tools: ToolCallRunner


async def _transfer_to(transfer: Callable[[str, str], Awaitable[Any]], target: str, call_sid: str) -> Any:
    return await transfer(call_sid, target)


class CallSession:
    """Runs one Media Streams WebSocket from `start` to the end of the call."""

    def __init__(self, ws: web.WebSocketResponse, services: CallServices, guard: StreamGuard | None = None) -> None:
        self._ws, self._svc = ws, services
        self._guard = guard or StreamGuard()
        self._loop = asyncio.get_running_loop()
        self.call = Call(self._guard, self._loop.time())
        self.stats: CallStats = self.call.stats
        self.state = self.call.state
        self._reactions = Reactions(services.metrics)
        self._live: _Live | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ended = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._recorder: Recorder | None = None
        self._early: list[str] | None = []  # Twilio frames before `start`, for the recorder

    @property
    def _log(self) -> logging.LoggerAdapter[logging.Logger]:
        return self.call.log

    # -- the Twilio side (the handler's task) ------------------------------------------------------------

    async def run(self) -> CallStats:
        self._arm_timer()
        try:
            async for message in self._ws:
                if message.type == WSMsgType.TEXT:
                    if self._recorder is not None:
                        self._recorder.record("twilio_in", message.data)
                    elif self._early is not None and len(self._early) < 8:
                        self._early.append(message.data)
                    await self._on_twilio_text(message.data)
                elif message.type == WSMsgType.BINARY:
                    self.call.receive_binary(self._loop.time())
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
        media = self.call.receive_twilio(text, self._loop.time())
        if media is None:
            await self._drain()
        elif self._live is not None:  # the hot path: media produces nothing else to drain
            started = time.perf_counter()
            pcm = self.call.inbound.process(media.payload)
            transcoded = time.perf_counter()
            await self._live.link.send_audio(pcm)
            metrics = self._svc.metrics
            if metrics is not None:
                metrics.observe_transcode("inbound", transcoded - started)
                metrics.observe_inbound(time.perf_counter() - started)

    def _open(self, event: twilio.Start, params: dict[str, str]) -> None:
        context = CallContext(
            call_sid=event.call_sid, stream_sid=event.stream_sid, from_number=params.get("From", ""),
            to_number=params.get("To", ""), direction=params.get("Direction", "inbound"), parameters=params,
            _control=self,
        )
        self._start_recording(event)
        try:
            client = self._svc.genai_client()
        except ModelUnavailable as exc:  # no usable credentials: end the stream so the fallback TwiML runs
            self._log.error("the model is unreachable, ending the stream so the fallback TwiML runs: %s", exc)
            self.stats.outcome = "model_unavailable"
            self._end()
            return
        dispatcher = ToolDispatcher(
            self._svc.registry, context, default_timeout_s=self._svc.agent.tool_timeout_s, logger=self._log,
            executor=self._svc.executor, on_outcome=self._on_tool_outcome,
        )
        hold = HoldPlayer(self._send_hold_frame, self.call.may_hold, self._spawn, self._log)
        link = LiveLink(
            client, self._svc.agent, self._svc.declarations, self._on_model_event,
            logger=self._log, connect_timeout_s=self._svc.connect_timeout_s,
            reconnect_attempts=self._svc.reconnect_attempts,
            tap=self._recorder.record if self._recorder is not None else None,
            on_reconnect=lambda cause: self._emit("reconnect", cause=cause),
        )
        tools = ToolCallRunner(
            dispatcher, link, hold, self._svc.agent.hold_sound_after_s, self._spawn, self._log,
            on_sent=self._reactions.tool_response_sent,
        )
        self._live = _Live(link, dispatcher, hold, tools)
        if self._svc.log_caller_numbers:
            self._log.info("call started (stream %s, %s, from %s to %s)", event.stream_sid,
                           params.get("Direction", "inbound"), params.get("From", "?"), params.get("To", "?"))
        else:
            self._log.info("call started (stream %s, %s)", event.stream_sid, params.get("Direction", "inbound"))
        self._emit("call_start", call_sid=event.call_sid, stream_sid=event.stream_sid, parameters=params)
        self._spawn(self._run_model(link))

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
            self._end()
            await self._close_socket()

    async def _on_model_event(self, event: ModelEvent) -> None:
        now = time.monotonic()
        if type(event) is AudioOut:  # the hot path
            started = time.perf_counter()
            if not self.call.agent_audio(event.pcm24k, now):
                await self._drain()  # the cut turn's audio: dropped, but it may have closed the caller's line
                return
            if self._live is not None:
                self._live.hold.model_spoke()
            transcoded = time.perf_counter()
            await self._drain()
            metrics = self._svc.metrics
            if metrics is not None:
                metrics.observe_transcode("outbound", transcoded - started)
                metrics.observe_outbound(time.perf_counter() - started)
            return
        self.call.receive_model(event, now)
        await self._drain()

    def _on_tool_outcome(self, outcome: ToolOutcome) -> None:
        self._reactions.tool_finished(outcome.id, outcome.started, outcome.finished)
        if self._recorder is not None:
            self._recorder.record("tool", {
                "id": outcome.id, "name": outcome.name, "args": dict(outcome.args), "status": outcome.status,
                "response": outcome.response, "latency_s": outcome.latency_s,
            })
        self.call.tool_finished(outcome)
        self._run_effects()

    # -- CallControl (from handlers, on the loop) -------------------------------------------------------

    def request_hang_up(self) -> None:
        self.call.request_hang_up(time.monotonic())
        self._spawn(self._drain())
        self._arm_timer()

    def request_transfer(self, target: str) -> None:
        self.call.request_transfer(target, time.monotonic())
        self._spawn(self._drain())
        self._arm_timer()

    def _arm_timer(self) -> None:
        """One timer for every deadline of the core."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.call.next_deadline()
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.call.handle_timer(self._loop.time())
        self._arm_timer()
        self._spawn(self._drain())

    # -- executing what the core asks for ----------------------------------------------------------------

    async def _drain(self) -> None:
        # Sent in order from the calling task: a clear goes out in the same loop turn as `interrupted`.
        for frame in self.call.twilio_to_send():
            await self._send(frame)
        live = self._live
        for message in self.call.model_to_send():
            if live is None:
                break  # no model: nothing to tell it
            if isinstance(message, fx.Remember):
                live.link.remember(message.role, message.text)
            elif not await live.link.send_text(message.text):
                self._log.warning("%s could not reach the model", message.about)
        for effect in self.call.effects():
            closing = self._run(effect)
            if closing is not None:  # closed from the calling task, before it reads the next frame
                await closing

    def _run_effects(self) -> None:
        for effect in self.call.effects():
            closing = self._run(effect)
            if closing is not None:
                self._spawn(closing)

    def _run(self, effect: fx.Effect) -> Awaitable[None] | None:
        live = self._live
        if isinstance(effect, fx.Observe):
            self._emit(effect.kind, **effect.data)
        elif isinstance(effect, fx.StartTools):
            if live is not None:  # model events come only through a live link
                self._reactions.tool_calls([c.id for c in effect.calls], live.link.received_at)
                live.tools.on_tool_calls(effect.calls)
        elif isinstance(effect, fx.CancelTools):
            if live is not None:
                live.dispatcher.cancel(effect.ids)
        elif isinstance(effect, fx.Cleared):
            if live is not None:
                self._reactions.clear_sent(live.link.received_at)
        elif isinstance(effect, HangUp):
            self._spawn(self._end_with(self._svc.hang_up, effect.reason))
        elif isinstance(effect, Transfer):
            transfer = self._svc.transfer
            rest = functools.partial(_transfer_to, transfer, effect.target) if transfer is not None else None
            self._spawn(self._end_with(rest, "transfer"))
        else:
            return self._run_stream(effect)
        return None

    def _run_stream(self, effect: fx.Effect) -> Awaitable[None] | None:
        if isinstance(effect, fx.Open):
            self._open(effect.start, effect.parameters)
            self._arm_timer()  # from the start deadline to the media one
        elif isinstance(effect, fx.Stopped):
            self._end()
        elif isinstance(effect, fx.Refuse | fx.Expire):  # the core logged it; counted here
            if self._svc.metrics is not None:
                self._svc.metrics.stream_guarded(effect.reason)
            if effect.reason == "media_timeout":
                self._spawn(self._end_with(self._svc.hang_up, "the media stream went silent"))
                return None
            self._end()
            if isinstance(effect, fx.Expire):  # no_start: from the timer
                self._spawn(self._close_socket(1008, b"no start"))
                return None
            return self._close_socket(1008, b"stream not issued for this call")
        return None

    def _end(self) -> None:
        self._ended.set()
        self.call.stop_watching()

    async def _send_hold_frame(self, ulaw: bytes) -> None:
        await self._send(self.call.hold_frame(ulaw))

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
        self._end()
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
        self._end()
        await self._close_socket()

    async def _shutdown(self) -> None:
        self._end()
        self.call.finish(time.monotonic())  # words cut off by the end of the call still reach the log
        await self._drain()  # transcript lines and their Remember: the link still keeps the history
        live = self._live
        if self._timer is not None:
            self._timer.cancel()
        if live is not None:
            await live.link.close()
            await live.dispatcher.aclose()
            live.hold.close()
            self.stats.hold_plays = live.hold.plays
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._close_socket()
        self.call.log_summary(time.monotonic())
        self._emit("call_end", stats=self.stats)
        if self._recorder is not None:
            await self._recorder.aclose()
        self._release()

    def _release(self) -> None:
        """Drop the call's parts. Each holds callbacks into this session, so the call's whole object graph
        (transcoders, state, transcript, the model's history) would be a reference cycle that only the
        cyclic GC's rare full collections free: at 100 concurrent calls RSS climbed ~0.4 MiB a call."""
        if self._live is not None:
            self._live.link.detach()
        self._live = None
        self._timer = None

    def _emit(self, kind: str, **data: Any) -> None:
        for observer in self._svc.observers:
            try:
                observer(kind, data)
            except Exception:  # noqa: BLE001 - an observer's bug must not end the call
                self._log.exception("call observer failed on %s", kind)
