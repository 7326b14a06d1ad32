"""Twilio REST access that never blocks the event loop.

twilio.rest.Client does blocking HTTP (requests), so every call here runs in a worker thread. The Twilio
API base can be redirected (PHONEBRIDGE_TWILIO_API_URL): for a regional proxy in production, and for
phonebridge.testing.TwilioRestEmulator in tests. Only the scheme and host change; paths, bodies and Basic
auth are exactly what twilio's own client sends.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import requests
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client
from twilio.twiml.voice_response import Dial, VoiceResponse

from phonebridge.agent.context import normalize_transfer_target
from phonebridge.errors import ConfigError, TwilioApiError

_log = logging.getLogger("phonebridge.rest")


class ApiBaseHttpClient(TwilioHttpClient):  # type: ignore[misc]  # twilio is untyped (Any)
    """twilio's HTTP client with `https://*.twilio.com` swapped for `api_base` (scheme and host only)."""

    def __init__(self, api_base: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        parts = urlsplit(api_base)
        self._scheme, self._netloc = parts.scheme, parts.netloc

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        parts = urlsplit(url)
        url = urlunsplit((self._scheme, self._netloc, parts.path, parts.query, parts.fragment))
        return super().request(method, url, *args, **kwargs)


# Twilio's answer when a call can no longer be updated because it has ended ("Call is not in-progress").
CALL_NOT_IN_PROGRESS = 21220
T = TypeVar("T")


class TwilioRest:
    """Async facade over twilio.rest.Client: each request runs in a worker thread, with retries.

    Retried with exponential backoff: 429, 5xx and connection failures, except that `create_call` retries
    only 429 (a 5xx or a dropped connection may have placed the call already; a retry could ring twice).
    4xx errors are not retried: they raise TwilioApiError. Hanging up or transferring a call that has
    already ended is not an error: it returns False.
    """

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        api_base: str | None = None,
        retries: int = 3,
        backoff_s: float = 0.2,
        timeout_s: float = 10.0,
        executor: Executor | None = None,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> None:
        if not account_sid or not auth_token:
            raise ConfigError("TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are needed for Twilio REST calls")
        self._account_sid, self._auth_token = account_sid, auth_token
        self._api_base, self._timeout_s = api_base, timeout_s
        self._retries, self._backoff_s = retries, backoff_s
        self._executor = executor
        self._log = logger or _log
        # requests.Session (inside twilio's client) is not thread-safe: one client per worker thread.
        self._local = threading.local()

    async def hang_up(self, call_sid: str) -> bool:
        """End the call; False if it had already ended."""
        return await self._update_live_call(call_sid, "hang up", status="completed")

    async def transfer(self, call_sid: str, target: str, *, caller_id: str | None = None) -> bool:
        """Replace the call's TwiML with a <Dial> to target (E.164 or sip:); False if the call had ended."""
        return await self._update_live_call(call_sid, "transfer", twiml=dial_twiml(target, caller_id=caller_id))

    async def create_call(
        self, to: str, from_: str, *, twiml: str | None = None, url: str | None = None,
        status_callback: str | None = None,
    ) -> str:
        """Place an outbound call (exactly one of twiml, url); returns its CallSid."""
        if (twiml is None) == (url is None):
            raise ValueError("create_call needs exactly one of twiml or url")
        extra: dict[str, Any] = {"twiml": twiml} if twiml is not None else {"url": url}
        if status_callback:
            extra.update(status_callback=status_callback, status_callback_method="POST")
        call = await self._request(
            "create call", lambda c: c.calls.create(to=to, from_=from_, **extra), idempotent=False
        )
        return str(call.sid)

    async def fetch_call(self, sid: str) -> dict[str, Any]:
        call = await self._request("fetch call", lambda c: c.calls(sid).fetch())
        return {name: getattr(call, attr) for name, attr in _CALL_FIELDS.items()}

    async def find_number(self, phone_number: str) -> dict[str, Any] | None:
        """The incoming phone number resource for an E.164 number on this account, or None."""
        found = await self._request(
            "find number", lambda c: c.incoming_phone_numbers.list(phone_number=phone_number, limit=1)
        )
        return _number_dict(found[0]) if found else None

    async def configure_number(self, sid: str, voice_url: str, status_callback: str | None = None) -> dict[str, Any]:
        """Point a number's voice webhook (POST) and, optionally, its status callback at us."""
        extra: dict[str, Any] = {}
        if status_callback:
            extra.update(status_callback=status_callback, status_callback_method="POST")
        number = await self._request(
            "configure number",
            lambda c: c.incoming_phone_numbers(sid).update(voice_url=voice_url, voice_method="POST", **extra),
        )
        return _number_dict(number)

    async def _update_live_call(self, call_sid: str, what: str, **update: Any) -> bool:
        try:
            await self._request(what, lambda c: c.calls(call_sid).update(**update))
        except TwilioApiError as exc:
            if exc.code != CALL_NOT_IN_PROGRESS:
                raise
            self._log.info("%s of %s: the call has already ended", what, call_sid)
            return False
        return True

    async def _request(self, what: str, op: Callable[[Client], T], *, idempotent: bool = True) -> T:
        loop = asyncio.get_running_loop()
        for attempt in range(self._retries + 1):
            try:
                return await loop.run_in_executor(self._executor, self._run, op)
            except TwilioRestException as exc:
                retry = exc.status == 429 or (idempotent and exc.status >= 500)
                error = TwilioApiError(
                    f"Twilio refused to {what}: HTTP {exc.status}, code {exc.code}: {exc.msg}",
                    status=exc.status, code=exc.code,
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                retry = idempotent
                error = TwilioApiError(f"Twilio could not be reached to {what}: {exc}")
            if not retry or attempt == self._retries:
                raise error
            delay = self._backoff_s * 2**attempt
            self._log.warning("%s failed (%s); retry %d/%d in %.2f s", what, error, attempt + 1, self._retries, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _run(self, op: Callable[[Client], T]) -> T:
        client: Client | None = getattr(self._local, "client", None)
        if client is None:
            http = (
                ApiBaseHttpClient(self._api_base, timeout=self._timeout_s)
                if self._api_base
                else TwilioHttpClient(timeout=self._timeout_s)
            )
            client = Client(self._account_sid, self._auth_token, http_client=http)
            self._local.client = client
        return op(client)


def dial_twiml(target: str, *, caller_id: str | None = None) -> str:
    """`<Response><Dial><Number>` (or `<Sip>` for a sip: URI) built by twilio's VoiceResponse."""
    normalized = normalize_transfer_target(target)
    dial = Dial(caller_id=caller_id) if caller_id else Dial()
    if normalized.lower().startswith(("sip:", "sips:")):
        dial.sip(normalized)
    else:
        dial.number(normalized)
    response = VoiceResponse()
    response.append(dial)
    return str(response)


_CALL_FIELDS = {
    "sid": "sid", "status": "status", "from": "_from", "to": "to", "direction": "direction",
    "duration": "duration", "start_time": "start_time", "end_time": "end_time", "parent_call_sid": "parent_call_sid",
}


def _number_dict(number: Any) -> dict[str, Any]:
    fields = ("sid", "phone_number", "friendly_name", "voice_url", "voice_method", "status_callback")
    return {name: getattr(number, name, None) for name in fields}
