"""make_app(settings, agent) -> web.Application: routes, signature checks, limits, lifecycle.

Composed, not subclassed: typed app state lives under web.AppKey; the resources calls share (the handler
pool, the genai client) are opened at start-up and closed at cleanup by a cleanup context (resources.py),
not made here: an app that never starts holds none of them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

import phonebridge.twilio.twiml as twiml
from phonebridge.agent.definition import Agent
from phonebridge.audio import InboundTranscoder, OutboundTranscoder
from phonebridge.call.bridge import CallSession
from phonebridge.call.services import CallServices, CallStats
from phonebridge.server.config import Settings
from phonebridge.errors import SignatureError
from phonebridge.live.client import NO_COMPRESSION as NO_COMPRESSION
from phonebridge.live.client import SDK_OPTIONS, GenaiClientOption, ModelClient
from phonebridge.server.resources import SharedResources
from phonebridge.agent.handler_pool import HandlerPool
from phonebridge.server.heap import HeapTrimmer
from phonebridge.server.metrics import Metrics
from phonebridge.server.ws_inline import MediaSocket
from phonebridge.twilio.signatures import (
    STREAM_TOKEN_PARAMETER,
    SignatureChecker,
    StreamTokens,
    parse_shared_keys,
)
from phonebridge.twilio.stream_guard import SparseLog, StreamGuard
from phonebridge.agent.tools import ToolRegistry, all_tools

log = logging.getLogger("phonebridge.app")

VOICE_PATH, MEDIA_PATH, STATUS_PATH = "/twilio/voice", "/twilio/media", "/twilio/status"
MAX_FRAME_BYTES = 256 * 1024  # a media frame is ~250 bytes; anything near this is hostile


@dataclass
class Runtime:
    """Per-app mutable state: the calls in progress and whether we are draining."""

    settings: Settings
    agent: Agent
    services: CallServices | None = None
    active: dict[int, CallSession] = field(default_factory=dict)
    finished: list[CallStats] = field(default_factory=list)
    draining: bool = False
    idle_event: asyncio.Event | None = None
    model_down_at: float | None = None

    def install_services(self, services: CallServices) -> None:
        """What the calls that start from now on share (the app's start-up; phonebridge dev's reload)."""
        self.services = services

    def at_capacity(self) -> bool:
        return len(self.active) >= self.settings.max_calls

    def note_model_health(self, stats: CallStats) -> None:
        """The model is known down after a call could not reach it, until a call hears the model again."""
        if stats.outcome == "model_unavailable":
            self.model_down_at = time.monotonic()
        elif stats.first_audio_s is not None:
            self.model_down_at = None

    def model_known_down(self) -> bool:
        return self.model_down_at is not None and time.monotonic() - self.model_down_at < MODEL_DOWN_S

    def add(self, session: CallSession) -> None:
        self.active[id(session)] = session
        self._idle().clear()

    def remove(self, session: CallSession) -> None:
        self.active.pop(id(session), None)
        if not self.active:
            self._idle().set()

    async def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until no call is in progress; False if `timeout_s` passed first."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle().wait()
        except TimeoutError:
            return False
        return True

    def _idle(self) -> asyncio.Event:
        if self.idle_event is None:
            self.idle_event = asyncio.Event()
            if not self.active:
                self.idle_event.set()
        return self.idle_event


RUNTIME = web.AppKey("runtime", Runtime)
METRICS = web.AppKey("metrics", Metrics)
SHARED = web.AppKey("shared", SharedResources)  # the handler pool and the Gemini client, from start-up to cleanup
MODEL_DOWN_S = 60.0  # readiness stays false this long after a call could not reach the model
FINISHED_KEEP = 100  # recent calls' stats, for tests and the demo


def make_app(
    settings: Settings,
    agent: Agent,
    *,
    genai_client: GenaiClientOption = None,
    rest: Any | None = None,
    observers: Sequence[Callable[[str, dict[str, Any]], None]] = (),
    upgrade_authoriser: Callable[[web.Request], bool] | None = None,
) -> web.Application:
    """The bridge as an aiohttp application. `genai_client` defaults to `genai.Client()` (the SDK's own
    environment: key, GOOGLE_GEMINI_BASE_URL, SSL_CERT_FILE); `rest` to TwilioRest from the settings.
    `upgrade_authoriser`, when given, decides the media WebSocket upgrade *instead of* Twilio's signature:
    `phonebridge dev` passes its page token check; `serve` never passes one."""
    settings.check()
    # Design the resampler filters now (cached per rate pair), not on the event loop during the first call.
    InboundTranscoder(), OutboundTranscoder()
    registry = all_tools(agent)
    runtime = Runtime(settings, agent)
    metrics = Metrics()
    rest = rest if rest is not None else _default_rest(settings)

    build = functools.partial(
        _call_services, agent, registry, settings, rest, [metrics.observer, *observers], metrics,
        _recorder_factory(settings),
    )
    shared = SharedResources(ModelClient(genai_client, SDK_OPTIONS), build, runtime.install_services)
    app = web.Application(client_max_size=64 * 1024)
    app[RUNTIME] = runtime
    app[METRICS] = metrics
    app[SHARED] = shared
    checker = (
        SignatureChecker(settings.twilio_auth_token or "", settings.public_url,
                         parse_shared_keys(settings.webhook_shared_keys))
        if settings.validate_signatures and settings.public_url and settings.twilio_auth_token
        else None
    )
    handlers = _Handlers(runtime, checker, metrics, upgrade_authoriser)
    app.router.add_post(VOICE_PATH, handlers.voice)
    app.router.add_get(MEDIA_PATH, handlers.media)
    app.router.add_post(STATUS_PATH, handlers.status)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", metrics.handle)
    lag, trimmer = _LoopLagWatch(metrics), HeapTrimmer(settings.heap_trim_s)
    app.on_startup.extend([lag.start, trimmer.start])
    app.on_shutdown.append(_close_calls)
    app.cleanup_ctx.append(shared.cleanup_ctx)  # the handler pool and the Gemini client: opened, then closed
    app.on_cleanup.extend([lag.stop, trimmer.stop])
    return app


LAG_PERIOD_S = 0.1


class _LoopLagWatch:
    """Times a timer chain: how late each tick runs is the wait every call's frames have behind the others
    (phonebridge_event_loop_lag_seconds). A timer, not a task: it costs nothing between ticks."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._handle: asyncio.TimerHandle | None = None

    async def start(self, app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        self._schedule(loop, loop.time())

    def _schedule(self, loop: asyncio.AbstractEventLoop, now: float) -> None:
        due = now + LAG_PERIOD_S
        self._handle = loop.call_at(due, self._tick, loop, due)

    def _tick(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        now = loop.time()
        self._metrics.observe_loop_lag(max(0.0, now - due))
        self._schedule(loop, now)

    async def stop(self, app: web.Application) -> None:
        if self._handle is not None:
            self._handle.cancel()


def _call_services(
    agent: Agent, registry: ToolRegistry, settings: Settings, rest: Any | None,
    observers: list[Callable[[str, dict[str, Any]], None]], metrics: Metrics, recorder_factory: Any | None,
    client: ModelClient, pool: HandlerPool,
) -> CallServices:
    """The services every call of the app shares, on the client and pool its start-up opened."""
    return CallServices(
        agent, registry, client,
        hang_up=rest.hang_up if rest is not None else None,
        transfer=rest.transfer if rest is not None else None,
        connect_timeout_s=settings.model_connect_timeout_s,
        reconnect_attempts=settings.reconnect_attempts,
        observers=observers,
        metrics=metrics,
        log_caller_numbers=settings.log_caller_numbers,
        recorder_factory=recorder_factory,
        executor=pool,  # sync handlers: a bounded share per call, no thread joined at exit
    )


def _recorder_factory(settings: Settings) -> Any | None:
    if not settings.record_dir:
        return None
    from phonebridge.cassette.record import recorder_factory

    return recorder_factory(settings.record_dir)


def _default_rest(settings: Settings) -> Any | None:
    if not (settings.twilio_account_sid and settings.twilio_auth_token):
        log.warning("TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN not set: hang-up and transfer close the stream instead")
        return None
    from phonebridge.twilio.rest import TwilioRest

    return TwilioRest(settings.twilio_account_sid, settings.twilio_auth_token, api_base=settings.twilio_api_url)


SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"  # Webhook Rules: which key and algorithm signed


class _Handlers:
    def __init__(
        self, runtime: Runtime, checker: SignatureChecker | None, metrics: Metrics,
        upgrade_authoriser: Callable[[web.Request], bool] | None = None,
    ) -> None:
        self._rt, self._checker, self._metrics = runtime, checker, metrics
        self._upgrade_authoriser = upgrade_authoriser
        settings = runtime.settings
        secret = settings.stream_secret or settings.twilio_auth_token
        # Tokens are issued whenever there is a key, and required when signatures are validated.
        self._tokens = StreamTokens(secret) if secret else None
        enforce = settings.validate_signatures and self._tokens is not None
        self._guard = StreamGuard(
            self._tokens if enforce else None, settings.twilio_account_sid if enforce else None,
            settings.start_timeout_s, settings.media_timeout_s,
        )
        self._refusals = SparseLog()

    def _stream_url(self, request: web.Request) -> str:
        if self._checker is not None:
            return self._checker.stream_url(MEDIA_PATH)
        public = self._rt.settings.public_url
        if public:
            scheme, rest = public.rstrip("/").split("://", 1)
            return ("ws" if scheme == "http" else "wss") + "://" + rest + MEDIA_PATH
        # Local development only (signatures off, no public URL): trust the Host header.
        return f"wss://{request.host}{MEDIA_PATH}"

    async def voice(self, request: web.Request) -> web.Response:
        try:
            form = await self._signed_form(request)
        except SignatureError as exc:
            return self._refuse(request, exc)
        if self._rt.draining or self._rt.at_capacity():
            why = "draining" if self._rt.draining else "at capacity"
            log.warning("refusing call %s: %s", form.get("CallSid", "?"), why)
            return _xml(twiml.reject(self._rt.settings.busy_say))
        stream_url = self._stream_url(request)
        # The query is part of the URL Twilio signed: an outbound call's own parameters (phonebridge call --param).
        parameters = {key: value for key, value in request.query.items() if key != "direction"}
        parameters.update({key: form[key] for key in ("CallSid", "From", "To", "Direction") if form.get(key)})
        parameters["Direction"] = request.query.get("direction", parameters.get("Direction", "inbound"))
        if self._tokens is not None:  # binds the stream to this call: checked at its `start`
            account = form.get("AccountSid") or self._rt.settings.twilio_account_sid or ""
            parameters[STREAM_TOKEN_PARAMETER] = self._tokens.issue(form.get("CallSid", ""), account)
        fallback = _fallback(self._rt.settings)
        # Stream start/stop/error events come back to /twilio/status (signed like every webhook).
        public = self._rt.settings.public_url
        status = public.rstrip("/") + STATUS_PATH if public else None
        return _xml(twiml.connect_stream(stream_url, parameters, status_callback=status, fallback=fallback))

    async def media(self, request: web.Request) -> web.StreamResponse:
        try:
            self._check_upgrade(request)
        except SignatureError as exc:
            return self._refuse(request, exc)
        if self._rt.draining or self._rt.at_capacity():
            return web.Response(status=503, text="not taking calls")
        services = self._rt.services
        assert services is not None
        ws = MediaSocket(max_msg_size=MAX_FRAME_BYTES, autoping=True)
        await ws.prepare(request)
        session = CallSession(ws, services, self._guard)
        self._rt.add(session)
        try:
            stats = await session.run()
        finally:
            self._rt.remove(session)
            if session.stats.call_sid:  # set only once its start passed the guard, which then held the callSid
                self._guard.release(session.stats.call_sid)
        self._rt.finished.append(stats)
        del self._rt.finished[:-FINISHED_KEEP]
        self._rt.note_model_health(stats)
        return ws

    async def status(self, request: web.Request) -> web.Response:
        try:
            form = await self._signed_form(request)
        except SignatureError as exc:
            return self._refuse(request, exc)
        log.info(
            "status callback: call %s is %s", form.get("CallSid", "?"),
            form.get("CallStatus") or form.get("StreamEvent") or "?",
        )
        return web.Response(status=204)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "active_calls": len(self._rt.active), "pid": os.getpid()})

    async def readyz(self, request: web.Request) -> web.Response:
        model_down = self._rt.model_known_down()
        ready = not self._rt.draining and not self._rt.at_capacity() and not model_down
        body = {"ready": ready, "draining": self._rt.draining, "model_down": model_down}
        return web.json_response(body, status=200 if ready else 503)

    async def _signed_form(self, request: web.Request) -> dict[str, str]:
        """The webhook's POST form when Twilio signed it; SignatureError otherwise. Unsigned requests are
        refused before their body is read; a body that cannot be decoded is refused too."""
        validate, signature = self._rt.settings.validate_signatures, request.headers.get("X-Twilio-Signature")
        if validate and not signature:
            raise SignatureError("missing X-Twilio-Signature", reason="missing")
        try:
            form = {k: str(v) for k, v in (await request.post()).items()}
        except (ValueError, LookupError, HttpProcessingError) as exc:  # bad bytes, unknown charset, bad multipart
            raise SignatureError(f"unreadable body ({type(exc).__name__})", reason="unreadable_body") from None
        if validate:
            assert self._checker is not None
            if not self._checker.check_webhook(request.path, request.rel_url.raw_query_string, form, signature,
                                               request.headers.get(SETTINGS_HEADER)):
                raise SignatureError("bad X-Twilio-Signature", reason="bad")
        return form

    def _check_upgrade(self, request: web.Request) -> None:
        """SignatureError unless the media WebSocket upgrade is Twilio's (or passes dev's authoriser)."""
        if self._upgrade_authoriser is not None:
            if not self._upgrade_authoriser(request):
                raise SignatureError("not authorised (phonebridge dev's page token)", reason="dev_token")
            return
        if not self._rt.settings.validate_signatures:
            return
        assert self._checker is not None
        if not self._checker.check_upgrade(
            request.path, request.headers.get("X-Twilio-Signature"), request.headers.get(SETTINGS_HEADER)
        ):
            raise SignatureError("bad or missing X-Twilio-Signature on the media WebSocket upgrade", reason="bad")

    def _refuse(self, request: web.Request, error: SignatureError) -> web.Response:
        """403, counted and logged sparingly (dev's page token: logged each time, not counted, as before)."""
        if error.reason == "dev_token":
            log.warning("rejected media WebSocket upgrade: %s", error)
        else:
            self._metrics.request_refused(request.path)
            if self._refusals.should_log(time.monotonic()):
                log.warning("refused %s %s: %s (%d refused so far)", request.method, request.path, error,
                            self._refusals.count)
        return web.Response(status=403, text="invalid Twilio signature")


def _fallback(settings: Settings) -> str | None:
    """TwiML verbs Twilio runs if we end the stream without hanging up (the model could not be reached)."""
    if settings.fallback_dial:
        return twiml.dial(settings.fallback_dial)
    if settings.fallback_say:
        return twiml.say(settings.fallback_say)
    return None


def _xml(body: str) -> web.Response:
    return web.Response(text=body, content_type="application/xml")


async def _close_calls(app: web.Application) -> None:
    runtime = app[RUNTIME]
    for session in list(runtime.active.values()):
        await session.close("server shutting down")


async def drain(app: web.Application, timeout_s: float) -> int:
    """Stop taking calls and wait up to `timeout_s` for active ones to end; returns how many remain."""
    runtime = app[RUNTIME]
    runtime.draining = True
    log.info("draining: %d active calls, waiting up to %.0f s", len(runtime.active), timeout_s)
    await runtime.wait_idle(timeout_s)
    return len(runtime.active)

