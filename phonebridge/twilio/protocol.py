"""Sans-I/O: Twilio Media Streams, the protocol core (no clock either).

The WebSocket handler feeds every text frame to :func:`parse_event` and gets back one frozen event, or a
:class:`~phonebridge.errors.TwilioProtocolError` whose ``reason`` tag says what was wrong (count it, drop the
frame, and decide whether the stream can still be trusted). To talk back it sends the strings built by
phonebridge.twilio.messages (media, mark and clear), and only after ``start`` gave it a
``streamSid``. Base64 lives in this module and nowhere else: events carry decoded mu-law bytes.

Decision on unknown events: they are *returned* as :class:`Unknown`, never raised, so that Twilio adding an
event type never breaks a live call. The caller logs and counts them, and otherwise ignores them.

Numbers arrive as strings except ``mediaFormat.sampleRate``/``channels`` (JSON numbers): both forms are
accepted everywhere, and anything but a non-negative integer below 2**63 is refused.

Hostile input is bounded before it costs anything: the message size first, then JSON nesting and number
lengths (json.loads raises RecursionError and ValueError for those: both become protocol errors), then the
media payload's size before its base64 is decoded.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NoReturn, TypeAlias

from phonebridge.errors import TwilioProtocolError
# What we send lives in messages.py; its names stay importable from here, where they used to be.
from phonebridge.twilio.messages import (
    FRAME_BYTES as FRAME_BYTES,
    UlawFramer as UlawFramer,
    clear_message as clear_message,
    mark_message as mark_message,
    media_message as media_message,
)


DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024
_MAX_DIGITS = 19  # fits in int64; longer is no Twilio counter, and int() never sees attacker-sized strings
_MAX_INTEGER = 2**63 - 1  # the same bound for JSON numbers
# Twilio sends 160 bytes (20 ms) a frame; 4096 bytes (0.5 s) leaves room for any sane peer. Bigger frames would
# let one call grow the inbound path's memory by the message limit per frame: they are refused (and counted).
MAX_MEDIA_PAYLOAD_BYTES = 4096
_MAX_PAYLOAD_CHARS = 4 * -(-MAX_MEDIA_PAYLOAD_BYTES // 3)  # its base64 length, checked before decoding
_DTMF_DIGITS = frozenset("0123456789*#ABCD")
_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Connected:
    """Always the first message on a stream."""
    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class Start:
    """The stream's metadata, sent once; ``custom_parameters`` are the TwiML ``<Parameter>``s (read-only)."""
    sequence_number: int
    stream_sid: str
    account_sid: str
    call_sid: str
    tracks: tuple[str, ...]
    custom_parameters: Mapping[str, str]
    encoding: str
    sample_rate: int
    channels: int


@dataclass(frozen=True, slots=True)
class Media:
    """One chunk of caller audio; ``payload`` is the decoded mu-law, ``timestamp`` ms since stream start."""
    sequence_number: int
    stream_sid: str
    track: str
    chunk: int
    timestamp: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Dtmf:
    """A key the caller pressed: one of ``0-9 * # A-D``."""
    sequence_number: int
    stream_sid: str
    track: str
    digit: str


@dataclass(frozen=True, slots=True)
class Mark:
    """A mark we sent, echoed once the audio queued before it played, or at once after a ``clear``."""
    sequence_number: int
    stream_sid: str
    name: str


@dataclass(frozen=True, slots=True)
class Stop:
    """The stream ended (the call hung up, or was redirected)."""
    sequence_number: int
    stream_sid: str
    account_sid: str
    call_sid: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """An event this version does not know; ``raw`` is the whole message, read-only. Log it and go on.
    ``event`` is the name, clipped (with its length) past 40 characters: it goes into the log as it is."""
    event: str
    raw: Mapping[str, Any]


TwilioEvent: TypeAlias = Connected | Start | Media | Dtmf | Mark | Stop | Unknown


