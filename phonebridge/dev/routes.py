"""`phonebridge dev`'s own routes: the softphone page, its call set-up and its live event stream.

Everything here is authorised by one per-process random token that only the URL printed in the terminal
carries (`?token=...`): the page, `POST /dev/call`, `GET /dev/events` and the media WebSocket upgrade
(make_app's `upgrade_authoriser`, in place of Twilio's signature, which a browser cannot make). The static
files under /softphone/ hold no secret and are served to anyone who can reach loopback. The recorded calls
(`/calls`, phonebridge.dev.calls) are behind the same token.

`POST /dev/call` answers exactly what Twilio would hand the stream: it runs the bridge's own voice webhook
over loopback for a synthetic CallSid, signed with this process's private auth token, and returns the
`<Stream>`'s `<Parameter>`s as JSON, which the page sends back in `start.customParameters`.

Observer events reach the page tagged with their call: `call_scope` (a middleware on the media route) gives
each media request a context variable that every task of that call inherits, and the hub's observer reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import hmac
import json
import logging
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from phonebridge.server.app import MEDIA_PATH, RUNTIME, VOICE_PATH
from phonebridge.dev.calls import CallPages
from phonebridge.twilio.signatures import SignatureChecker

log = logging.getLogger("phonebridge.dev")

SOFTPHONE_DIR = Path(__file__).parent.parent / "softphone"
DEV_ACCOUNT_SID = "AC" + "d" * 32
DEV_FROM, DEV_TO = "+15005550100", "+15005550199"
SUBSCRIBER_QUEUE = 1000  # events a slow page may lag behind before it is dropped (it reconnects)
KEEPALIVE_S = 15.0
_STATS_FIELDS = ("call_sid", "outcome", "turns", "barge_ins", "tool_calls", "first_audio_s", "dtmf", "frames_in",
                 "frames_out", "malformed", "ignored", "lost_frames", "hold_plays")


@dataclass
class _CallScope:
    call_sid: str = ""


_SCOPE: contextvars.ContextVar[_CallScope | None] = contextvars.ContextVar("phonebridge_dev_call", default=None)


@web.middleware
async def call_scope(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Give each media WebSocket its own scope, so observer events of that call carry its CallSid."""
    if request.path != MEDIA_PATH:
        return await handler(request)
    reset = _SCOPE.set(_CallScope())
    try:
        return await handler(request)
    finally:
        _SCOPE.reset(reset)


def jsonable(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """An observer event as JSON-safe data: call_end's stats become a small dict of counts."""
    if kind == "call_end" and dataclasses.is_dataclass(data.get("stats")):
        stats = data["stats"]
        return {"stats": {name: getattr(stats, name, None) for name in _STATS_FIELDS}}
    safe: dict[str, Any] = json.loads(json.dumps(data, default=str))
    return safe


class EventHub:
    """Fans observer events and the agent's status out to every page listening on /dev/events."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[str | None]] = set()
        self.status: dict[str, Any] = {"kind": "agent"}

    def observer(self, kind: str, data: dict[str, Any]) -> None:
        """The bridge's observer callback (runs on the call's task, so the scope is the call's)."""
        scope = _SCOPE.get()
        if scope is not None and kind == "call_start":
            scope.call_sid = str(data.get("call_sid", ""))
        call_sid = scope.call_sid if scope is not None else str(data.get("call_sid", ""))
        self.publish({"kind": kind, "call_sid": call_sid, **jsonable(kind, data)})

    def set_status(self, status: dict[str, Any]) -> None:
        self.status = {"kind": "agent", **status}
        self.publish(self.status)

    def publish(self, event: dict[str, Any]) -> None:
        text = json.dumps(event, default=str)
        for queue in list(self._queues):
            try:
                queue.put_nowait(text)
            except asyncio.QueueFull:
                log.warning("a softphone page fell %d events behind; dropping its event stream", SUBSCRIBER_QUEUE)
                self._queues.discard(queue)
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait(None)

    def subscribe(self) -> asyncio.Queue[str | None]:
        queue: asyncio.Queue[str | None] = asyncio.Queue(SUBSCRIBER_QUEUE)
        queue.put_nowait(json.dumps(self.status, default=str))
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[str | None]) -> None:
        self._queues.discard(queue)

    def close(self) -> None:
        """End every event stream (server shutdown), so no handler keeps the runner waiting."""
        for queue in list(self._queues):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        self._queues.clear()


