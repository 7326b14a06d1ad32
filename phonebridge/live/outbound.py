"""What the model link sends on one connection: by the direct path where it applies (phonebridge.live.frames),
by the SDK's own methods otherwise, each message shown to the recorder's tap as it always was.

LiveLink (phonebridge.live.link) decides whether and on which connection something is sent, and what a failure
means; these functions only send, and raise what the SDK or the socket raises. The tap's records are the
SDK's own dumps of the messages (the direct path's are held equal to them by tests), so a cassette reads the
same whichever path sent a message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from google.genai import types

import phonebridge.live.frames as live_frames
from phonebridge.call.tool_types import ToolResult
from phonebridge.live.frames import AUDIO_MIME, audio_message

Tap = Callable[[str, Any], None] | None


async def send_audio(session: Any, pcm16k: bytes, tap: Tap, direct: bool) -> None:
    """One frame of caller audio; `direct`: framed and written in place when websockets' `send` would neither
    wait nor raise (live_frames), else its `send` of the same message; not `direct`: the SDK's method."""
    if tap is not None:
        tap("model_out", {"realtime_input": {"audio": {"mime_type": AUDIO_MIME, "data": pcm16k}}})
    # The session's socket (a private SDK attribute) when present; the public method otherwise.
    socket = getattr(session, "_ws", None) if direct else None
    if socket is not None:
        if not (live_frames.usable(socket) and live_frames.send_text(socket, live_frames.audio_payload(pcm16k))):
            await socket.send(audio_message(pcm16k))
    else:
        await session.send_realtime_input(audio=types.Blob(data=pcm16k, mime_type=AUDIO_MIME))


def audio_writable(session: Any, direct: bool) -> bool:
    """Whether `write_audio` may be called: `direct`, and the direct write would go out now, with no await."""
    socket = getattr(session, "_ws", None) if direct else None
    return socket is not None and live_frames.usable(socket) and live_frames.writable(socket)


def write_audio(session: Any, pcm16k: bytes, tap: Tap) -> None:
    """`send_audio`'s direct write, done at once: only in the loop turn `audio_writable` said True."""
    if tap is not None:
        tap("model_out", {"realtime_input": {"audio": {"mime_type": AUDIO_MIME, "data": pcm16k}}})
    live_frames.write_text(session._ws, live_frames.audio_payload(pcm16k))


async def send_text(session: Any, text: str, tap: Tap) -> None:
    if tap is not None:
        tap("model_out", {"realtime_input": {"text": text}})
    await session.send_realtime_input(text=text)


async def send_tool_response(session: Any, results: Sequence[ToolResult], tap: Tap) -> None:
    """The SDK's path: its FunctionResponse per result, converted and sent by `session.send_tool_response`."""
    responses = [types.FunctionResponse(id=r.id, name=r.name, response=r.response) for r in results]
    if tap is not None:
        _record(tap, [r.model_dump(mode="json", exclude_none=True) for r in responses])
    await session.send_tool_response(function_responses=responses)


def send_tool_response_now(session: Any, results: Sequence[ToolResult], tap: Tap, direct: bool = True) -> bool | None:
    """`send_tool_response` done at once, with no await: True once written.

    None, with nothing sent or recorded, where the SDK's path must be awaited instead: not `direct`, no socket
    of the shape live_frames knows, results the direct message does not build exactly, or a socket that
    websockets' `send` would wait on (backpressure) or raise from. A failed write raises, the connection then
    being done, as in the SDK's path; the message is recorded either way, as the SDK's path records it before
    its send."""
    socket = getattr(session, "_ws", None) if direct else None
    if socket is None or not live_frames.usable(socket):
        return None
    items = live_frames.function_responses(results)
    payload = None if items is None else live_frames.tool_response_payload(items)
    if items is None or payload is None:
        return None
    try:
        written = live_frames.send_text(socket, payload)
    except Exception:
        _record(tap, items)
        raise
    if not written:
        return None
    _record(tap, items)  # after the write: nothing else runs in between, and a declined write records nothing
    return True


def _record(tap: Tap, function_responses: list[dict[str, Any]]) -> None:
    if tap is not None:
        tap("model_out", {"tool_response": {"function_responses": function_responses}})
