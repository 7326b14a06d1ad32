"""A call's function calls: exactly one answer per call the model waits for, and no dead air meanwhile.

`ToolCallRunner` runs each toolCall through the ToolDispatcher and sends the responses on the model
connection they belong to. `HoldPlayer` plays the hold sound while handlers run long, and stops it the
moment the model speaks again. Both are driven by the call (bridge.py); neither touches a socket itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from google.genai import types

from phonebridge.hold import HoldSound
from phonebridge.model import LiveLink
from phonebridge.tools import ToolDispatcher

HOLD_FRAME_S = 0.02
HOLD_AFTER_RESPONSE_MAX_S = 5.0  # after the last response, the model has this long to speak before hold stops
MAX_KEPT_RESULTS = 32

Spawn = Callable[[Awaitable[Any]], "asyncio.Task[Any]"]
Log = logging.Logger | logging.LoggerAdapter[logging.Logger]


class HoldPlayer:
    """Soft hold frames, paced at real time, while a handler is slow and the model is silent."""

    def __init__(
        self, send_frame: Callable[[bytes], Awaitable[None]], may_play: Callable[[], bool], spawn: Spawn, log: Log
    ) -> None:
        self._send_frame, self._may_play, self._spawn, self._log = send_frame, may_play, spawn, log
        self._model_spoke = asyncio.Event()
        self._task: asyncio.Task[Any] | None = None
        self._stopper: asyncio.Task[Any] | None = None
        self.plays = 0

    def tools_started(self) -> None:
        """A toolCall arrived: the model is silent until it is answered (a chained call keeps hold going)."""
        self._model_spoke.clear()
        if self._stopper is not None:
            self._stopper.cancel()
            self._stopper = None

    def model_spoke(self) -> None:
        self._model_spoke.set()

    def start(self) -> None:
        if self._task is None and not self._model_spoke.is_set():
            self.plays += 1
            self._log.info("handler is slow: playing the hold sound")
            self._task = self._spawn(self._play())

    def tools_answered(self) -> None:
        """Every running toolCall has been answered: stop once the model speaks, or after a grace period."""
        if self._task is not None:
            self._stopper = self._spawn(self._stop_later())

    def close(self) -> None:
        self._model_spoke.set()

    async def _play(self) -> None:
        sound = HoldSound()
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not self._model_spoke.is_set():
            if self._may_play():  # never talk over the agent's own queued words
                await self._send_frame(sound.next_frame())
            next_at += HOLD_FRAME_S
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    async def _stop_later(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HOLD_AFTER_RESPONSE_MAX_S):
                await self._model_spoke.wait()
        self._model_spoke.set()
        self._task = None


def _call_key(call: types.FunctionCall) -> str:
    return f"{call.name}:{json.dumps(call.args or {}, sort_keys=True, default=str)}"


class ToolCallRunner:
    """Runs toolCalls and answers each call id once, on the connection that asked.

    If the model connection changes while handlers run, the new connection resumed from before these calls
    and the model issues them again with new ids: the responses are not sent on the wrong connection but
    kept, and a re-issued call with the same name and arguments gets the kept (or still running) result
    instead of running the handler twice.
    """

    def __init__(
        self, dispatcher: ToolDispatcher, link: LiveLink, hold: HoldPlayer, hold_after_s: float, spawn: Spawn, log: Log,
        *, on_sent: Callable[[list[str | None]], None] | None = None,
    ) -> None:
        self._on_sent = on_sent  # told the ids of each tool_response once it is on the wire
        self._dispatcher, self._link, self._hold = dispatcher, link, hold
        self._hold_after_s, self._spawn, self._log = hold_after_s, spawn, log
        self._results: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._batches = 0  # toolCalls whose handlers are still running

    def on_tool_calls(self, calls: Sequence[types.FunctionCall]) -> None:
        self._hold.tools_started()
        self._batches += 1
        loop = asyncio.get_running_loop()
        fresh, shared = self._split(calls, loop)
        # The handlers start here, in the step that read the toolCall, not one loop hop later from a task.
        started = self._dispatcher.start(fresh)
        self._spawn(self._answer(calls, self._link.epoch, fresh, shared, started))

    async def _answer(
        self, calls: Sequence[types.FunctionCall], epoch: int, fresh: list[types.FunctionCall],
        shared: list[tuple[types.FunctionCall, asyncio.Future[dict[str, Any]]]],
        started: list[asyncio.Task[types.FunctionResponse]],
    ) -> None:
        hold = asyncio.get_running_loop().call_later(self._hold_after_s, self._hold.start)
        try:
            answered = {r.id: r for r in await self._dispatcher.collect(started)}
            self._settle(fresh, answered)
            for call, future in shared:
                with contextlib.suppress(asyncio.CancelledError):
                    answered[call.id] = types.FunctionResponse(id=call.id, name=call.name, response=await future)
        finally:
            hold.cancel()
            self._batches -= 1
        responses = [answered[c.id] for c in calls if c.id in answered]
        if self._link.epoch != epoch or (responses and not await self._link.send_tool_response(responses)):
            # The model resumes from before these calls and will issue them again: keep the results.
            self._log.warning("model connection changed while tools ran: results kept for the re-issued calls")
            while len(self._results) > MAX_KEPT_RESULTS:  # bounded: oldest unclaimed results go first
                self._results.pop(next(iter(self._results)))
            return
        if responses and self._on_sent is not None:
            self._on_sent([r.id for r in responses])
        for call in calls:
            self._results.pop(_call_key(call), None)
        if self._batches == 0:
            self._hold.tools_answered()

    def _split(
        self, calls: Sequence[types.FunctionCall], loop: asyncio.AbstractEventLoop
    ) -> tuple[list[types.FunctionCall], list[tuple[types.FunctionCall, asyncio.Future[dict[str, Any]]]]]:
        """Calls to run, and re-issued calls that share a result already kept or still running."""
        fresh: list[types.FunctionCall] = []
        shared: list[tuple[types.FunctionCall, asyncio.Future[dict[str, Any]]]] = []
        for call in calls:
            key = _call_key(call)
            if key in self._results:
                shared.append((call, self._results[key]))
            else:
                self._results[key] = loop.create_future()
                fresh.append(call)
        return fresh, shared

    def _settle(self, fresh: list[types.FunctionCall], answered: dict[str | None, types.FunctionResponse]) -> None:
        for call in fresh:
            future = self._results[_call_key(call)]
            if call.id in answered:
                future.set_result(answered[call.id].response or {})
            else:  # cancelled: nobody gets an answer for it
                future.cancel()
                del self._results[_call_key(call)]
