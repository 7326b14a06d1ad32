"""Settings from the environment (12-factor); the CLI's flags override them.

Checked once at start-up so a misconfigured server refuses to start instead of failing its first call, and
every problem is reported at once (one message listing them all, not one per run). Pure: the environment is
a mapping passed in, nothing here does I/O.

A new setting is a field on `Settings`, one row in `ENV_VARS` (how its variable is read) and, if some values
are wrong, one row in `_FIELD_CHECKS` (what is allowed: it also covers Settings built in code).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import phonebridge.twilio.twiml as twiml
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
    def parse(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> tuple[Settings, list[str]]:
        """Settings from `env` (default os.environ) plus `overrides` (None: not given), and every variable
        that could not be read. A variable that could not be read keeps its default."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        problems: list[str] = []
        for var in ENV_VARS:
            raw = env.get(var.name)
            if raw is None or (raw == "" and not var.empty_is_none):
                continue  # unset, or set to nothing: the default (a text set to "" means "none")
            try:
                values[var.field] = var.read(raw)
            except ValueError as exc:
                problems.append(f"{var.name}={_shown(raw)}: {exc}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values), problems

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from the environment; ConfigError listing every variable that could not be read."""
        settings, problems = cls.parse(env, **overrides)
        if problems:
            raise config_error(problems)
        return settings

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """from_env, then check: one ConfigError listing every problem of both kinds."""
        settings, problems = cls.parse(env, **overrides)
        problems += settings.problems()
        if problems:
            raise config_error(problems)
        settings.warn()
        return settings

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def problems(self) -> list[str]:
        """Everything a server must not start with, as one line each (empty: fine)."""
        found: list[str] = []
        for name, check in _FIELD_CHECKS:
            value = getattr(self, name)
            if value is None:
                continue
            try:
                check(value)
            except ValueError as exc:
                found.append(f"{_label(name)}={_shown(value)}: {exc}")
        if self.validate_signatures:
            if not self.twilio_auth_token:
                found.append(
                    "TWILIO_AUTH_TOKEN is not set, so Twilio's signatures cannot be checked; set it, or set "
                    "PHONEBRIDGE_VALIDATE_SIGNATURES=false for local development only"
                )
            if not self.public_url:
                found.append(
                    "PHONEBRIDGE_PUBLIC_URL is not set: signatures are checked against the public URL Twilio "
                    "calls (e.g. https://agent.example.com)"
                )
        return found

    def warnings(self) -> list[str]:
        """Risky but allowed settings, one line each."""
        found: list[str] = []
        if self.public_url is not None and urlsplit(self.public_url).scheme == "http":
            found.append("PHONEBRIDGE_PUBLIC_URL is http: Twilio only reaches https (wss) endpoints")
        if not self.validate_signatures:
            found.append(
                "SIGNATURE VALIDATION IS OFF (PHONEBRIDGE_VALIDATE_SIGNATURES=false): anyone who finds this "
                "server can place calls through it. Never run like this in production."
            )
        return found

    def warn(self) -> None:
        for line in self.warnings():
            log.warning("%s", line)

    def check(self) -> None:
        """Raise one ConfigError listing every problem; log the warnings."""
        problems = self.problems()
        if problems:
            raise config_error(problems)
        self.warn()


def config_error(problems: Sequence[str]) -> ConfigError:
    """One ConfigError for all `problems`: the single line, or a count and one indented line each."""
    if len(problems) == 1:
        return ConfigError(problems[0])
    return ConfigError(f"{len(problems)} configuration problems:\n" + "\n".join(f"  - {p}" for p in problems))


# -- reading one variable (each raises ValueError saying what is expected) ----------------------------------

def read_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("use true or false")


def read_int(raw: str) -> int:
    text = raw.strip()
    # int() takes "1_000" and, from Python 3.11, refuses a few thousand digits only with a ValueError of its
    # own wording; a plain bounded check says what we want.
    if not (text.lstrip("+-").isdigit() and text.isascii()) or len(text) > 18:
        raise ValueError("not a whole number")
    return int(text)


def read_float(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError("not a number") from None
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def read_text(raw: str) -> str | None:
    return raw or None


@dataclass(frozen=True)
class EnvVar:
    """How one environment variable becomes one Settings field."""

    name: str
    field: str
    read: Callable[[str], Any] = read_text
    empty_is_none: bool = False  # "" means "none" (a text); otherwise "" is as if unset (the default)


ENV_VARS: tuple[EnvVar, ...] = (
    EnvVar("PHONEBRIDGE_PUBLIC_URL", "public_url", empty_is_none=True),
    EnvVar("TWILIO_ACCOUNT_SID", "twilio_account_sid", empty_is_none=True),
    EnvVar("TWILIO_AUTH_TOKEN", "twilio_auth_token", empty_is_none=True),
    EnvVar("PHONEBRIDGE_VALIDATE_SIGNATURES", "validate_signatures", read_bool),
    EnvVar("PHONEBRIDGE_TWILIO_API_URL", "twilio_api_url", empty_is_none=True),
    EnvVar("PHONEBRIDGE_MAX_CALLS", "max_calls", read_int),
    EnvVar("PHONEBRIDGE_DRAIN_TIMEOUT_S", "drain_timeout_s", read_float),
    EnvVar("PHONEBRIDGE_RECORD_DIR", "record_dir", empty_is_none=True),
    EnvVar("PHONEBRIDGE_FALLBACK_SAY", "fallback_say", empty_is_none=True),  # "": say nothing
    EnvVar("PHONEBRIDGE_FALLBACK_DIAL", "fallback_dial", empty_is_none=True),
    EnvVar("PHONEBRIDGE_HEAP_TRIM_S", "heap_trim_s", read_float),
    EnvVar("PHONEBRIDGE_LOG_CALLER_NUMBERS", "log_caller_numbers", read_bool),
    EnvVar("PHONEBRIDGE_STREAM_SECRET", "stream_secret", empty_is_none=True),
    EnvVar("PHONEBRIDGE_WEBHOOK_SHARED_KEYS", "webhook_shared_keys", empty_is_none=True),
    EnvVar("PHONEBRIDGE_MEDIA_TIMEOUT_S", "media_timeout_s", read_float),
)


# -- what values are allowed (each raises ValueError saying why not) -----------------------------------------

def at_least(minimum: float) -> Callable[[float], None]:
    def check(value: float) -> None:
        if not math.isfinite(value) or value < minimum:
            raise ValueError(f"must be at least {minimum:g}")

    return check


def _absolute_url(value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError("not an absolute https URL")


def _dial_target(value: str) -> None:
    # The very TwiML every webhook answers with, built now: refused at start rather than a 500 per call.
    try:
        twiml.dial(value)
    except ValueError:
        raise ValueError("use a phone number (+15550100) or a sip: URI") from None


def _sayable(value: str) -> None:
    try:
        twiml.say(value)
    except ValueError:
        raise ValueError("use printable text: control characters cannot be spoken or sent in TwiML") from None


def _shared_keys(value: str) -> None:
    if not all(key_id and sep and secret for key_id, sep, secret in
               (item.strip().partition("=") for item in value.split(",") if item.strip())):
        raise ValueError("use id=secret pairs separated by commas")


_FIELD_CHECKS: tuple[tuple[str, Callable[[Any], None]], ...] = (
    ("public_url", _absolute_url),
    ("twilio_api_url", _absolute_url),
    ("max_calls", at_least(1)),
    ("drain_timeout_s", at_least(0)),
    ("heap_trim_s", at_least(0)),
    ("fallback_say", _sayable),
    ("fallback_dial", _dial_target),
    ("busy_say", _sayable),
    ("model_connect_timeout_s", at_least(0.001)),
    ("reconnect_attempts", at_least(0)),
    ("start_timeout_s", at_least(0.001)),
    ("media_timeout_s", at_least(0.001)),
    ("webhook_shared_keys", _shared_keys),
)


def _shown(value: object) -> str:
    """A value as the message shows it: its repr, cut to a readable length (a value can be huge)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + f"... ({len(text)} characters)"


def _label(field_name: str) -> str:
    """The environment variable that sets a field, or the field's own name for those only code sets."""
    return next((v.name for v in ENV_VARS if v.field == field_name), field_name)

