"""TwilioRestEmulator: a local server for the Twilio REST calls phonebridge makes.

The real ``twilio.rest.Client`` reaches it through :class:`phonebridge.twilio.rest.ApiBaseHttpClient`, which only
rewrites scheme and host, so paths, form bodies and Basic auth are exactly what twilio sends to
api.twilio.com. Answers use Twilio's JSON shapes and error bodies ``{"code", "message", "more_info", "status"}``.

Endpoints (under ``/2010-04-01/Accounts/{AccountSid}``):
- ``POST /Calls.json``: create (To, From, Twiml or Url, StatusCallback, StatusCallbackEvent).
- ``GET|POST /Calls/{CallSid}.json``: fetch; update with Status=completed|canceled, Twiml or Url.
- ``GET /IncomingPhoneNumbers.json?PhoneNumber=..``, ``GET|POST /IncomingPhoneNumbers/{PN}.json``.

Decisions where Twilio's behaviour is not documented precisely:
- Any update of an ended call (completed, canceled, failed, busy, no-answer), ``Status=completed`` included,
  answers 400 code 21220 "Call is not in-progress. Cannot redirect." (what Twilio answers to a hang-up of a
  call that has already ended; phonebridge.twilio.rest treats that code as "already ended").
- ``Status=completed`` on a queued or ringing call ends it as ``canceled``; ``Status=canceled`` on an
  in-progress call changes nothing (Twilio's documented rule).

With ``auto_progress`` a created call goes queued -> ringing -> in-progress right after the create answer;
otherwise drive it with :meth:`TwilioRestEmulator.set_call_status`. Status callbacks are POSTed, signed like
Twilio's, for the events in ``StatusCallbackEvent`` (default: completed only, as Twilio does).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

import aiohttp
from aiohttp import web
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from phonebridge.twilio.rest import ApiBaseHttpClient

API = "/2010-04-01/Accounts/{account}"
ENDED = frozenset({"completed", "canceled", "failed", "busy", "no-answer"})
_CALLBACK_EVENT = {"queued": "initiated", "ringing": "ringing", "in-progress": "answered"}
_GENERIC_CODES = {400: 20001, 401: 20003, 404: 20404, 429: 20429, 500: 20500, 503: 20503}


@dataclass(frozen=True, slots=True)
class RestRequest:
    """One request as received; ``form`` keeps the last value of a repeated field, ``pairs`` all of them."""

    method: str
    path: str
    form: dict[str, str]
    query: dict[str, str]
    auth_ok: bool
    pairs: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class StatusCallback:
    """One status callback the emulator POSTed, and the HTTP status it got (0 if it could not connect)."""

    url: str
    form: dict[str, str]
    status: int


def _error(status: int, message: str, code: int | None = None) -> web.Response:
    code = code or _GENERIC_CODES.get(status, 20500)
    body = {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status}  # fmt: skip
    return web.json_response(body, status=status)


async def _pairs(request: web.Request) -> tuple[tuple[str, str], ...]:
    """The form fields in order, repeated ones included (aiohttp caches the parsed body)."""
    post = await request.post() if request.method == "POST" else {}
    return tuple((k, str(v)) for k, v in post.items())


def _now() -> str:
    return formatdate(usegmt=False).replace("-0000", "+0000")


class TwilioRestEmulator:
    """Twilio's REST API for one account, in memory. See the module docstring for what it answers."""

    def __init__(
        self,
        *,
        account_sid: str = "AC" + "0" * 32,
        auth_token: str = "test-auth-token",
        host: str = "127.0.0.1",
        port: int = 0,
        auto_progress: bool = True,
        url_map: Mapping[str, str] | None = None,
    ) -> None:
        self.account_sid, self.auth_token = account_sid, auth_token
        self.host, self.port, self.auto_progress = host, port, auto_progress
        self.url_map = dict(url_map or {})  # public URL prefix -> local prefix, for status callbacks
        self.requests: list[RestRequest] = []
        self.calls: dict[str, dict[str, Any]] = {}
        self.numbers: dict[str, dict[str, Any]] = {}
        self.callbacks: list[StatusCallback] = []
        self._failures: list[int] = []
        self._callback_events: dict[str, set[str]] = {}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()

    # -- lifecycle --------------------------------------------------------------------------------------

    async def __aenter__(self) -> TwilioRestEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application(middlewares=[self._gate])
        base = API.format(account="{account}")
        app.router.add_post(base + "/Calls.json", self._create_call)
        app.router.add_route("*", base + "/Calls/{sid}.json", self._call)
        app.router.add_get(base + "/IncomingPhoneNumbers.json", self._list_numbers)
        app.router.add_route("*", base + "/IncomingPhoneNumbers/{sid}.json", self._number)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def client(self) -> Client:
        """A real twilio Client whose requests come here (blocking: call it from a thread)."""
        return Client(self.account_sid, self.auth_token, http_client=ApiBaseHttpClient(self.api_base))

    # -- test controls ----------------------------------------------------------------------------------

    def add_number(self, phone_number: str, voice_url: str | None = None) -> str:
        """Own ``phone_number`` in this account; returns its PN sid."""
        sid = "PN" + secrets.token_hex(16)
        self.numbers[sid] = _number_resource(self.account_sid, sid, phone_number, voice_url)
        return sid

    def fail_next(self, count: int, status: int = 503) -> None:
        """Answer the next ``count`` requests with ``status`` and Twilio's error body (for retry tests)."""
        self._failures.extend([status] * count)

    def add_inbound_call(self, sid: str, *, to: str, from_: str) -> None:
        """An incoming call already in progress (the caller dialled in), so REST updates of it work."""
        self.calls[sid] = {"status": "in-progress", "to": to, "from": from_, "twiml": None, "url": None,
                           "status_callback": None, "date_created": _now()}
        self._notify()

    async def set_call_status(self, sid: str, status: str) -> None:
        """Move a call to ``status`` (as the carrier would) and send the status callback if asked for."""
        call = self.calls[sid]
        call["status"] = status
        self._notify()
        event = "completed" if status in ENDED else _CALLBACK_EVENT.get(status, status)
        if call.get("status_callback") and event in self._callback_events.get(sid, set()):
            await self._post_callback(call, status)

    async def wait_for(self, predicate: Callable[[TwilioRestEmulator], bool], timeout: float = 10.0) -> None:
        """Return once ``predicate(self)`` holds; re-checked after every request and state change."""
        async with asyncio.timeout(timeout):
            while not predicate(self):
                await self._changed.wait()

    # -- the gate: record, injected failures, auth --------------------------------------------------------

    @web.middleware
    async def _gate(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        pairs = await _pairs(request)
        header = request.headers.get("Authorization")
        auth = aiohttp.BasicAuth.decode(header) if header else None
        auth_ok = auth is not None and (auth.login, auth.password) == (self.account_sid, self.auth_token)
        query = dict(request.query)
        self.requests.append(RestRequest(request.method, request.path, dict(pairs), query, auth_ok, pairs))
        self._notify()
        if self._failures:
            return _error(self._failures.pop(0), "Injected failure (TwilioRestEmulator.fail_next)")
        if not auth_ok:
            return _error(401, "Authenticate", 20003)
        if request.match_info.get("account") != self.account_sid:
            return _error(404, f"The requested resource {request.path} was not found")
        response: web.StreamResponse = await handler(request)
        return response

    # -- Calls --------------------------------------------------------------------------------------------

    async def _create_call(self, request: web.Request) -> web.Response:
        form = dict(await _pairs(request))
        if not form.get("To"):
            return _error(400, "Required parameter \"To\" is missing.", 21201)
        if not form.get("From"):
            return _error(400, "Required parameter \"From\" is missing.", 21603)
        if not (form.get("Twiml") or form.get("Url") or form.get("ApplicationSid")):
            return _error(400, "Either a 'Url', 'Twiml' or 'ApplicationSid' parameter is required.", 21205)
        if len(form.get("Twiml", "")) > 4000:
            return _error(400, "Twiml parameter exceeds 4000 characters.", 32018)
        sid = "CA" + secrets.token_hex(16)
        self.calls[sid] = {"status": "queued", "to": form["To"], "from": form["From"], "twiml": form.get("Twiml"),
                           "url": form.get("Url"), "status_callback": form.get("StatusCallback"),
                           "date_created": _now()}  # fmt: skip
        events = {v for k, v in await _pairs(request) if k == "StatusCallbackEvent"} or {"completed"}
        self._callback_events[sid] = events
        self._notify()
        if self.auto_progress:
            self._spawn(self._progress(sid))
        return web.json_response(self._call_resource(sid), status=201)

    async def _call(self, request: web.Request) -> web.Response:
        sid = request.match_info["sid"]
        if sid not in self.calls:
            return _error(404, f"The requested resource {request.path} was not found")
        if request.method == "GET":
            return web.json_response(self._call_resource(sid))
        if request.method != "POST":
            return _error(405, "Method not allowed", 20004)
        form = dict(await _pairs(request))
        call = self.calls[sid]
        if call["status"] in ENDED:
            return _error(400, "Call is not in-progress. Cannot redirect.", 21220)
        if "Twiml" in form and "Url" in form:
            return _error(400, "Only one of Twiml and Url may be given.", 21205)
        if len(form.get("Twiml", "")) > 4000:
            return _error(400, "Twiml parameter exceeds 4000 characters.", 32018)
        for key in ("Twiml", "Url"):
            if key in form:
                call[key.lower()], call["twiml" if key == "Url" else "url"] = form[key], None
        status = form.get("Status")
        if status == "completed":
            await self.set_call_status(sid, "completed" if call["status"] == "in-progress" else "canceled")
        elif status == "canceled" and call["status"] in ("queued", "ringing"):
            await self.set_call_status(sid, "canceled")
        self._notify()
        return web.json_response(self._call_resource(sid))

    async def _progress(self, sid: str) -> None:
        for status in ("ringing", "in-progress"):
            await asyncio.sleep(0)  # the create answer goes out first, as with Twilio
            if self.calls[sid]["status"] in ENDED:
                return
            await self.set_call_status(sid, status)

    def _call_resource(self, sid: str) -> dict[str, Any]:
        call = self.calls[sid]
        uri = f"{API.format(account=self.account_sid)}/Calls/{sid}.json"
        return {
            "sid": sid, "account_sid": self.account_sid, "api_version": "2010-04-01", "status": call["status"],
            "to": call["to"], "to_formatted": call["to"], "from": call["from"], "from_formatted": call["from"],
            "direction": "outbound-api", "date_created": call["date_created"], "date_updated": _now(),
            "start_time": None, "end_time": None, "duration": None, "price": None, "price_unit": "USD",
            "parent_call_sid": None, "phone_number_sid": None, "answered_by": None, "caller_name": None,
            "forwarded_from": None, "group_sid": None, "queue_time": "0", "trunk_sid": None, "annotation": None,
            "uri": uri, "subresource_uris": {"notifications": uri.replace(".json", "/Notifications.json"),
                                             "recordings": uri.replace(".json", "/Recordings.json")},
        }  # fmt: skip

    async def _post_callback(self, call: dict[str, Any], status: str) -> None:
        url: str = call["status_callback"]
        sid = next(s for s, c in self.calls.items() if c is call)
        form = {"CallSid": sid, "AccountSid": self.account_sid, "From": call["from"], "To": call["to"],
                "CallStatus": status, "Direction": "outbound-api", "ApiVersion": "2010-04-01",
                "CallbackSource": "call-progress-events", "Timestamp": _now()}  # fmt: skip
        signature = RequestValidator(self.auth_token).compute_signature(url, form)
        target = next((local + url[len(p) :] for p, local in self.url_map.items() if url.startswith(p)), url)
        assert self._session is not None
        try:
            async with self._session.post(target, data=form, headers={"X-Twilio-Signature": signature}) as reply:
                result = reply.status
        except aiohttp.ClientError:
            result = 0  # Twilio logs a failed callback and carries on
        self.callbacks.append(StatusCallback(url, form, result))
        self._notify()

    # -- IncomingPhoneNumbers -----------------------------------------------------------------------------

    async def _list_numbers(self, request: web.Request) -> web.Response:
        wanted = request.query.get("PhoneNumber")
        found = [n for n in self.numbers.values() if wanted is None or n["phone_number"] == wanted]
        uri = f"{API.format(account=self.account_sid)}/IncomingPhoneNumbers.json"
        return web.json_response({
            "incoming_phone_numbers": found, "start": 0, "end": max(len(found) - 1, 0), "page": 0,
            "page_size": 50, "uri": uri, "first_page_uri": uri, "next_page_uri": None, "previous_page_uri": None,
        })  # fmt: skip

    async def _number(self, request: web.Request) -> web.Response:
        number = self.numbers.get(request.match_info["sid"])
        if number is None:
            return _error(404, f"The requested resource {request.path} was not found")
        if request.method == "POST":
            for key, value in await _pairs(request):
                field = "".join("_" + c.lower() if c.isupper() else c for c in key).lstrip("_")
                if field in number and field not in ("sid", "account_sid", "phone_number", "uri"):
                    number[field] = value
            number["date_updated"] = _now()
            self._notify()
        return web.json_response(number)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


def _number_resource(account_sid: str, sid: str, phone_number: str, voice_url: str | None) -> dict[str, Any]:
    return {
        "sid": sid, "account_sid": account_sid, "phone_number": phone_number, "friendly_name": phone_number,
        "api_version": "2010-04-01", "voice_url": voice_url, "voice_method": "POST", "voice_fallback_url": None,
        "voice_fallback_method": "POST", "status_callback": "", "status_callback_method": "POST",
        "voice_caller_id_lookup": False, "voice_application_sid": None, "sms_url": "", "sms_method": "POST",
        "capabilities": {"voice": True, "sms": True, "mms": True, "fax": False}, "status": "in-use",
        "origin": "twilio", "trunk_sid": None, "date_created": _now(), "date_updated": _now(),
        "uri": f"{API.format(account=account_sid)}/IncomingPhoneNumbers/{sid}.json",
    }  # fmt: skip
