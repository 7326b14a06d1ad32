"""X-Twilio-Signature checks for the webhooks and the Media Streams upgrade. Pure: no I/O, no clock.

Twilio signs the URL *it called*, so every URL here is rebuilt from the configured public base URL
(``PHONEBRIDGE_PUBLIC_URL``), never from the socket's local address: behind a proxy or load balancer the
two differ, and a URL rebuilt from the socket would fail every check (or, worse, pass a forged one).

Paths given to this module are our application's routes (``/twilio/voice``), relative to the public base
URL: with ``public_url="https://example.com/pb"`` the voice webhook Twilio calls is
``https://example.com/pb/twilio/voice``, and the proxy is expected to strip ``/pb`` before us.

The hashing and the constant-time comparison are ``twilio.request_validator.RequestValidator``'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]  # twilio ships no type hints

from phonebridge.errors import ConfigError

DEFAULT_STREAM_PATH = "/twilio/media"
# The TwiML <Stream> url must be wss://; plain http maps to ws:// only for local development against
# the simulated caller (real Twilio refuses it).
_STREAM_SCHEMES = {"https": "wss", "http": "ws"}


class SignatureChecker:
    """Validates Twilio's signatures against URLs rebuilt from the public base URL.

    Raises ``ConfigError`` at construction for an empty token or a public URL that is not a bare
    ``http(s)://host[:port][/prefix]`` (no query, no fragment); a trailing slash is tolerated.
    """

    __slots__ = ("_base", "_stream_base", "_validator")

    def __init__(self, auth_token: str, public_url: str) -> None:
        if not auth_token:
            raise ConfigError("TWILIO_AUTH_TOKEN is empty: signatures cannot be checked")
        self._validator = RequestValidator(auth_token)
        self._base, self._stream_base = _split_public_url(public_url)

    def webhook_url(self, path: str, query_string: str = "") -> str:
        """The https URL Twilio called. Give the raw (still percent-encoded) query string, as received."""
        url = self._base + _route(path)
        return f"{url}?{query_string}" if query_string else url

    def stream_url(self, path: str = DEFAULT_STREAM_PATH) -> str:
        """The ``wss://`` URL to put in TwiML's ``<Stream url>``; Twilio signs the upgrade with exactly this."""
        return self._stream_base + _route(path)

    def check_webhook(self, path: str, query_string: str, form: Mapping[str, str], signature: str | None) -> bool:
        """True when ``signature`` signs this webhook's public URL and its POST form (a multidict is fine)."""
        if not signature:
            return False
        return bool(self._validator.validate(self.webhook_url(path, query_string), form, signature))

    def check_upgrade(self, path: str, signature: str | None) -> bool:
        """True when ``signature`` signs the WebSocket upgrade: the portless ``wss://`` URL, no params.

        Twilio drops query strings from the stream URL, so there is none to include. The validator's
        with-port variant would append ``:80`` to a wss URL (not ``:443``): it is the portless URL that matches.
        """
        if not signature:
            return False
        return bool(self._validator.validate(self.stream_url(path), {}, signature))

    def sign(self, url: str, params: Mapping[str, str] | None = None) -> str:
        """The signature Twilio would send for ``url`` and ``params`` (for tests and the simulated caller)."""
        return str(self._validator.compute_signature(url, params or {}))


def _split_public_url(public_url: str) -> tuple[str, str]:
    """Return (https base, wss base), both without a trailing slash."""
    parts = urlsplit(public_url.strip())
    stream_scheme = _STREAM_SCHEMES.get(parts.scheme)
    if stream_scheme is None or not parts.hostname:
        raise ConfigError(f"PHONEBRIDGE_PUBLIC_URL must be an https:// URL with a host, got {public_url!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"PHONEBRIDGE_PUBLIC_URL must have no query, fragment or credentials, got {public_url!r}")
    rest = parts.netloc + parts.path.rstrip("/")
    return f"{parts.scheme}://{rest}", f"{stream_scheme}://{rest}"


def _route(path: str) -> str:
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/', got {path!r}")
    return path
