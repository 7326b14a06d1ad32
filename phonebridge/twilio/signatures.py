"""Sans-I/O: X-Twilio-Signature checks for the webhooks and the Media Streams upgrade. No clock either.

Twilio signs the URL *it called*, so every URL here is rebuilt from the configured public base URL
(``PHONEBRIDGE_PUBLIC_URL``), never from the socket's local address: behind a proxy or load balancer the
two differ, and a URL rebuilt from the socket would fail every check (or, worse, pass a forged one).

Paths given to this module are our application's routes (``/twilio/voice``), relative to the public base
URL: with ``public_url="https://example.com/pb"`` the voice webhook Twilio calls is
``https://example.com/pb/twilio/voice``, and the proxy is expected to strip ``/pb`` before us.

The hashing and the constant-time comparison are ``twilio.request_validator.RequestValidator``'s, Webhook
Rules included: a request carrying ``X-Twilio-Webhooks-Signature-Settings: key=<id>,algorithm=<alg>`` is
signed with that SharedKey's secret (``PHONEBRIDGE_WEBHOOK_SHARED_KEYS``) and algorithm (HMAC_SHA1 or
HMAC_SHA256, as the library validates); without ``key=`` it is the auth token under the named algorithm.

:class:`StreamTokens` binds a media stream to the call our webhook answered: the webhook's TwiML carries
an HMAC-SHA256 over the CallSid and AccountSid, and ``start`` must bring it back for *its* callSid.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import urlsplit

from twilio.request_validator import (
    RequestValidator,
    get_signature_algorithm,
)

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

    __slots__ = ("_base", "_shared", "_stream_base", "_validator")

    def __init__(self, auth_token: str, public_url: str, shared_keys: Mapping[str, str] | None = None) -> None:
        if not auth_token:
            raise ConfigError("TWILIO_AUTH_TOKEN is empty: signatures cannot be checked")
        self._validator = RequestValidator(auth_token)
        self._shared = {key_id: RequestValidator(secret) for key_id, secret in (shared_keys or {}).items()}
        self._base, self._stream_base = _split_public_url(public_url)

    def webhook_url(self, path: str, query_string: str = "") -> str:
        """The https URL Twilio called. Give the raw (still percent-encoded) query string, as received."""
        url = self._base + _route(path)
        return f"{url}?{query_string}" if query_string else url

    def stream_url(self, path: str = DEFAULT_STREAM_PATH) -> str:
        """The ``wss://`` URL to put in TwiML's ``<Stream url>``; Twilio signs the upgrade with exactly this."""
        return self._stream_base + _route(path)

    def check_webhook(
        self, path: str, query_string: str, form: Mapping[str, str], signature: str | None,
        settings: str | None = None,
    ) -> bool:
        """True when ``signature`` signs this webhook's public URL and its POST form (a multidict is fine);
        ``settings`` is the X-Twilio-Webhooks-Signature-Settings header, if any."""
        return self._validate(self.webhook_url(path, query_string), form, signature, settings)

    def check_upgrade(self, path: str, signature: str | None, settings: str | None = None) -> bool:
        """True when ``signature`` signs the WebSocket upgrade: the portless ``wss://`` URL, no params.

        Twilio drops query strings from the stream URL, so there is none to include. The validator's
        with-port variant would append ``:80`` to a wss URL (not ``:443``): it is the portless URL that matches.
        """
        return self._validate(self.stream_url(path), {}, signature, settings)

    def _validate(self, url: str, form: Mapping[str, str], signature: str | None, settings: str | None) -> bool:
        if not signature:
            return False
        validator = self._validator
        key_id = _shared_key_id(settings)
        if key_id is not None:
            validator = self._shared.get(key_id)
            if validator is None:  # a SharedKey we were not given: nothing here can check it
                return False
        algorithm = get_signature_algorithm(settings) if settings else None
        return bool(validator.validate(url, form, signature, algorithm))

    def sign(self, url: str, params: Mapping[str, str] | None = None) -> str:
        """The signature Twilio would send for ``url`` and ``params`` (for tests and the simulated caller)."""
        return str(self._validator.compute_signature(url, params or {}))


STREAM_TOKEN_PARAMETER = "phonebridgeStreamToken"
"""The ``<Parameter>`` carrying the call's stream token; hidden from the agent's ``CallContext.parameters``."""


class StreamTokens:
    """Per-call stream tokens: HMAC-SHA256 over (AccountSid, CallSid) with a secret every instance shares
    (``PHONEBRIDGE_STREAM_SECRET``, else the auth token). Stateless: any instance behind a load balancer
    verifies a token another issued, and nothing is stored per call."""

    __slots__ = ("_key",)

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ConfigError("the stream token secret is empty")
        self._key = secret.encode()

    def issue(self, call_sid: str, account_sid: str) -> str:
        message = f"phonebridge-stream-v1\0{account_sid}\0{call_sid}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def valid(self, call_sid: str, account_sid: str, token: str | None) -> bool:
        """True when ``token`` was issued for exactly this call of this account (constant-time compare)."""
        if not token or not call_sid:
            return False
        return hmac.compare_digest(self.issue(call_sid, account_sid).encode(), token.encode("utf-8", "replace"))


def parse_shared_keys(text: str | None) -> dict[str, str]:
    """``PHONEBRIDGE_WEBHOOK_SHARED_KEYS`` (``id=secret[,id=secret]``) as {SharedKey id: secret}."""
    keys: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key_id, sep, secret = item.strip().partition("=")
        if not sep or not key_id or not secret:
            raise ConfigError("PHONEBRIDGE_WEBHOOK_SHARED_KEYS must be id=secret pairs separated by commas")
        keys[key_id] = secret
    return keys


def _shared_key_id(settings: str | None) -> str | None:
    for part in (settings or "").split(","):
        name, sep, value = part.partition("=")
        if sep and name.strip() == "key" and value.strip():
            return value.strip()
    return None


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