def parse_event(text: str | bytes, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> TwilioEvent:
    """Parse one Media Streams message into an event, or raise ``TwilioProtocolError`` with a ``reason``.

    Reasons: ``too_large`` (the message, or a media payload over ``MAX_MEDIA_PAYLOAD_BYTES``), ``not_json``,
    ``too_deep`` (nesting past the interpreter's recursion limit), ``not_object``, ``missing_field``,
    ``bad_type``, ``bad_value`` (also a JSON number too long to convert), ``bad_base64``,
    ``unsupported_format``. The size of a ``str`` is measured in characters (the protocol
    is ASCII, so that equals its bytes) to keep the hot path free of an encode.
    """
    if len(text) > max_message_bytes:
        raise TwilioProtocolError(f"message of {len(text)} bytes exceeds the {max_message_bytes}-byte limit",
                                  reason="too_large")
    try:
        msg = _loads(text)
    except UnicodeDecodeError:
        raise TwilioProtocolError("message is not UTF-8 text", reason="not_json") from None
    except json.JSONDecodeError as exc:
        raise TwilioProtocolError(f"message is not valid JSON: {exc.msg} at char {exc.pos}",
                                  reason="not_json") from None
    except RecursionError:  # e.g. "[" * 10000: the C decoder refuses at the recursion limit
        raise TwilioProtocolError("message is nested too deeply", reason="too_deep") from None
    except ValueError as exc:  # a number longer than int()'s digit limit (4300 digits by default)
        raise TwilioProtocolError(f"message has a number too long to read ({exc})", reason="bad_value") from None
    if type(msg) is not dict:
        raise TwilioProtocolError(f"message is a JSON {_json_type(msg)}, not an object", reason="not_object")
    event = msg.get("event")
    if type(event) is not str:
        if event is None and "event" not in msg:
            raise TwilioProtocolError("message has no 'event' field", reason="missing_field")
        raise TwilioProtocolError(f"field 'event' must be a string, got {_json_type(event)}", reason="bad_type")
    parser = _PARSERS.get(event)
    if parser is None:
        return Unknown(_shown(event, quoted=False), MappingProxyType(msg))
    return parser(msg)


# json.loads is a wrapper (a type check, a BOM check, two whitespace regexes) around this one C call: on a str
# that starts with '{' and that it reads to the end, the call alone gives the same object. Anything else, and
# every error, goes through json.loads itself, which gives the very errors it always gave (None: no scanner).
_scan = getattr(json.JSONDecoder(), "scan_once", None)


def _loads(text: str | bytes) -> Any:
    if _scan is not None and type(text) is str and text[:1] == "{":
        try:
            msg, end = _scan(text, 0)
        except (ValueError, StopIteration, RecursionError):  # what the scanner raises: json.loads says it below
            end = -1
        if end == len(text):
            return msg
    return json.loads(text)


def _parse_media(msg: dict[str, Any]) -> Media:
    # The hot path (50 a second per call): a well-formed frame (string numbers, as Twilio sends) is read with
    # one look at each field; anything else, numbers as JSON numbers included, takes _checked_media, which
    # finds the first fault, and so the reason and message, exactly as it always did.
    try:
        media = msg["media"]
        payload, track, chunk, timestamp = media["payload"], media["track"], media["chunk"], media["timestamp"]
        seq, sid = msg["sequenceNumber"], msg["streamSid"]
    except (KeyError, TypeError):  # TypeError: 'media' is no object (only a dict takes a string index)
        return _checked_media(msg)
    if (type(payload) is str and len(payload) <= _MAX_PAYLOAD_CHARS and type(sid) is str and sid
            and type(track) is str and _digits(seq) and _digits(chunk) and _digits(timestamp)):
        try:
            decoded = binascii.a2b_base64(payload, strict_mode=True)
        except (binascii.Error, ValueError):
            return _checked_media(msg)
        return Media(int(seq), sid, track, int(chunk), int(timestamp), decoded)
    return _checked_media(msg)


def _digits(value: object) -> bool:  # what _integer accepts as a string, by the same test
    return type(value) is str and 0 < len(value) <= _MAX_DIGITS and value.isascii() and value.isdigit()


def _checked_media(msg: dict[str, Any]) -> Media:
    media = _object(msg, "media", "media")
    payload = _string(media, "payload", "media", "media.")
    if len(payload) > _MAX_PAYLOAD_CHARS:
        limit = MAX_MEDIA_PAYLOAD_BYTES
        _fail("media", f"field 'media.payload' of {len(payload)} base64 characters exceeds the {limit}-byte limit",
              "too_large")
    try:
        decoded = binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError) as exc:  # ValueError: non-ASCII characters in the str
        _fail("media", f"field 'media.payload' is not valid base64 ({exc})", "bad_base64")
    return Media(
        _integer(msg, "sequenceNumber", "media"), _sid(msg, "streamSid", "media"),
        _string(media, "track", "media", "media."), _integer(media, "chunk", "media", "media."),
        _integer(media, "timestamp", "media", "media."), decoded,
    )


