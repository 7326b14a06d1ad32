"""What the Live emulator does with each message a client sends once its session is open: decode the frame,
record it on the connection, hand what it carries (audio, text, tool responses) to the conversation, and say
with what close code and reason the real service would refuse it. The socket itself stays the emulator's."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType

from phonebridge.testing import live_wire as wire
from phonebridge.testing.live_state import Connection, Conversation, ToolResponseRecord

Refusal = tuple[int, str]


def decode(msg: Any) -> dict[str, Any] | None:
    """A text or binary frame's JSON object; None for anything else (the caller decides what that costs)."""
    if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
        return None
    try:
        data = json.loads(msg.data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def dispatch(
    conn: Connection,
    raw: dict[str, Any],
    *,
    strict: bool,
    quirks: wire.LiveQuirks,
    unknown_tool_response_close: Refusal | None,
    now: Callable[[], float],
) -> Refusal | None:
    """Record one client message and route it; returns (code, reason) if the service would refuse it."""
    data = wire.normalise(raw)
    keys = list(data)
    if len(keys) != 1 or keys[0] not in wire.TOP_LEVEL:
        return 1007, f"Invalid JSON payload received. Unknown name {keys!r}: Cannot find field."
    key = keys[0]
    conn.client_messages += 1
    conv = conn.conversation
    assert conv is not None
    problem: str | None
    if key == "setup":
        problem = "Invalid argument: setup may be sent only once, as the first message."
    elif key == "realtimeInput":
        problem = _realtime(conn, conv, data, strict)
    elif key == "clientContent":
        problem = wire.client_content_problem(conn.setup, conn.realtime_seen) if strict else None
        if problem is None and quirks.refuse_client_content:
            problem = wire.CLIENT_CONTENT_REFUSED
        conn.record_in("client_content", data)
    else:
        return _tool_response(conn, conv, data, unknown_tool_response_close, now)
    return (1007, problem) if problem else None


def _realtime(conn: Connection, conv: Conversation, data: dict[str, Any], strict: bool) -> str | None:
    body = data["realtimeInput"]
    model = str(conn.setup.get("model", ""))
    problem = wire.realtime_input_problem(body, model) if strict else None
    conn.realtime_seen = True
    if problem:
        conn.record_in("realtime_input", data)
        return problem
    if "audio" in body:
        rate = wire.audio_rate(str(body["audio"].get("mimeType", ""))) or 16000
        pcm = wire.decode_client_bytes(str(body["audio"].get("data", "")))
        if conv.active is conn:  # a connection superseded by a resumed one no longer talks to the script
            conv.hear_audio(pcm, rate)
        conn.record_in("audio", data, audio=pcm)
    elif "text" in body:
        if conv.active is conn:
            conv.pending_texts.append(str(body["text"]))
        conn.record_in("text", data)
    else:
        kind = {"activityStart": "activity_start", "activityEnd": "activity_end", "audioStreamEnd": "audio_stream_end"}
        field = next(iter(body), "")
        if field in ("activityEnd", "audioStreamEnd") and conv.active is conn:
            conv.hear_end_of_stream()  # the service ends the caller's turn on these, silence or not
        conn.record_in(kind.get(field, "realtime_input"), data)
    return None


def _tool_response(
    conn: Connection,
    conv: Conversation,
    data: dict[str, Any],
    unknown_close: Refusal | None,
    now: Callable[[], float],
) -> Refusal | None:
    responses = data["toolResponse"].get("functionResponses") or []
    unknown = []
    for item in responses:
        call_id = str(item.get("id", ""))
        opened = conv.open_calls.pop(call_id, None)
        if opened is None:
            unknown.append(call_id)
            continue
        name, sent_at = opened
        conv.tool_responses.append(ToolResponseRecord(call_id, name, dict(item.get("response") or {}), now() - sent_at))
    conn.record_in("tool_response", data)
    if not unknown:
        return None
    conv.fail(f"tool_response for unknown or closed call id(s) {', '.join(unknown)}")
    if unknown_close is None:
        return None
    code, reason = unknown_close
    return code, reason or wire.unknown_tool_response_problem(unknown)
