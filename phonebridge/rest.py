"""Twilio REST access that never blocks the event loop.

twilio.rest.Client does blocking HTTP (requests), so every call here runs in a worker thread. The Twilio
API base can be redirected (PHONEBRIDGE_TWILIO_API_URL): for a regional proxy in production, and for
phonebridge.testing.TwilioRestEmulator in tests. Only the scheme and host change; paths, bodies and Basic
auth are exactly what twilio's own client sends.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response


class ApiBaseHttpClient(TwilioHttpClient):
    """twilio's HTTP client with `https://*.twilio.com` swapped for `api_base` (scheme and host only)."""

    def __init__(self, api_base: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        parts = urlsplit(api_base)
        self._scheme, self._netloc = parts.scheme, parts.netloc

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        parts = urlsplit(url)
        url = urlunsplit((self._scheme, self._netloc, parts.path, parts.query, parts.fragment))
        return super().request(method, url, *args, **kwargs)
