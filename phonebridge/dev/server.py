"""The server behind `phonebridge dev` (phonebridge.dev.cli is its command line): the real bridge from make_app,
the softphone's routes (phonebridge.dev.routes), the in-process LiveEmulator when there is no key, and the
agent file's watcher (phonebridge.dev.reload). Everything on loopback, in the current event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from typing import Any, TextIO

from aiohttp import web
from google import genai

from phonebridge.server.app import NO_COMPRESSION, make_app
from phonebridge.server.config import Settings
from phonebridge.dev.reload import AgentReloader, install_agent
from phonebridge.dev.routes import DEV_ACCOUNT_SID, DevRest, DevRoutes, EventHub, call_scope
from phonebridge.dev.script import declarations_of, derived_script
from phonebridge.errors import ConfigError
from phonebridge.twilio.signatures import SignatureChecker

log = logging.getLogger("phonebridge.dev")

HOST = "127.0.0.1"  # never anything else: the page's token is the only lock, and getUserMedia wants loopback
POLL_S = 0.5


class DevServer:
    """The dev server in the current event loop: `await start()` (returns the page URL), `await stop()`."""

    def __init__(
        self, agent: str, *, port: int = 8080, script: str | None = None, live: bool = False,
        record_dir: str | None = None, emulator_speed: float = 1.0, poll_s: float = POLL_S,
        out: TextIO = sys.stdout,
    ) -> None:
        self._spec, self._port, self._script_path, self.live = agent, port, script, live
        self.record_dir, self._speed, self._poll_s, self._out = record_dir, emulator_speed, poll_s, out
        self.hub = EventHub()
        self.emulator: Any = None
        self.reloader: AgentReloader | None = None
        self.app: web.Application | None = None
        self.routes: DevRoutes | None = None
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> str:
        self.reloader = AgentReloader(self._spec)
        if self._script_path is not None:
            from phonebridge.testing.live_script import Script

            Script.from_file(self._script_path)  # refuse a broken script now, not at the first call
        sock = _bind(self._port)
        try:
            await self._serve(sock)
        except BaseException:
            sock.close()
            await self.stop()
            raise
        self._watcher = asyncio.create_task(self._watch())
        self._announce()
        return self.url

    async def _serve(self, sock: socket.socket) -> None:
        port = sock.getsockname()[1]
        local = f"http://{HOST}:{port}"
        # Twilio's signature still guards the voice webhook: /dev/call signs its synthetic webhook with this
        # process's own secret, so the bridge's webhook code runs exactly as for a real call.
        settings = Settings.from_env(record_dir=self.record_dir).with_(
            public_url=local, twilio_account_sid=DEV_ACCOUNT_SID, twilio_auth_token=_secret(),
            validate_signatures=True, twilio_api_url=None,
        )
        self.routes = DevRoutes(self.hub, SignatureChecker(settings.twilio_auth_token or "", local), local)
        assert self.reloader is not None
        with _quiet_http_public_url():
            self.app = make_app(
                settings, self.reloader.agent, genai_client=await self._model_client(), rest=DevRest(self.hub),
                observers=[self.hub.observer], upgrade_authoriser=self.routes.authorised,
            )
        self.app.middlewares.append(call_scope)
        self.routes.add_to(self.app)
        self.hub.set_status(self._status())
        self._runner = web.AppRunner(self.app, handle_signals=False, shutdown_timeout=3.0, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        self.url = f"{local}/?token={self.routes.token}"

    async def _model_client(self) -> genai.Client | None:
        if self.live:
            return None  # make_app's default: genai.Client() from the SDK's environment (GEMINI_API_KEY, ...)
        from phonebridge.testing.live_emulator import LiveEmulator

        self.emulator = LiveEmulator(self._script_for, speed=self._speed)
        await self.emulator.start()
        options = self.emulator.http_options()
        options.async_client_args = {**(options.async_client_args or {}), **NO_COMPRESSION}
        return genai.Client(api_key="phonebridge-dev-emulator", http_options=options)

    def _script_for(self, setup: dict[str, Any]) -> Any:
        """Each call's emulator script: --script (read again per call), or derived from the tools offered."""
        from phonebridge.testing.live_script import Script

        if self._script_path is not None:
            try:
                return Script.from_file(self._script_path)
            except (ConfigError, OSError) as exc:  # edited into a broken state, or moved away, mid-session
                self._say(f"cannot read --script {self._script_path}: {exc}; this call uses the derived script")
                self.hub.publish({"kind": "dev_error", "call_sid": "", "error": str(exc)})
        greets = self.reloader is None or self.reloader.agent.greeting is not None
        return derived_script(declarations_of(setup), greets=greets)

    def _status(self) -> dict[str, Any]:
        assert self.reloader is not None
        model = "Gemini Live (GEMINI_API_KEY)" if self.live else "the built-in emulator (no GEMINI_API_KEY)"
        script = self._script_path or "derived from the agent's tools"
        return {**self.reloader.status.as_dict(), "model": model, "script": None if self.live else script}

    def _announce(self) -> None:
        assert self.reloader is not None
        status = self.reloader.status
        self._say(f"agent {status.spec}: tools {', '.join(status.tools) or '(none)'}"
                  + ("" if status.watching else " (a module: not reloaded on change; pass a file to reload)"))
        self._say(f"model: {self._status()['model']}")
        self._say(f"softphone: {self.url}")

    def _say(self, text: str) -> None:
        print(f"phonebridge dev: {text}", file=self._out, flush=True)

    async def _watch(self) -> None:
        assert self.reloader is not None and self.app is not None
        while True:
            await asyncio.sleep(self._poll_s)
            try:
                self.reload_if_changed()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one bad reload
                log.exception("reloading %s failed; still watching it", self._spec)

    def reload_if_changed(self) -> bool:
        """Poll the agent file once; on a change install the new agent or report why it cannot load."""
        assert self.reloader is not None and self.app is not None
        if not self.reloader.poll():
            return False
        status = self.reloader.status
        if status.error is None:
            install_agent(self.app, self.reloader.agent)
            self._say(f"reloaded {status.spec} (version {status.version}): tools {', '.join(status.tools)}; "
                      "calls in progress finish on the old code")
        else:
            self._say(f"{status.spec} failed to load; still running version {status.version}:\n{status.error}")
        self.hub.set_status(self._status())
        return True

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.emulator is not None:
            await self.emulator.stop()
            self.emulator = None


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {HOST}:{port} ({exc.strerror}); try --port with another port") from exc
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _secret() -> str:
    import secrets

    return secrets.token_urlsafe(24)


class _DropHttpWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "is http:" not in record.getMessage()


@contextlib.contextmanager
def _quiet_http_public_url() -> Any:
    """Settings warn that an http public URL is unreachable for Twilio: true, and beside the point here."""
    config_log, dropper = logging.getLogger("phonebridge.config"), _DropHttpWarning()
    config_log.addFilter(dropper)
    try:
        yield
    finally:
        config_log.removeFilter(dropper)
