"""The media frame's fast path in twilio.protocol gives what the checked path gives: the same event, or the same
error (reason and message), for every frame; json.loads' bypass gives what json.loads gives, errors included."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
from typing import Any

import pytest

import phonebridge.twilio.protocol as protocol
from phonebridge.errors import TwilioProtocolError
from phonebridge.twilio.protocol import Media

PAYLOAD = base64.b64encode(bytes(range(160))).decode()


def frame(**changes: Any) -> dict[str, Any]:
    """A media frame as Twilio sends it; `media_x=v` changes media.x, `x=v` the top level (a `DROP` removes it)."""
    msg: dict[str, Any] = {"event": "media", "sequenceNumber": "12", "streamSid": "MZ" + "1" * 32,
                           "media": {"track": "inbound", "chunk": "11", "timestamp": "220", "payload": PAYLOAD}}
    for key, value in changes.items():
        target, name = (msg["media"], key[6:]) if key.startswith("media_") else (msg, key)
        if value is DROP:
            target.pop(name, None)
        else:
            target[name] = value
    return msg


DROP = object()
ODD_VALUES: list[Any] = [
    DROP, None, True, False, 0, 7, -1, 2**63, 2**63 - 1, 1.5, "", "0", "7", "-1", "+1", " 1", "1 ", "1_0", "²", "٣",
    "1" * 19, "1" * 20, "9" * 19, "abc", [], ["1"], {}, {"a": 1}, "MZ", "x" * 100,
]
PAYLOADS: list[Any] = [
    DROP, None, 5, [], "", "/w==", "/w=", "/w", "!!!!", "AAAA\n", "é" * 4, PAYLOAD, PAYLOAD + "=",
    "A" * protocol._MAX_PAYLOAD_CHARS, "A" * (protocol._MAX_PAYLOAD_CHARS + 4), " " + PAYLOAD,
]
FIELDS = ["sequenceNumber", "streamSid", "media_track", "media_chunk", "media_timestamp"]


def cases() -> list[dict[str, Any]]:
    out = [frame()]
    out += [frame(**{f: v}) for f in FIELDS for v in ODD_VALUES]
    out += [frame(media_payload=p) for p in PAYLOADS]
    out += [frame(media=m) for m in (DROP, None, "x", 3, [], ["payload"], {})]
    out += [frame(sequenceNumber=5, media_chunk=2**62, media_timestamp=0)]  # JSON numbers: the checked path's
    out += [frame(media_payload="!!!!", sequenceNumber="x"), frame(streamSid="", media_track=5)]  # two faults
    return out


def outcome(parse: Any, msg: dict[str, Any]) -> tuple[str, Any]:
    try:
        event = parse(copy.deepcopy(msg))
    except TwilioProtocolError as exc:
        return "error", (exc.reason, str(exc))
    return "event", (event, type(event), dataclasses.astuple(event))


@pytest.mark.parametrize("msg", cases(), ids=range(len(cases())))
def test_the_fast_path_gives_what_the_checked_path_gives(msg: dict[str, Any]) -> None:
    assert outcome(protocol._parse_media, msg) == outcome(protocol._checked_media, msg)


def test_a_well_formed_frame_takes_the_fast_path() -> None:
    event = protocol._parse_media(frame())
    assert event == Media(12, "MZ" + "1" * 32, "inbound", 11, 220, bytes(range(160)))


TEXTS: list[str | bytes] = [
    json.dumps(frame()), " " + json.dumps(frame()), json.dumps(frame()) + " ", json.dumps(frame()) + "x",
    json.dumps(frame()) + "{}", "{}", "{", "}", "", " ", "[]", '"x"', "1", "null", '{"a": 1,}', '{"a" 1}',
    '{"a": NaN}', '{"a": 1e400}', '{"a": ' + "1" * 5000 + "}", "{" + '"a":' * 0 + '"a": [' * 3000 + "]" * 3000 + "}",
    "[" * 100000, '{"a": "\\ud800"}', '{"a": "\\x"}', '{"a": "\x01"}', "\ufeff{}", '{"a":1}\n',
    json.dumps(frame()).encode(), b"\xff\xfe{\x00}\x00", b"{\xff}", '{"a": 1, "a": 2}',
]


def loads_outcome(loads: Any, text: str | bytes) -> tuple[str, Any]:
    try:
        return "value", loads(text)
    except Exception as exc:  # noqa: BLE001 -- the very exception is what is compared
        return "error", (type(exc), str(exc))


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_the_json_bypass_gives_what_json_loads_gives(text: str | bytes) -> None:
    assert loads_outcome(protocol._loads, text) == loads_outcome(json.loads, text)


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_parse_event_is_the_same_without_the_scanner(text: str | bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    def parsed() -> tuple[str, Any]:
        try:
            return "event", repr(protocol.parse_event(text, max_message_bytes=10**6))
        except TwilioProtocolError as exc:
            return "error", (exc.reason, str(exc))

    fast = parsed()
    monkeypatch.setattr(protocol, "_scan", None)  # a json without the C scanner: json.loads itself
    assert parsed() == fast
