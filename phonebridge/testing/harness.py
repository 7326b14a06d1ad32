"""The whole bridge on loopback: phonebridge's app, a LiveEmulator, a TwilioRestEmulator and callers.

    async with BridgeHarness(agent, script=Script([...]), speed=20) as h:
        async with h.caller() as caller:
            await caller.say("I'd like a pizza")
            ...

The real aiohttp server, the real google-genai client (over TLS to the emulator) and the real twilio
client (to the REST emulator) all run; only the far ends of the wires are simulated. Used by our tests,
by `phonebridge demo` and by replays, and available to users for their own agents' tests.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from aiohttp import web
from google import genai
from google.genai import types

from phonebridge.agent.definition import Agent
from phonebridge.server.app import NO_COMPRESSION, RUNTIME, Runtime, make_app
from phonebridge.server.config import Settings
from phonebridge.twilio.rest import TwilioRest
from phonebridge.testing.live_emulator import LiveEmulator, LiveQuirks
from phonebridge.testing.live_script import Script
from phonebridge.testing.twilio_caller import TwilioCaller
from phonebridge.testing.twilio_rest import TwilioRestEmulator

PUBLIC_URL = "https://agent.example.com"
AUTH_TOKEN = "test-auth-token"
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2


class BridgeHarness:
    """Starts everything on loopback in the current event loop; stops it all, leaving no task behind."""

    def __init__(
        self,
        agent: Agent,
        script: Script | Callable[[dict[str, Any]], Script] | None = None,
        *,
        speed: float = math.inf,
        settings: Settings | None = None,
        emulator: LiveEmulator | None = None,
        app_setup: Callable[[web.Application], None] | None = None,
        observers: Sequence[Callable[[str, dict[str, Any]], None]] = (),
        record_dir: str | os.PathLike[str] | None = None,
        live: bool = False,
        quirks: LiveQuirks | None = None,
    ) -> None:
        self.record_dir = None if record_dir is None else str(record_dir)
        self.live = live
        self.observers = list(observers)
        self.agent = agent
        self.speed = speed
        self.emulator = emulator or LiveEmulator(script, speed=speed, quirks=quirks)
        self.rest = TwilioRestEmulator(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN)
        self._settings = settings
        self._app_setup = app_setup
        self._stack = contextlib.AsyncExitStack()
        self._callers: list[TwilioCaller] = []
        self.app: web.Application | None = None
        self.server_url = ""

    @property
    def runtime(self) -> Runtime:
        assert self.app is not None
        return self.app[RUNTIME]

    async def __aenter__(self) -> BridgeHarness:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _start(self) -> None:
        if not self.live:
            await self._stack.enter_async_context(self.emulator)
        await self._stack.enter_async_context(self.rest)
        settings = self._settings or Settings(
            public_url=PUBLIC_URL, twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN,
            twilio_api_url=self.rest.api_base, model_connect_timeout_s=5.0, reconnect_attempts=2,
            record_dir=self.record_dir,
        )
        # Live: the SDK's own environment (GEMINI_API_KEY, ...) reaches the real service.
        if self.live:
            client = genai.Client(http_options=types.HttpOptions(async_client_args=dict(NO_COMPRESSION)))
        else:
            options = self.emulator.http_options()
            options.async_client_args = {**(options.async_client_args or {}), **NO_COMPRESSION}
            client = genai.Client(api_key="emulator-key", http_options=options)
        rest = TwilioRest(ACCOUNT_SID, AUTH_TOKEN, api_base=self.rest.api_base, backoff_s=0.01)
        self.app = make_app(settings, self.agent, genai_client=client, rest=rest, observers=self.observers)
        if self._app_setup is not None:
            self._app_setup(self.app)
        runner = web.AppRunner(self.app, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self.server_url = f"http://127.0.0.1:{port}"
        self._stack.push_async_callback(self._close_callers)

    def caller(self, **kwargs: Any) -> TwilioCaller:
        """A new simulated call leg to this bridge (not yet dialled: `async with` it, or `await dial()`)."""
        kwargs.setdefault("public_url", PUBLIC_URL)
        kwargs.setdefault("auth_token", AUTH_TOKEN)
        kwargs.setdefault("account_sid", ACCOUNT_SID)
        kwargs.setdefault("speed", self.speed)
        caller = TwilioCaller(self.server_url, **kwargs)
        self._callers.append(caller)
        # Twilio knows the call before the webhook: hang-up and transfer through REST find it.
        self.rest.add_inbound_call(caller.call_sid, to=caller.to_number, from_=caller.from_number)
        return caller

    async def _close_callers(self) -> None:
        for caller in self._callers:
            with contextlib.suppress(OSError):  # aiohttp's ws.close() absorbs the rest; a reset socket is gone anyway
                await caller.drop()

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until the bridge has no call in progress."""
        if not await self.runtime.wait_idle(timeout):
            raise AssertionError(f"bridge still has {len(self.runtime.active)} active calls after {timeout} s")

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()