def _parse_connected(msg: dict[str, Any]) -> Connected:
    return Connected(_string(msg, "protocol", "connected"), _string(msg, "version", "connected"))


def _parse_start(msg: dict[str, Any]) -> Start:
    ev = "start"
    start = _object(msg, "start", ev)
    stream_sid = _start_stream_sid(msg, start)
    fmt = _object(start, "mediaFormat", ev, "start.")
    encoding = _string(fmt, "encoding", ev, "start.mediaFormat.")
    sample_rate = _integer(fmt, "sampleRate", ev, "start.mediaFormat.")
    channels = _integer(fmt, "channels", ev, "start.mediaFormat.")
    if (encoding, sample_rate, channels) != ("audio/x-mulaw", 8000, 1):
        got = f"{encoding} {sample_rate} Hz {channels} channel(s)"
        _fail(ev, f"unsupported media format {got}; phonebridge needs audio/x-mulaw 8000 Hz mono", "unsupported_format")
    return Start(
        sequence_number=_integer(msg, "sequenceNumber", ev), stream_sid=stream_sid,
        account_sid=_sid(start, "accountSid", ev, "start."), call_sid=_sid(start, "callSid", ev, "start."),
        tracks=_tracks(start), custom_parameters=_custom_parameters(start),
        encoding=encoding, sample_rate=sample_rate, channels=channels,
    )


def _start_stream_sid(msg: dict[str, Any], start: dict[str, Any]) -> str:
    # Peers (pipecat, OpenAI's Twilio demo) read start.streamSid: either copy will do, and both must agree.
    if "streamSid" not in msg:
        return _sid(start, "streamSid", "start", "start.")
    stream_sid = _sid(msg, "streamSid", "start")
    inner_sid = start.get("streamSid", stream_sid)
    if inner_sid != stream_sid:
        _fail("start", f"field 'start.streamSid' {_shown(inner_sid)} differs from 'streamSid' {_shown(stream_sid)}",
              "bad_value")
    return stream_sid


def _tracks(start: dict[str, Any]) -> tuple[str, ...]:
    tracks = _field(start, "tracks", "start", "start.")
    if type(tracks) is not list or any(type(t) is not str for t in tracks):
        _fail("start", f"field 'start.tracks' must be an array of strings, got {_json_type(tracks)}", "bad_type")
    return tuple(tracks)


def _custom_parameters(start: dict[str, Any]) -> Mapping[str, str]:
    # Absent when the TwiML had no <Parameter>: treat as empty rather than reject the call.
    if "customParameters" not in start:
        return _EMPTY
    params = _object(start, "customParameters", "start", "start.")
    for name, value in params.items():
        if type(value) is not str:
            where = f"start.customParameters.{_shown(name, quoted=False)}"
            _fail("start", f"field '{where}' must be a string, got {_json_type(value)}", "bad_type")
    return MappingProxyType(params)


def _parse_dtmf(msg: dict[str, Any]) -> Dtmf:
    dtmf = _object(msg, "dtmf", "dtmf")
    digit = _string(dtmf, "digit", "dtmf", "dtmf.")
    if digit not in _DTMF_DIGITS:
        _fail("dtmf", f"field 'dtmf.digit' must be one of 0-9 * # A-D, got {_shown(digit)}", "bad_value")
    return Dtmf(
        _integer(msg, "sequenceNumber", "dtmf"), _sid(msg, "streamSid", "dtmf"),
        _string(dtmf, "track", "dtmf", "dtmf."), digit,
    )


def _parse_mark(msg: dict[str, Any]) -> Mark:
    mark = _object(msg, "mark", "mark")
    return Mark(
        _integer(msg, "sequenceNumber", "mark"), _sid(msg, "streamSid", "mark"), _string(mark, "name", "mark", "mark.")
    )


