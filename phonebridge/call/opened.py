"""The I/O parts one call's pump (phonebridge.call.bridge) drives: the Twilio socket's sending side, and what the call
opens once the core accepted its `start` (the recorder, then the model link and the tool dispatcher, all of
them or none). The pump opens them with `open_recorder` and `Live.open`, runs the link with `Live.run`, hands
it the core's messages (`Live.tell`) and tool effects (`Live.run_tools`), and closes it at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

import phonebridge.call.effects as fx
import phonebridge.server.ws_frames as ws_frames
import phonebridge.twilio.protocol as twilio
from phonebridge.call.services import CallServices, Reactions, Recorder
from phonebridge.agent.context import CallContext, CallControl
from phonebridge.live.link import LiveLink
from phonebridge.live.events import ModelEvent
from phonebridge.agent.tools import ToolDispatcher, ToolOutcome

Log = logging.Logger | logging.LoggerAdapter[logging.Logger]
_log = logging.getLogger(__name__)


def open_recorder(services: CallServices, start: twilio.Start, log: Log) -> Recorder | None:
    """The call's recorder; None when not recording."""
    if services.recorder_factory is None:
        return None
    try:
        return services.recorder_factory(start)
    except Exception:  # noqa: BLE001 - a recording problem must not cost the call
        log.exception("cannot record this call; it goes on unrecorded")
        return None


class Live:
    """The model link and the tool dispatcher of one call."""

    def __init__(self, link: LiveLink, dispatcher: ToolDispatcher) -> None:
        self.link, self.dispatcher = link, dispatcher

    @classmethod
    def open(
        cls, services: CallServices, effect: fx.Open, control: CallControl, *,
        sink: Callable[[ModelEvent], Awaitable[None]], on_outcome: Callable[[ToolOutcome], None],
        on_reconnect: Callable[[str, int], None], recorder: Recorder | None, log: Log,
    ) -> Live:
        """Raises ModelUnavailable when the model cannot be reached at all (no usable credentials)."""
        start, params = effect.start, effect.parameters
        direction = params.get("Direction", "inbound")
        context = CallContext(
            call_sid=start.call_sid, stream_sid=start.stream_sid, from_number=params.get("From", ""),
            to_number=params.get("To", ""), direction=direction, parameters=params,
            _control=control,
        )
        client = services.genai_client()
        dispatcher = ToolDispatcher(
            services.registry, context, default_timeout_s=services.agent.tool_timeout_s, logger=log,
            executor=services.executor, on_outcome=on_outcome,
        )
        link = LiveLink(
            client, services.agent, services.declarations, sink, logger=log,
            connect_timeout_s=services.connect_timeout_s, reconnect_attempts=services.reconnect_attempts,
            tap=recorder.record if recorder is not None else None,
            on_reconnect=lambda cause: on_reconnect(cause, link.epoch),
        )
        if services.log_caller_numbers:
            log.info("call started (stream %s, %s, from %s to %s)", start.stream_sid, direction,
                     params.get("From", "?"), params.get("To", "?"))
        else:
            log.info("call started (stream %s, %s)", start.stream_sid, direction)
        return cls(link, dispatcher)

    async def run(self, greeting: str | None) -> None:
        """The conversation, greeting first once the model listens; raises ModelUnavailable if it is lost."""
        link = self.link
        runner = asyncio.create_task(link.run())
        try:
            ready = asyncio.create_task(link.ready.wait())
            await asyncio.wait({runner, ready}, return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if link.ready.is_set() and greeting:
                await link.send_text(greeting)
            await runner
        finally:
            if not runner.done():
                runner.cancel()
                # Waited for, not awaited: the link's own failure while closing is logged, not raised over
                # the error that brought us here; our own cancellation still propagates.
                await asyncio.wait({runner})
                if not runner.cancelled() and runner.exception() is not None:
                    _log.warning("the model link failed while closing: %r", runner.exception())

    def run_tools(self, effect: fx.StartTools | fx.CancelTools | fx.Cleared, reactions: Reactions) -> None:
        """The core's tool effects; handlers start here, in the step that read the toolCall, not a hop later."""
        if isinstance(effect, fx.StartTools):
            reactions.tool_calls([c.id for c in effect.calls], effect.received_at)
            self.dispatcher.start(effect.calls)
        elif isinstance(effect, fx.CancelTools):
            self.dispatcher.cancel(effect.ids)
        else:
            reactions.clear_sent(effect.received_at)

    async def tell(self, messages: Sequence[fx.ModelMessage], log: Log) -> None:
        """The core's messages for the model, in order."""
        for message in messages:
            if isinstance(message, fx.Remember):
                self.link.remember(message.role, message.text)
            elif not await self.link.send_text(message.text):
                log.warning("%s could not reach the model", message.about)

    async def close(self) -> None:
        await self.link.close()
        await self.dispatcher.aclose()


class TwilioSocket:
    """The Media Streams socket's recording, and its sending side (quiet once the caller is gone)."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.recorder: Recorder | None = None
        self._early: list[str] | None = []  # the first frames, before `start` opened the recorder

    def received(self, text: str) -> None:
        if self.recorder is not None:
            self.recorder.record("twilio_in", text)
        elif self._early is not None and len(self._early) < 8:
            self._early.append(text)

    def record(self, recorder: Recorder | None) -> None:
        """From `start` on (None: not recording): the frames before it are recorded first."""
        early, self._early = self._early or [], None
        self.recorder = recorder
        if recorder is not None:
            for text in early:
                recorder.record("twilio_in", text)

    async def send(self, text: str) -> None:
        if self.ws.closed:
            return
        if self.recorder is not None:
            self.recorder.record("twilio_out", text)
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await self.ws.send_str(text)

    async def send_all(self, texts: Sequence[str]) -> None:
        """`for text in texts: await self.send(text)`: the same records and bytes, in one socket write when
        aiohttp would write each frame at once anyway (phonebridge.server.ws_frames); frame by frame when not."""
        writer = None if self.ws.closed or not texts else ws_frames.writer_for(self.ws)
        if writer is None:
            for text in texts:
                await self.send(text)
            return
        if self.recorder is not None:
            for text in texts:
                self.recorder.record("twilio_out", text)
        with contextlib.suppress(ConnectionResetError, RuntimeError):  # what `send` lets pass
            await ws_frames.write_texts(writer, [text.encode("utf-8") for text in texts])

    async def close(self, code: int = 1000, message: bytes = b"") -> None:
        if self.ws.closed:
            return
        await self.ws.close(code=code, message=message)
        # aiohttp keeps a failed close's error (the caller already gone), and its traceback's frames hold the
        # socket: a reference cycle per call. The traceback is of no use once the call is over.
        error = self.ws.exception()
        if error is not None:
            error.__traceback__ = None


def record_outcome(recorder: Recorder | None, outcome: ToolOutcome) -> None:
    if recorder is not None:
        recorder.record("tool", {
            "id": outcome.id, "name": outcome.name, "args": dict(outcome.args), "status": outcome.status,
            "response": outcome.response, "latency_s": outcome.latency_s,
        })


def notify(observers: Sequence[Callable[[str, dict[str, Any]], None]], kind: str, data: dict[str, Any], log: Log) -> None:
    """Tell the app's call observers; an observer's bug must not end the call."""
    for observer in observers:
        try:
            observer(kind, data)
        except Exception:  # noqa: BLE001
            log.exception("call observer failed on %s", kind)
