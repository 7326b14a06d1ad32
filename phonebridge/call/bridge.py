"""One phone call's I/O: a pump between the Twilio media socket, the model link, the tool handlers and REST.

Every decision is phonebridge.call.core.Call's (stream rules, turns, barge-in, transcripts, tool answers, the
hold sound, deadlines); this module feeds it what arrives and executes what it asks for. Concurrency: the
Twilio socket is read only here, in the handler's task (`run`); the model is read by LiveLink's task, which
calls `_on_model_event`; handlers run in the ToolDispatcher's tasks and report through `_on_tool_outcome`.
Anything may *send* on the Twilio socket. One asyncio timer serves every deadline of the core.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any

from aiohttp import WSMsgType, web

import phonebridge.call.effects as fx
import phonebridge.call.tool_turns as tool_turns
from phonebridge.call.core import Call
from phonebridge.call.actions import CallActions
from phonebridge.call.opened import Live, TwilioSocket, notify, open_recorder, record_outcome
from phonebridge.call.services import CallServices, CallStats, Reactions
from phonebridge.errors import ModelUnavailable
from phonebridge.live.events import AudioOut, ModelEvent
from phonebridge.server.ws_inline import MediaSocket
from phonebridge.twilio.stream_guard import StreamGuard
from phonebridge.agent.tools import ToolOutcome


class CallSession(CallActions):
    """Runs one Media Streams WebSocket from `start` to the end of the call."""

    def __init__(self, ws: web.WebSocketResponse, services: CallServices, guard: StreamGuard | None = None) -> None:
        self._ws, self._svc, self._sock = ws, services, TwilioSocket(ws)
        self._loop = asyncio.get_running_loop()
        self.call = Call(guard or StreamGuard(), self._loop.time(), hold_after_s=services.agent.hold_sound_after_s,
                         hold_grace_s=tool_turns.HOLD_AFTER_RESPONSE_MAX_S)
        self.stats: CallStats = self.call.stats
        self.state = self.call.state
        self._reactions = Reactions(services.metrics)
        self._live: Live | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ended = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def _log(self) -> logging.LoggerAdapter[logging.Logger]:
        return self.call.log

    # -- the Twilio side (the handler's task) ------------------------------------------------------------

    async def run(self) -> CallStats:
        self._arm_timer()
        if isinstance(self._ws, MediaSocket):
            self._ws.offer_texts(self._media_now)
        try:
            async for message in self._ws:
                if message.type == WSMsgType.TEXT:
                    self._sock.received(message.data)
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
        elif self._live is not None:  # media produces nothing else to drain
            started = time.perf_counter()
            pcm = self.call.inbound.process(media.payload)
            transcoded = time.perf_counter()
            await self._live.link.send_audio(pcm)
            self._observe_inbound(started, transcoded)

    def _media_now(self, text: str) -> bool:
        """The hot path, offered by a MediaSocket each text frame while `run` waits for the next (ws_inline):
        our stream's media is transcoded and written to the model here, in the socket's read callback, when
        that write needs no await. False, with nothing done, for anything else: `run` then receives it."""
        live = self._live
        if live is None or self._ended.is_set() or not live.link.audio_ready():
            return False
        media = self.call.receive_media(text, self._loop.time())
        if media is None:
            return False
        self._sock.received(text)
        started = time.perf_counter()  # as on the queued path: from the parsed frame to the written audio
        pcm = self.call.inbound.process(media.payload)
        transcoded = time.perf_counter()
        live.link.send_audio_now(pcm)
        self._observe_inbound(started, transcoded)
        return True

    def _observe_inbound(self, started: float, transcoded: float) -> None:
        metrics = self._svc.metrics
        if metrics is not None:
            metrics.observe_transcode("inbound", transcoded - started)
            metrics.observe_inbound(time.perf_counter() - started)

    def _open(self, effect: fx.Open) -> None:
        self._sock.record(open_recorder(self._svc, effect.start, self._log))
        try:
            self._live = Live.open(self._svc, effect, self, sink=self._on_model_event, on_outcome=self._on_tool_outcome,
                                   on_reconnect=self._on_reconnect, recorder=self._sock.recorder, log=self._log)
        except ModelUnavailable as exc:  # no usable credentials
            self._unreachable(exc)
            self._end()
            return
        self._emit("call_start", call_sid=effect.start.call_sid, stream_sid=effect.start.stream_sid,
                   parameters=effect.parameters)
        self._spawn(self._run_model(self._live))

    def _opened(self, effect: fx.Open) -> None:
        self._open(effect)
        self._arm_timer()  # from the start deadline to the media one

    # -- the model side (LiveLink's task) and the handlers' -----------------------------------------------

    async def _run_model(self, live: Live) -> None:
        try:
            await live.run(self._svc.agent.greeting)
        except ModelUnavailable as exc:
            self._unreachable(exc)
        finally:
            self._end()
            await self._sock.close()

    def _unreachable(self, exc: ModelUnavailable) -> None:
        self._log.error("the model is unreachable, ending the stream so the fallback TwiML runs: %s", exc)
        self.stats.outcome = "model_unavailable"

    async def _on_model_event(self, event: ModelEvent) -> None:
        now = time.monotonic()
        if type(event) is AudioOut:  # the hot path
            started = time.perf_counter()
            if not self.call.agent_audio(event.pcm24k, now):
                await self._drain()  # the cut turn's audio: dropped, but it may have closed the caller's line
                return
            transcoded = time.perf_counter()
            await self._drain()
            metrics = self._svc.metrics
            if metrics is not None:
                metrics.observe_transcode("outbound", transcoded - started)
                metrics.observe_outbound(time.perf_counter() - started)
            return
        self.call.receive_model(event, now)
        await self._drain()

    def _on_reconnect(self, cause: str, epoch: int) -> None:
        self._emit("reconnect", cause=cause)
        self.call.epoch_changed(epoch)

    def _on_tool_outcome(self, outcome: ToolOutcome) -> None:
        self._reactions.tool_finished(outcome.id, outcome.started, outcome.finished)
        record_outcome(self._sock.recorder, outcome)
        self.call.tool_finished(outcome, time.monotonic())
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
        if deadline is not None and not self._ended.is_set():
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.call.handle_timer(self._loop.time())
        self._arm_timer()
        self._spawn(self._drain())

    # -- executing what the core asks for ----------------------------------------------------------------

    async def _drain(self) -> None:
        # Sent in order from the calling task: a clear goes out in the same loop turn as `interrupted`.
        frames = self.call.twilio_to_send()
        if frames:  # one socket write for all of them (a chunk of audio is two media frames and maybe a mark)
            await self._sock.send_all(frames)
        messages = self.call.model_to_send()
        if messages and self._live is not None:  # no model: nothing to tell it
            await self._live.tell(messages, self._log)
        for effect in self.call.effects():
            closing = self._run(effect)
            if closing is not None:  # closed from the calling task, before it reads the next frame
                await closing
        if self.call.tools.moved:  # a tool turn's deadline may be sooner than the armed one
            self._arm_timer()

    def _run_effects(self) -> None:
        for effect in self.call.effects():
            closing = self._run(effect)
            if closing is not None:
                self._spawn(closing)
        if self.call.tools.moved:
            self._arm_timer()

    def _end(self) -> None:
        self._ended.set()
        self.call.stop_watching()

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
        await self._sock.close()

    async def _shutdown(self) -> None:
        if isinstance(self._ws, MediaSocket):
            self._ws.offer_texts(None)  # the socket's queue held this session: no cycle left behind
        self._end()
        self.call.finish(time.monotonic())  # words cut off by the end of the call still reach the log
        await self._drain()  # transcript lines and their Remember: the link still keeps the history
        if self._timer is not None:
            self._timer.cancel()
        if self._live is not None:
            await self._live.close()
        self.stats.hold_plays = self.call.tools.plays
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._sock.close()
        self.call.log_summary(time.monotonic())
        self._emit("call_end", stats=self.stats)
        if self._sock.recorder is not None:
            await self._sock.recorder.aclose()
        # Each part holds callbacks into this session: dropped, the call's object graph is no reference cycle
        # that only the cyclic GC's rare full collections free (at 100 calls RSS climbed ~0.4 MiB a call).
        if self._live is not None:
            self._live.link.detach()
        self._live = self._timer = None

    def _emit(self, kind: str, **data: Any) -> None:
        notify(self._svc.observers, kind, data, self._log)

