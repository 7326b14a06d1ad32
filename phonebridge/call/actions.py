"""What the pump (phonebridge.call.bridge) does for each effect its core asks for, and how a call ends.

The core decides; these execute: a tool answer onto the model link, an observer event, the tool handlers,
a hang-up or transfer through Twilio's REST API (then our side of the stream closes, whatever REST said), and a
refused or expired stream closed with 1008. `EXECUTE` maps each effect type to its action, so an effect
without one fails loudly (a test holds it to the `Effect` union). An action returns an awaitable when the
close must happen before the next Twilio frame is read; the pump awaits it (or spawns it off the reader).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import phonebridge.call.effects as fx
from phonebridge.call.core import Call
from phonebridge.call.opened import Live, TwilioSocket
from phonebridge.call.services import CallServices, CallStats, Reactions
from phonebridge.call.state import HangUp, Transfer


async def _transfer_to(transfer: Callable[[str, str], Awaitable[Any]], target: str, call_sid: str) -> Any:
    return await transfer(call_sid, target)


class CallActions:
    """The pump's actions; CallSession (phonebridge.call.bridge) holds the parts they act on."""

    call: Call
    stats: CallStats
    _svc: CallServices
    _sock: TwilioSocket
    _live: Live | None
    _reactions: Reactions

    @property
    def _log(self) -> logging.LoggerAdapter[logging.Logger]:
        raise NotImplementedError

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        raise NotImplementedError

    def _end(self) -> None:
        raise NotImplementedError

    def _emit(self, kind: str, **data: Any) -> None:
        raise NotImplementedError

    def _run_effects(self) -> None:
        raise NotImplementedError

    def _opened(self, effect: fx.Open) -> None:  # opening the call's parts is the pump's own
        raise NotImplementedError

    def _run(self, effect: fx.Effect) -> Awaitable[None] | None:
        """One effect; what it returns is awaited (or spawned) by the caller: a close before the next frame."""
        action: Callable[[Any], Awaitable[None] | None] = getattr(self, EXECUTE[type(effect)])
        return action(effect)

    def _respond(self, effect: fx.SendToolResponse) -> Awaitable[None] | None:
        """The answer written at once from the callback that ran the core (no task, no loop hop: issue 17's
        handler-return-to-tool_response budget) where the link can; else the awaitable of the SDK's path, which
        the pump awaits or spawns as before. Either way the core hears of it first, then its effects run."""
        sent = self._live.link.try_send_tool_response(effect.results, effect.epoch) if self._live is not None else False
        if sent is None:
            return self._respond_later(effect)
        self._responded(effect, sent)
        return None

    async def _respond_later(self, effect: fx.SendToolResponse) -> None:
        sent = self._live is not None and await self._live.link.send_tool_response(effect.results, effect.epoch)
        self._responded(effect, sent)

    def _responded(self, effect: fx.SendToolResponse, sent: bool) -> None:
        if sent:
            self._reactions.tool_response_sent([r.id for r in effect.results])
        self.call.tool_response_sent(effect.number, sent, time.monotonic())
        self._run_effects()

    def _observe(self, effect: fx.Observe) -> None:
        self._emit(effect.kind, **effect.data)

    def _tools(self, effect: fx.StartTools | fx.CancelTools | fx.Cleared) -> None:
        if self._live is not None:  # model events come only through a live link
            self._live.run_tools(effect, self._reactions)

    def _hang_up(self, effect: HangUp) -> None:
        self._spawn(self._end_with(self._svc.hang_up, effect.reason))

    def _transfer(self, effect: Transfer) -> None:
        transfer = self._svc.transfer
        rest = functools.partial(_transfer_to, transfer, effect.target) if transfer is not None else None
        self._spawn(self._end_with(rest, "transfer"))

    def _stopped(self, effect: fx.Stopped) -> None:
        self._end()

    def _refused(self, effect: fx.Refuse) -> Awaitable[None]:  # the core logged it; counted here
        self._guarded(effect.reason)
        self._end()
        return self._sock.close(1008, b"stream not issued for this call")  # before the next frame is read

    def _expired(self, effect: fx.Expire) -> None:  # from the timer
        self._guarded(effect.reason)
        if effect.reason == "media_timeout":
            self._spawn(self._end_with(self._svc.hang_up, "the media stream went silent"))
            return
        self._end()
        self._spawn(self._sock.close(1008, b"no start"))

    def _guarded(self, reason: str) -> None:
        if self._svc.metrics is not None:
            self._svc.metrics.stream_guarded(reason)

    async def _end_with(self, rest_action: Callable[[str], Awaitable[Any]] | None, why: str) -> None:
        self._log.info("ending the call: %s", why)
        if rest_action is not None and self.stats.call_sid:
            try:
                await rest_action(self.stats.call_sid)
            except Exception:  # noqa: BLE001 - still end our side of the call
                self._log.exception("Twilio REST %s failed; closing the stream instead", why)
        self._end()
        await self._sock.close()


# What each effect of the core's does: one method name per type, so a new effect without one fails loudly.
EXECUTE: dict[type, str] = {
    fx.Observe: "_observe", fx.StartTools: "_tools", fx.CancelTools: "_tools", fx.Cleared: "_tools",
    fx.SendToolResponse: "_respond", HangUp: "_hang_up", Transfer: "_transfer", fx.Open: "_opened",
    fx.Stopped: "_stopped", fx.Refuse: "_refused", fx.Expire: "_expired",
}