def _parse_stop(msg: dict[str, Any]) -> Stop:
    stop = _object(msg, "stop", "stop")
    return Stop(
        _integer(msg, "sequenceNumber", "stop"), _sid(msg, "streamSid", "stop"),
        _sid(stop, "accountSid", "stop", "stop."), _sid(stop, "callSid", "stop", "stop."),
    )


_Parser: TypeAlias = Callable[[dict[str, Any]], TwilioEvent]
_PARSERS: Mapping[str, _Parser] = MappingProxyType({
    "media": _parse_media, "connected": _parse_connected, "start": _parse_start, "dtmf": _parse_dtmf,
    "mark": _parse_mark, "stop": _parse_stop,
})


def _fail(event: str, problem: str, reason: str) -> NoReturn:
    raise TwilioProtocolError(f"{event}: {problem}", reason=reason)


_SHOWN_CHARS = 40


def _shown(value: object, quoted: bool = True) -> str:
    """A peer's string for an error message or a log line: whole when short, else clipped with its length
    (every such message is logged, and a 64 KB frame could otherwise put 64 KB in each line)."""
    if type(value) is not str:  # only its type: a list of huge numbers is as long as the frame
        return f"a JSON {_json_type(value)}"
    if len(value) <= _SHOWN_CHARS:
        return repr(value) if quoted else value
    return f"{value[:20]!r}... ({len(value)} characters)"


def _json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for error messages (bool before int: it is one)."""
    kinds = ((bool, "boolean"), ((int, float), "number"), (str, "string"), (list, "array"), (dict, "object"))
    return "null" if value is None else next(name for kind, name in kinds if isinstance(value, kind))


def _field(obj: dict[str, Any], key: str, event: str, where: str = "") -> Any:
    try:
        return obj[key]
    except KeyError:
        _fail(event, f"missing field '{where}{key}'", "missing_field")


def _string(obj: dict[str, Any], key: str, event: str, where: str = "") -> str:
    value = _field(obj, key, event, where)
    if type(value) is not str:
        _fail(event, f"field '{where}{key}' must be a string, got {_json_type(value)}", "bad_type")
    return value


def _sid(obj: dict[str, Any], key: str, event: str, where: str = "") -> str:
    value = _string(obj, key, event, where)
    if not value:
        _fail(event, f"field '{where}{key}' must not be empty", "bad_value")
    return value


def _object(obj: dict[str, Any], key: str, event: str, where: str = "") -> dict[str, Any]:
    value = _field(obj, key, event, where)
    if type(value) is not dict:
        _fail(event, f"field '{where}{key}' must be an object, got {_json_type(value)}", "bad_type")
    return value


def _integer(obj: dict[str, Any], key: str, event: str, where: str = "") -> int:
    value, name = _field(obj, key, event, where), where + key
    if type(value) is str:
        # isascii() first: str.isdigit() accepts digits such as '²' that int() refuses.
        if 0 < len(value) <= _MAX_DIGITS and value.isascii() and value.isdigit():
            return int(value)
    elif type(value) is int:
        if 0 <= value <= _MAX_INTEGER:
            return value
    else:
        _fail(event, f"field '{name}' must be a number or a string of digits, got {_json_type(value)}", "bad_type")
    shown = repr(value) if len(str(value)) <= 40 else f"{str(value)[:20]}... ({len(str(value))} characters)"
    _fail(event, f"field '{name}' must be a non-negative integer, got {shown}", "bad_value")


class SequenceTracker:
    """Counts gaps in a counter that should rise by one (``sequenceNumber``, or media ``chunk``).

    A number below the expected one counts as duplicate or reordered and does not move the expectation.
    A late arrival after a gap was already counted as lost stays counted: ``lost`` is an upper bound.
    """

    __slots__ = ("_expected", "duplicates_or_reordered", "gaps", "lost")

    def __init__(self, first: int = 1) -> None:
        self._expected = first
        self.gaps = 0
        self.lost = 0
        self.duplicates_or_reordered = 0

    @property
    def expected(self) -> int:  # the number the next message should carry
        return self._expected

    def observe(self, sequence_number: int) -> int:
        """Record one number; return how many were skipped before it (0 when in order)."""
        skipped = sequence_number - self._expected
        if skipped < 0:
            self.duplicates_or_reordered += 1
            return 0
        if skipped:
            self.gaps += 1
            self.lost += skipped
        self._expected = sequence_number + 1
        return skipped
