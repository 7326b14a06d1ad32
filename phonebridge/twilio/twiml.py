"""Sans-I/O: the TwiML phonebridge answers with. Built with twilio's VoiceResponse, never by pasting strings.

Every builder returns a whole ``<Response>`` document (with the XML declaration) and refuses, with
``ValueError``, one longer than ``MAX_TWIML_CHARS``: Twilio rejects inline TwiML (``calls.create(twiml=)``,
``calls(sid).update(twiml=)``) over 4000 characters with error 32018, and a webhook answer that long is a bug.

``connect_stream`` may carry ``fallback`` verbs after ``<Connect>``: Twilio runs them when our server closes
the stream (the model is unreachable, or the bridge gave up), so the caller hears an apology or is
transferred instead of dead air. A fallback is itself a document from :func:`say`, :func:`dial`,
:func:`reject` or :func:`fallback_verbs`; its verbs are moved after ``<Connect>``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from urllib.parse import urlsplit

from twilio.twiml.voice_response import Dial, VoiceResponse

MAX_TWIML_CHARS = 4000
MAX_PARAMETER_CHARS = 500
"""Name plus value of one ``<Parameter>``. Unconfirmed by Twilio's docs (secondary reports say about 500):
longer values are cut to fit rather than risk Twilio refusing the whole stream."""

# XML 1.0 cannot carry these code points at all, even escaped.
_XML_ILLEGAL = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_PHONE_SEPARATORS = str.maketrans("", "", " -.()")
_PHONE = re.compile(r"\+?[0-9]{2,15}")
_SIP = re.compile(r"sips?:\S+", re.IGNORECASE)
_DIAL_TIMEOUT_RANGE = range(5, 601)  # Twilio's documented bounds for <Dial timeout>, in seconds


def connect_stream(
    stream_url: str,
    parameters: Mapping[str, str],
    *,
    status_callback: str | None = None,
    fallback: str | None = None,
) -> str:
    """``<Response><Connect><Stream url><Parameter/>...</Stream></Connect>[fallback verbs]</Response>``.

    ``stream_url`` must be ``wss://`` (``ws://`` only for local development) without a query string:
    Twilio drops it, so per-call data goes in ``parameters`` (arriving in ``start.customParameters``).
    Parameter values containing characters XML cannot carry lose them; over-long values are truncated
    to ``MAX_PARAMETER_CHARS`` (name plus value).
    """
    _check_stream_url(stream_url)
    response = VoiceResponse()
    stream = response.connect().stream(url=stream_url, status_callback=_http_url(status_callback))
    for name, value in parameters.items():
        stream.parameter(name=_parameter_name(name), value=_parameter_value(name, value))
    root = response.xml()
    if fallback is not None:
        root.extend(_verbs_of(fallback))
    return _render(root)


def say(message: str, *, voice: str | None = None) -> str:
    """``<Response><Say [voice]>message</Say></Response>``."""
    response = VoiceResponse()
    response.say(_text(message, "message"), voice=voice)
    return _render(response.xml())


def reject(message: str | None = None) -> str:
    """Without a message ``<Reject/>`` (the call is never answered, so it is not billed); with one, a polite
    ``<Say>`` then ``<Hangup/>`` (which answers the call to speak)."""
    response = VoiceResponse()
    if message is None:
        response.reject()
    else:
        response.say(_text(message, "message"))
        response.hangup()
    return _render(response.xml())


def dial(target: str, *, caller_id: str | None = None, timeout_s: int = 30) -> str:
    """``<Response><Dial><Number>`` for a phone number, or ``<Dial><Sip>`` for a ``sip:``/``sips:`` URI.

    Phone numbers may contain spaces, dashes, dots and parentheses, which are removed.
    """
    response = VoiceResponse()
    response.nest(_dial_verb(target, caller_id=caller_id, timeout_s=timeout_s))
    return _render(response.xml())


def fallback_verbs(say: str | None, dial: str | None) -> str:
    """A document to pass as ``connect_stream(fallback=...)``: say ``say`` (if any), then dial ``dial`` (if any)."""
    response = VoiceResponse()
    if say is not None:
        response.say(_text(say, "say"))
    if dial is not None:
        response.nest(_dial_verb(dial, caller_id=None, timeout_s=30))
    return _render(response.xml())


def _dial_verb(target: str, *, caller_id: str | None, timeout_s: int) -> Dial:
    if timeout_s not in _DIAL_TIMEOUT_RANGE:
        raise ValueError(f"dial timeout must be 5 to 600 seconds, got {timeout_s}")
    if caller_id is not None:
        _text(caller_id, "caller_id")
    verb = Dial(caller_id=caller_id, timeout=timeout_s)
    target = target.strip()
    if _SIP.fullmatch(target):
        verb.sip(target)
    else:
        number = target.translate(_PHONE_SEPARATORS)
        if not _PHONE.fullmatch(number):
            raise ValueError(f"dial target must be a phone number or a sip: URI, got {target!r}")
        verb.number(number)
    return verb


def _check_stream_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("wss", "ws") or not parts.hostname:
        raise ValueError(f"stream url must be a wss:// URL, got {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"stream url must have no query or fragment (Twilio drops them; use parameters), got {url!r}")


def _http_url(url: str | None) -> str | None:
    if url is not None and urlsplit(url).scheme not in ("https", "http"):
        raise ValueError(f"status callback must be an http(s) URL, got {url!r}")
    return url


def _parameter_name(name: str) -> str:
    _text(name, "parameter name")
    if len(name) >= MAX_PARAMETER_CHARS:
        raise ValueError(f"parameter name of {len(name)} characters leaves no room for its value: {name[:40]!r}...")
    return name


def _parameter_value(name: str, value: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"parameter {name!r} must be a string, got {type(value).__name__}")
    # Values come from callers (caller name, From): clean them rather than fail the call.
    return _XML_ILLEGAL.sub("", value)[: MAX_PARAMETER_CHARS - len(name)]


def _text(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    if _XML_ILLEGAL.search(value):
        raise ValueError(f"{what} contains characters XML cannot carry: {value!r}")
    return value


def _verbs_of(document: str) -> list[ET.Element]:
    try:
        root = ET.fromstring(document)
    except ET.ParseError as exc:
        raise ValueError(f"fallback is not TwiML: {exc}") from None
    if root.tag != "Response":
        raise ValueError(f"fallback must be a <Response> document, got <{root.tag}>")
    return list(root)


def _render(root: ET.Element) -> str:
    xml = '<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(root, encoding="unicode")
    if len(xml) > MAX_TWIML_CHARS:
        raise ValueError(f"TwiML of {len(xml)} characters exceeds Twilio's {MAX_TWIML_CHARS}-character limit")
    return xml
