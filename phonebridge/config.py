"""Settings from the environment (12-factor); the CLI's flags override them.

Checked once at start-up so a misconfigured server refuses to start instead of failing its first call.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from phonebridge.errors import ConfigError

log = logging.getLogger("phonebridge.config")

DEFAULT_FALLBACK_SAY = "Sorry, our assistant can't take your call right now. Please try again in a few minutes."
DEFAULT_BUSY_SAY = "Sorry, all our lines are busy right now. Please call again in a few minutes."


@dataclass(frozen=True)
class Settings:
    public_url: str | None = None
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None
    validate_signatures: bool = True
    twilio_api_url: str | None = None  # redirects Twilio REST (a proxy, or TwilioRestEmulator)
    max_calls: int = 200
    drain_timeout_s: float = 3600.0
    record_dir: str | None = None
    fallback_say: str | None = DEFAULT_FALLBACK_SAY
    fallback_dial: str | None = None  # a human to reach when the model cannot be
    busy_say: str = DEFAULT_BUSY_SAY
    log_caller_numbers: bool = False
    model_connect_timeout_s: float = 10.0
    reconnect_attempts: int = 5
    heap_trim_s: float = 60.0  # look this often whether glibc's free heap pages should go back; 0: never
    stream_secret: str | None = None  # keys the per-call stream tokens; default: the auth token
    webhook_shared_keys: str | None = None  # Webhook Rules SharedKeys, "id=secret[,id=secret]"
    start_timeout_s: float = 10.0  # a signed media socket must send `start` within this
    media_timeout_s: float = 15.0  # a started stream silent this long ends the call

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {
            "public_url": env.get("PHONEBRIDGE_PUBLIC_URL") or None,
            "twilio_account_sid": env.get("TWILIO_ACCOUNT_SID") or None,
            "twilio_auth_token": env.get("TWILIO_AUTH_TOKEN") or None,
            "validate_signatures": _bool(env.get("PHONEBRIDGE_VALIDATE_SIGNATURES", "true"), "PHONEBRIDGE_VALIDATE_SIGNATURES"),
            "twilio_api_url": env.get("PHONEBRIDGE_TWILIO_API_URL") or None,
            "max_calls": int(env.get("PHONEBRIDGE_MAX_CALLS", "200")),
            "drain_timeout_s": float(env.get("PHONEBRIDGE_DRAIN_TIMEOUT_S", "3600")),
            "record_dir": env.get("PHONEBRIDGE_RECORD_DIR") or None,
            "fallback_dial": env.get("PHONEBRIDGE_FALLBACK_DIAL") or None,
            "heap_trim_s": float(env.get("PHONEBRIDGE_HEAP_TRIM_S", "60")),
            "log_caller_numbers": _bool(env.get("PHONEBRIDGE_LOG_CALLER_NUMBERS", "false"), "PHONEBRIDGE_LOG_CALLER_NUMBERS"),
            "stream_secret": env.get("PHONEBRIDGE_STREAM_SECRET") or None,
            "webhook_shared_keys": env.get("PHONEBRIDGE_WEBHOOK_SHARED_KEYS") or None,
            "media_timeout_s": float(env.get("PHONEBRIDGE_MEDIA_TIMEOUT_S", "15")),
        }
        if "PHONEBRIDGE_FALLBACK_SAY" in env:
            values["fallback_say"] = env["PHONEBRIDGE_FALLBACK_SAY"] or None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def check(self) -> None:
        """Raise ConfigError for settings a server must not start with; warn about risky ones."""
        if self.public_url is not None:
            parts = urlsplit(self.public_url)
            if parts.scheme not in ("https", "http") or not parts.netloc:
                raise ConfigError(f"PHONEBRIDGE_PUBLIC_URL {self.public_url!r} is not an absolute https URL")
            if parts.scheme == "http":
                log.warning("PHONEBRIDGE_PUBLIC_URL is http: Twilio only reaches https (wss) endpoints")
        if self.validate_signatures:
            if not self.twilio_auth_token:
                raise ConfigError(
                    "TWILIO_AUTH_TOKEN is not set, so Twilio's signatures cannot be checked; set it, or set "
                    "PHONEBRIDGE_VALIDATE_SIGNATURES=false for local development only"
                )
            if not self.public_url:
                raise ConfigError(
                    "PHONEBRIDGE_PUBLIC_URL is not set: signatures are checked against the public URL Twilio "
                    "calls (e.g. https://agent.example.com)"
                )
        else:
            log.warning(
                "SIGNATURE VALIDATION IS OFF (PHONEBRIDGE_VALIDATE_SIGNATURES=false): anyone who finds this "
                "server can place calls through it. Never run like this in production."
            )
        if self.max_calls < 1:
            raise ConfigError("PHONEBRIDGE_MAX_CALLS must be at least 1")


def _bool(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={value!r}: use true or false")
