"""The Live session's receive path without the SDK's per-message pydantic parse for the commonest messages.

Most server messages of a call are one chunk of the model's audio (with its transcript slice). The SDK turns each into
a LiveServerMessage (JSON, its converter, pydantic validation: ~100 us a message, the largest single cost of
a call after the sockets); for these we decode the JSON and the base64 ourselves (~12 us). The next commonest,
several a turn (transcript slices, interrupted, generationComplete, turnComplete, sessionResumptionUpdate),
take the same kind of path (`plain_events`). Every other message goes through the SDK's own conversion,
exactly as `session.receive()` does it, so the call sees the same events either way (tests hold the two
equal). The session's socket and converter are private SDK attributes: where either is missing (another SDK
version, Vertex AI), `reader_for` returns None and the caller uses `session.receive()`.

The fast path takes a message only when the SDK would build it without complaint and translate it to the same
events: any field it does not know, or a known one of another type, sends the message down the SDK's path.
Whatever the peer sends, `SessionReader.next` gives events, the SDK's APIError (a close, or an error object),
or a ModelProtocolError saying what was wrong (the link then replaces the connection): nothing else.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from google.genai import errors as genai_errors
from google.genai import types

from phonebridge.errors import ModelProtocolError
from phonebridge.live.events import (
    AudioOut, GenerationComplete, InputText, Interrupted, ModelEvent, OutputText, ResumptionUpdate, TurnComplete,
    translate,
)

try:  # private to the SDK: the reader is only used while it is there
    from google.genai import _live_converters
    from websockets import ConnectionClosed
    from websockets.frames import CLOSE_CODE_EXPLANATIONS
except ImportError:  # pragma: no cover - depends on the installed SDK
    _live_converters = None  # type: ignore[assignment]

Converter = Callable[[dict[str, Any]], types.LiveServerMessage]


def audio_events(data: Mapping[str, Any]) -> list[ModelEvent] | None:
    """The events of a message that carries model audio and at most its transcript slice (3.1 sends the two
    together), in translate()'s order: one AudioOut per part, then OutputText. None for any other message,
    which then takes the SDK's path."""
    content = data.get("serverContent") if len(data) == 1 else None
    if not isinstance(content, dict) or not set(content) <= {"modelTurn", "outputTranscription"}:
        return None
    turn = content.get("modelTurn")
    if not isinstance(turn, dict) or not set(turn) <= {"parts", "role"} or not isinstance(turn.get("role", ""), str):
        return None
    parts = turn.get("parts")
    if not isinstance(parts, list) or not parts:
        return None
    events: list[ModelEvent] = []
    for part in parts:
        pcm = _audio_part(part)
        if pcm is None:
            return None
        events.append(AudioOut(pcm))
    said = _transcription(content.get("outputTranscription"))
    if said is None:
        return None
    if said[0]:
        events.append(OutputText(said[0]))
    return events


_FLAGS = ("interrupted", "generationComplete", "turnComplete")
_PLAIN_CONTENT = {*_FLAGS, "inputTranscription", "outputTranscription"}
_RESUMPTION = {"newHandle", "resumable", "lastConsumedClientMessageIndex"}


def plain_events(data: Mapping[str, Any], received_at: float = 0.0, epoch: int = 0) -> list[ModelEvent] | None:
    """The events of the commonest messages after audio, as translate() would give them: serverContent with
    no modelTurn (transcript slices, interrupted, generationComplete, turnComplete) and sessionResumptionUpdate.
    Several per turn, each ~100 us through the SDK's parse, and `interrupted` is the barge-in reaction's start.
    Only exactly typed fields (JSON booleans, strings): anything else is None, for the SDK's path to judge."""
    if len(data) != 1:
        return None
    if "sessionResumptionUpdate" in data:
        return _resumption(data["sessionResumptionUpdate"])
    content = data.get("serverContent")
    if not isinstance(content, dict) or not set(content) <= _PLAIN_CONTENT:
        return None
    interrupted, generated, complete = (content.get(flag) for flag in _FLAGS)
    if not all(isinstance(flag, (bool, type(None))) for flag in (interrupted, generated, complete)):
        return None
    heard, said = _transcription(content.get("inputTranscription")), _transcription(content.get("outputTranscription"))
    if heard is None or said is None:
        return None
    events: list[ModelEvent] = [Interrupted(received_at, epoch)] if interrupted else []
    if heard[0]:
        events.append(InputText(heard[0], bool(heard[1])))
    if said[0]:
        events.append(OutputText(said[0]))
    if generated:
        events.append(GenerationComplete())
    if complete:
        events.append(TurnComplete())
    return events


def _transcription(value: Any) -> tuple[str | None, bool | None] | None:
    """(text, finished) of a transcription object, (None, None) when absent; None when not exactly typed."""
    if value is None:
        return None, None
    if not isinstance(value, dict) or not set(value) <= {"text", "finished"}:
        return None
    text, finished = value.get("text"), value.get("finished")
    if not isinstance(text, (str, type(None))) or not isinstance(finished, (bool, type(None))):
        return None
    return text, finished


