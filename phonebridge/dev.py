"""`phonebridge dev --agent agent.py`: talk to your agent in a browser before you have a phone number.

One process serves the real bridge plus a softphone page on http://127.0.0.1:8080/. The page speaks
Twilio's own Media Streams JSON to the bridge's own /twilio/media handler, so a call from it takes the same
path as a phone call. The model is the real Gemini Live when GEMINI_API_KEY (or GOOGLE_API_KEY) is set,
otherwise the built-in LiveEmulator with a script that exercises the agent's tools (or `--script S.yaml`).
The agent file is reloaded when it changes.

Safe by default: loopback only, and the page, its event stream and its media socket are authorised by a
random token made for this process and printed in the URL. Nothing here is reachable from `serve`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from typing import Any, TextIO

from aiohttp import web
from google import genai

from phonebridge.app import NO_COMPRESSION, make_app
from phonebridge.config import Settings
from phonebridge.dev_reload import AgentReloader, install_agent
from phonebridge.dev_routes import DEV_ACCOUNT_SID, DevRest, DevRoutes, EventHub, call_scope
from phonebridge.dev_script import declarations_of, derived_script
from phonebridge.errors import ConfigError
from phonebridge.signatures import SignatureChecker

log = logging.getLogger("phonebridge.dev")

DEFAULT_AGENT = "phonebridge.examples.pizzeria"
HOST = "127.0.0.1"  # never anything else: the page's token is the only lock, and getUserMedia wants loopback
POLL_S = 0.5


def add_parser(sub: Any) -> None:
    dev = sub.add_parser("dev", help="local development: the bridge plus a browser softphone on loopback")
    dev.add_argument("--agent", default=DEFAULT_AGENT, help="agent file (reloaded on change) or module "
                     "(default: %(default)s)")
    dev.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")),
                     help="loopback port (default: %(default)s; 0 picks a free one)")
    dev.add_argument("--script", default=None, help="a YAML/JSON script for the emulator instead of the one "
                     "derived from the agent's tools")
    dev.add_argument("--emulator", action="store_true", help="use the built-in emulator even when "
                     "GEMINI_API_KEY is set")
    dev.add_argument("--record-dir", default=os.environ.get("PHONEBRIDGE_RECORD_DIR") or "phonebridge-dev",
                     help="where each call's cassette goes (default: %(default)s)")
    dev.set_defaults(run=run_dev)


def run_dev(args: argparse.Namespace) -> int:
    live = not args.emulator and bool(os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY"))
    server = DevServer(args.agent, port=args.port, script=args.script, live=live, record_dir=args.record_dir)
    return asyncio.run(_run_until_signal(server))


async def _run_until_signal(server: DevServer) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.stop()
    return 0


class DevServer:
    """The dev server in the current event loop: `await start()` (returns the page URL), `await stop()`."""

    def __init__(
        self, agent: str, *, port: int = 8080, script: str | None = None, live: bool = False,
        record_dir: str | None = None, emulator_speed: float = 1.0, poll_s: float = POLL_S,
        out: TextIO = sys.stdout,
    ) -> None:
        self._spec, self._port, self._script_path, self.live = agent, port, script, live
        self._record_dir, self._speed, self._poll_s, self._out = record_dir, emulator_speed, poll_s, out
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
        settings = Settings.from_env(record_dir=self._record_dir).with_(
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
            except ConfigError as exc:
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
            self.reload_if_changed()

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
