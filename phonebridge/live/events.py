"""Sans-I/O: the Live service's messages as our own small events.

On gemini-3.1 one LiveServerMessage can carry audio, transcripts and turn signals at once, so every field of
every message becomes an event, in the order the call must act on them: `interrupted` first (audio riding
with it belongs to the cut turn), then audio and transcripts, then the end-of-generation and end-of-turn
signals, then session housekeeping.

The events the call reacts to with a measured reaction or an epoch rule (Interrupted, ToolCalls, ToolCancel)
carry `received_at` (time.monotonic() when their message came off the socket) and `epoch` (the link's
connection epoch that delivered them), given to `translate` by the link. Neither takes part in equality.
AudioOut and OutputText, the hot path's, carry neither: their time is the callback's.
Function calls arrive as our own phonebridge.call.tool_types.ToolCall, never the SDK's FunctionCall.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from google.genai import types

from phonebridge.call.tool_types import ToolCall


@dataclass(frozen=True, slots=True)
class AudioOut:
    pcm24k: bytes


@dataclass(frozen=True, slots=True)
class OutputText:
    text: str


@dataclass(frozen=True, slots=True)
class InputText:
    text: str
    finished: bool


@dataclass(frozen=True, slots=True)
class Interrupted:
    received_at: float = field(default=0.0, compare=False)
    epoch: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class GenerationComplete:
    pass


@dataclass(frozen=True, slots=True)
class TurnComplete:
    pass


@dataclass(frozen=True, slots=True)
class ToolCalls:
    calls: tuple[ToolCall, ...]
    received_at: float = field(default=0.0, compare=False)
    epoch: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class ToolCancel:
    ids: tuple[str, ...]
    received_at: float = field(default=0.0, compare=False)
    epoch: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class GoAway:
    time_left_s: float


@dataclass(frozen=True, slots=True)
class ResumptionUpdate:
    handle: str | None
    resumable: bool


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    response_tokens: int
    total_tokens: int


ModelEvent = (
    AudioOut | OutputText | InputText | Interrupted | GenerationComplete | TurnComplete | ToolCalls | ToolCancel
    | GoAway | ResumptionUpdate | Usage
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")


def parse_duration(value: str | None, default: float = 10.0) -> float:
    """Seconds in a protobuf-JSON duration ("10s", "0.5s"); `default` when absent or unreadable."""
    if not value:
        return default
    match = _DURATION.match(value)
    if match is None:
        return default
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number / 1000 if unit == "ms" else number * 60 if unit == "m" else number


def translate(message: types.LiveServerMessage, received_at: float = 0.0, epoch: int = 0) -> list[ModelEvent]:
    """Every field of one server message as events, in the order to act on them, stamped (see above)."""
    events: list[ModelEvent] = []
    content = message.server_content
    if content is not None:
        _content_events(content, events, received_at, epoch)
    if message.tool_call is not None and message.tool_call.function_calls:
        calls = tuple(tool_call(c) for c in message.tool_call.function_calls)
        events.append(ToolCalls(calls, received_at, epoch))
    if message.tool_call_cancellation is not None and message.tool_call_cancellation.ids:
        events.append(ToolCancel(tuple(message.tool_call_cancellation.ids), received_at, epoch))
    if message.session_resumption_update is not None:
        update = message.session_resumption_update
        events.append(ResumptionUpdate(update.new_handle or None, bool(update.resumable and update.new_handle)))
    if message.usage_metadata is not None:
        usage = message.usage_metadata
        events.append(
            Usage(usage.prompt_token_count or 0, usage.response_token_count or 0, usage.total_token_count or 0)
        )
    if message.go_away is not None:
        events.append(GoAway(parse_duration(message.go_away.time_left)))
    return events


def tool_call(call: types.FunctionCall) -> ToolCall:
    """The SDK's function call as ours (a missing name is "", as the dispatcher always read it)."""
    return ToolCall(call.id, call.name or "", dict(call.args or {}))


def _content_events(content: types.LiveServerContent, events: list[ModelEvent], received_at: float, epoch: int) -> None:
    if content.interrupted:
        events.append(Interrupted(received_at, epoch))
    if content.model_turn is not None and content.model_turn.parts:
        for part in content.model_turn.parts:
            blob = part.inline_data
            if blob is not None and blob.data and (blob.mime_type or "audio/pcm").startswith("audio/pcm"):
                events.append(AudioOut(blob.data))
    if content.input_transcription is not None and content.input_transcription.text:
        events.append(InputText(content.input_transcription.text, bool(content.input_transcription.finished)))
    if content.output_transcription is not None and content.output_transcription.text:
        events.append(OutputText(content.output_transcription.text))
    if content.generation_complete:
        events.append(GenerationComplete())
    if content.turn_complete:
        events.append(TurnComplete())