def _resumption(update: Any) -> list[ModelEvent] | None:
    if not isinstance(update, dict) or not set(update) <= _RESUMPTION:
        return None
    handle, resumable = update.get("newHandle"), update.get("resumable")
    index = update.get("lastConsumedClientMessageIndex")  # int64: a JSON string, as the service sends it
    if not isinstance(handle, (str, type(None))) or not isinstance(resumable, (bool, type(None))):
        return None
    if index is not None and not (isinstance(index, str) and index.isascii() and index.isdigit()):
        return None
    return [ResumptionUpdate(handle or None, bool(resumable and handle))]


def _audio_part(part: Any) -> bytes | None:
    blob = part.get("inlineData") if isinstance(part, dict) and len(part) == 1 else None
    if not isinstance(blob, dict) or not set(blob) <= {"data", "mimeType"}:
        return None
    encoded, mime = blob.get("data"), blob.get("mimeType", "audio/pcm")
    if not isinstance(encoded, str) or not encoded or not isinstance(mime, str) or not mime.startswith("audio/pcm"):
        return None
    url_safe = "-" in encoded or "_" in encoded
    if url_safe and ("+" in encoded or "/" in encoded):
        return None  # both alphabets at once: pydantic refuses it, so the SDK's path must say so
    try:
        return base64.b64decode(encoded, altchars=b"-_" if url_safe else None, validate=True)
    except (binascii.Error, ValueError):
        return None


def sdk_message(data: dict[str, Any]) -> types.LiveServerMessage:
    """What `AsyncSession._receive` makes of one decoded server message (Gemini API), errors included."""
    converted = _live_converters._LiveServerMessage_from_mldev(data)
    if not converted and data:
        code = data.get("code")  # an error object without a code is a server error (the SDK would TypeError)
        genai_errors.APIError.raise_error(code if isinstance(code, int) else 500, data, None)
    return types.LiveServerMessage._from_response(response=converted, kwargs={})


def wire_events(
    data: dict[str, Any], convert: Converter = sdk_message, received_at: float = 0.0, epoch: int = 0
) -> tuple[list[ModelEvent], Any]:
    """The events of one decoded server message, and the SDK's message when it was built (else None).
    `received_at` and `epoch` stamp the events that carry them (events.py); the audio path's carry none."""
    events = audio_events(data)
    if events is None:
        events = plain_events(data, received_at, epoch)
    if events is not None:
        return events, None
    message = convert(data)
    return translate(message, received_at, epoch), message


class SessionReader:
    """Reads one Live session's socket directly; see the module's docstring."""

    def __init__(self, socket: Any, epoch: int = 0) -> None:
        self._socket, self._epoch = socket, epoch  # the link's connection epoch: one reader per connection
        self.received_at = 0.0  # time.monotonic() when the last message came off the socket

    async def next(self, want_message: bool = False) -> tuple[list[ModelEvent], Any]:
        """The next message's events, and its LiveServerMessage if built or `want_message` (for a recorder).
        A closed connection raises APIError with its close code, as the SDK's receive does."""
        try:
            raw = await self._socket.recv(decode=False)
            self.received_at = time.monotonic()
        except ConnectionClosed as exc:
            code, reason = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (1006, CLOSE_CODE_EXPLANATIONS.get(1006))
            genai_errors.APIError.raise_error(code, reason or "", None)
        data = decode_message(raw)
        try:
            events, message = wire_events(data, sdk_message, self.received_at, self._epoch)
            if message is None and want_message:
                message = sdk_message(data)
        except genai_errors.APIError:
            raise  # a server error object: the SDK's own outcome
        except Exception as exc:  # noqa: BLE001 - the SDK's converter and pydantic raise many types on odd shapes
            raise ModelProtocolError(
                f"server message the SDK cannot read ({type(exc).__name__}): {_show(raw)}", reason="bad_message"
            ) from exc
        return events, message


def decode_message(raw: bytes | str) -> dict[str, Any]:
    """One server frame as a JSON object, or a ModelProtocolError (json.loads raises RecursionError for deep
    nesting and ValueError for numbers past int()'s digit limit: neither may leave the reader)."""
    try:
        data = json.loads(raw) if raw else {}
    except RecursionError:
        raise ModelProtocolError(f"server message nested too deeply: {_show(raw)}", reason="too_deep") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an over-long number
        raise ModelProtocolError(f"server message is not JSON ({exc}): {_show(raw)}", reason="not_json") from None
    if not isinstance(data, dict):
        raise ModelProtocolError(f"server message is not a JSON object: {_show(raw)}", reason="not_object")
    return data


def _show(raw: bytes | str) -> str:
    return repr(raw[:120]) + (f" ... ({len(raw)} bytes)" if len(raw) > 120 else "")


def reader_for(session: Any, epoch: int = 0) -> SessionReader | None:
    """A direct reader for this SDK session, or None where the SDK's own receive must be used."""
    socket = getattr(session, "_ws", None)
    client = getattr(session, "_api_client", None)
    if _live_converters is None or socket is None or client is None or getattr(client, "vertexai", True):
        return None
    if not hasattr(_live_converters, "_LiveServerMessage_from_mldev") or not hasattr(socket, "recv"):
        return None
    return SessionReader(socket, epoch)
