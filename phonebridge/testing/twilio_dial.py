"""How a simulated Twilio call reaches the server under test, as Twilio does it (shared/PROTOCOLS.md 1): the
voice webhook, the TwiML it answers, the media WebSocket upgrade, and :class:`CallRejected` where the server
refuses any of them.

Both requests are signed by twilio's own ``RequestValidator`` over the *public* URL while they go to the local
server: Twilio only reaches public https URLs. Twilio drops a stream url's query string, so the url read from
the TwiML has none, for the signature and the connection; the upgrade is signed over it with empty params.
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from twilio.request_validator import RequestValidator

from phonebridge.errors import PhonebridgeError
from phonebridge.testing.playback import parse_twiml


class CallRejected(PhonebridgeError):
    """The server under test refused the call: a non-200 webhook, TwiML without a stream, a refused upgrade."""

    def __init__(self, status: int, body: str, reason: str = "") -> None:
        super().__init__(f"call rejected (HTTP {status}): {reason or body[:200]}")
        self.status = status
        self.body = body
        self.reason = reason


async def post_voice_webhook(
    session: aiohttp.ClientSession, url: str, local: str, form: dict[str, str], signer: RequestValidator | None
) -> str:
    """POST Twilio's voice webhook ``form`` to ``local``, signed (unless ``signer`` is None) over the public
    ``url``; the TwiML it answered."""
    headers = {"User-Agent": "TwilioProxy/1.1", "I-Twilio-Idempotency-Token": str(uuid.uuid4())}
    if signer is not None:
        headers["X-Twilio-Signature"] = signer.compute_signature(url, form)
    async with session.post(local, data=form, headers=headers) as response:
        status, body = response.status, await response.text()
    if status != 200:
        raise CallRejected(status, body, "the voice webhook did not answer 200")
    return body


def read_twiml(twiml: str) -> tuple[str, dict[str, str]]:
    """The stream url and ``<Parameter>``s Twilio would take from ``twiml``; CallRejected if it could not stream."""
    try:
        return parse_twiml(twiml)
    except ValueError as exc:
        raise CallRejected(200, twiml, str(exc)) from None


async def open_media_socket(
    session: aiohttp.ClientSession, stream_url: str, local: str, signer: RequestValidator | None
) -> aiohttp.ClientWebSocketResponse:
    """The media WebSocket to ``local``, its upgrade signed (unless ``signer`` is None) over ``stream_url``."""
    headers = {"User-Agent": "Twilio.TmeWs/1.0"}
    if signer is not None:
        headers["X-Twilio-Signature"] = signer.compute_signature(stream_url, {})
    try:
        return await session.ws_connect(local, headers=headers)
    except aiohttp.WSServerHandshakeError as exc:
        raise CallRejected(exc.status, exc.message, "the media WebSocket upgrade was refused") from exc


def local_url(public: str, public_url: str, server_url: str, twiml: str) -> str:
    """Map a URL on the host of ``public_url`` onto the local server at ``server_url``; CallRejected (with the
    ``twiml`` that named it) for a URL on any other host."""
    url, pub, srv = urlsplit(public), urlsplit(public_url), urlsplit(server_url)
    if url.hostname != pub.hostname:
        raise CallRejected(200, twiml, f"{public} is not on the public host {pub.hostname}")
    scheme = srv.scheme if url.scheme in ("http", "https") else {"http": "ws", "https": "wss"}[srv.scheme]
    path = url.path[len(pub.path) :] if url.path.startswith(pub.path) else url.path
    return urlunsplit((scheme, srv.netloc, srv.path + path, url.query, ""))


def forge_start(start: str, overrides: dict[str, Any]) -> str:
    """The ``start`` frame with the ``overrides`` fields of its ``start`` object replaced as is: the forgery a
    captured upgrade signature would allow (another call's ``callSid``, a wrong token), for security tests."""
    if not overrides:
        return start
    message = json.loads(start)
    message["start"].update(overrides)
    return json.dumps(message)