class DevRest:
    """Twilio REST for dev mode: nothing to call, so the page hears of a hang-up or transfer instead (the
    bridge then closes the stream, which the page sees as the call ending)."""

    def __init__(self, hub: EventHub) -> None:
        self._hub = hub

    async def hang_up(self, call_sid: str) -> None:
        self._hub.publish({"kind": "hang_up", "call_sid": call_sid})

    async def transfer(self, call_sid: str, target: str) -> None:
        self._hub.publish({"kind": "transfer", "call_sid": call_sid, "target": target})


class DevRoutes:
    """The page, /dev/call and /dev/events, all behind `token`."""

    def __init__(self, hub: EventHub, checker: SignatureChecker, local_url: str, token: str | None = None) -> None:
        self.hub, self._checker, self._local_url = hub, checker, local_url.rstrip("/")
        self.token = token or secrets.token_urlsafe(18)
        self._session: aiohttp.ClientSession | None = None
        self.calls: CallPages | None = None

    def authorised(self, request: web.Request) -> bool:
        """The page token, compared in constant time (also make_app's upgrade_authoriser)."""
        given = request.query.get("token", "")
        return hmac.compare_digest(given.encode(), self.token.encode())

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/", self.page)
        app.router.add_post("/dev/call", self.call)
        app.router.add_get("/dev/events", self.events)
        app.router.add_static("/softphone/", SOFTPHONE_DIR)
        self.calls = CallPages(app[RUNTIME].settings.record_dir, self.authorised, self.token)
        self.calls.add_to(app)  # /calls and /calls/{name}: the recorded calls in the viewer
        app.on_shutdown.append(self._shutdown)

    async def _shutdown(self, app: web.Application) -> None:
        self.hub.close()
        if self._session is not None:
            await self._session.close()

    async def page(self, request: web.Request) -> web.StreamResponse:
        if not self.authorised(request):
            return web.Response(status=403, text="Open the URL that `phonebridge dev` printed: it carries this "
                                "process's token.\n")
        return web.FileResponse(SOFTPHONE_DIR / "index.html", headers={"Cache-Control": "no-store"})

    async def call(self, request: web.Request) -> web.Response:
        if not self.authorised(request):
            return web.json_response({"error": "bad or missing token"}, status=403)
        call_sid, stream_sid = "CA" + secrets.token_hex(16), "MZ" + secrets.token_hex(16)
        form = {"CallSid": call_sid, "AccountSid": DEV_ACCOUNT_SID, "From": DEV_FROM, "To": DEV_TO,
                "Direction": "inbound", "CallStatus": "ringing", "ApiVersion": "2010-04-01"}
        status, body = await self._voice_webhook(form)
        try:
            parameters = stream_parameters(body) if status == 200 else None
        except ValueError as exc:
            parameters, body = None, f"{exc}: {body[:300]}"
        if parameters is None:
            log.warning("the voice webhook did not connect a stream (HTTP %d): %s", status, body[:300])
            return web.json_response({"error": f"the bridge did not take the call (HTTP {status})", "twiml": body},
                                     status=503)
        return web.json_response({
            "callSid": call_sid, "streamSid": stream_sid, "accountSid": DEV_ACCOUNT_SID,
            "customParameters": parameters, "mediaPath": f"{MEDIA_PATH}?token={self.token}",
            "viewerPath": self.calls.viewer_path(call_sid) if self.calls is not None else None,
        })

    async def _voice_webhook(self, form: dict[str, str]) -> tuple[int, str]:
        """POST the webhook to our own server, signed as Twilio would sign it."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        signature = self._checker.sign(self._checker.webhook_url(VOICE_PATH), form)
        async with self._session.post(self._local_url + VOICE_PATH, data=form,
                                      headers={"X-Twilio-Signature": signature}) as response:
            return response.status, await response.text()

    async def events(self, request: web.Request) -> web.StreamResponse:
        if not self.authorised(request):
            return web.Response(status=403, text="bad or missing token")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await response.prepare(request)
        queue = self.hub.subscribe()
        try:
            while True:
                try:
                    async with asyncio.timeout(KEEPALIVE_S):
                        text = await queue.get()
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
                    continue
                if text is None:
                    break
                await response.write(f"data: {text}\n\n".encode())
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass  # the page went away
        finally:
            self.hub.unsubscribe(queue)
        return response


def stream_parameters(twiml: str) -> dict[str, str] | None:
    """The `<Parameter>`s of TwiML's `<Connect><Stream>`, or None when the answer streams nothing (a
    refusal: busy, draining). ValueError if it is not TwiML at all."""
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError as exc:
        raise ValueError(f"the voice webhook's answer is not TwiML ({exc})") from None
    stream = root.find("./Connect/Stream")
    if root.tag != "Response" or stream is None:
        return None
    return {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
