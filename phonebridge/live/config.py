"""The Live session's configuration: what gemini-3.1-flash-live-preview accepts, and nothing it refuses
(proactivity, affective dialog, thinking budgets), and how a fresh session is given the conversation so far.

How a connection opens, and what a refusal (close 1007/1008 before the connection delivered anything of
the conversation) says about it:
- RESUMED with a handle: the handle is refused (expired, unknown). Next: a fresh session with the history.
- SEEDED, history sent as `clientContent` with `historyConfig.initialHistoryInClientContent`: on 3.1 this is
  reported to close with 1007 even so (yagudaev/voiceclaw#248 then #252, which folds the history into
  `systemInstruction`; livekit/agents#5262: `send_client_content` gives 1007 where realtime text works).
  Next: the history FOLDED into the system instruction, for the rest of the call.
- FOLDED: next, a PLAIN session (no history): the conversation goes on without its past rather than end.
- PLAIN: nothing to change; an ordinary failure, counted against the reconnection attempts.
A 1007/1008 after the connection delivered conversation events is not about how it opened (a refused
message mid-call): the handle is kept and the next connection resumes.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

from google.genai import errors as genai_errors
from google.genai import types

from phonebridge.agent.definition import Agent


def build_config(
    agent: Agent,
    declarations: Sequence[types.FunctionDeclaration] = (),
    *,
    resume_handle: str | None = None,
    seed_history: bool = False,
    folded_history: Sequence[types.Content] = (),
) -> types.LiveConnectConfig:
    """The session configuration for `agent`, correct for gemini-3.1-flash-live-preview. `seed_history`
    asks to take history as clientContent; `folded_history` is written into the system instruction."""
    detection = types.AutomaticActivityDetection(
        disabled=False,
        start_of_speech_sensitivity=_sensitivity(types.StartSensitivity, "START", agent.start_of_speech_sensitivity),
        end_of_speech_sensitivity=_sensitivity(types.EndSensitivity, "END", agent.end_of_speech_sensitivity),
        prefix_padding_ms=agent.prefix_padding_ms,
        silence_duration_ms=agent.silence_duration_ms,
    )
    return types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO],
        speech_config=types.SpeechConfig(
            voice_config=types.VoiceConfig(prebuilt_voice_config=types.PrebuiltVoiceConfig(voice_name=agent.voice)),
            language_code=agent.language_code,
        ),
        thinking_config=types.ThinkingConfig(thinking_level=types.ThinkingLevel(agent.thinking_level.upper())),
        system_instruction=types.Content(parts=[types.Part(text=fold_history(agent.instructions, folded_history))]),
        tools=[types.Tool(function_declarations=list(declarations))] if declarations else None,
        input_audio_transcription=types.AudioTranscriptionConfig(),
        output_audio_transcription=types.AudioTranscriptionConfig(),
        session_resumption=types.SessionResumptionConfig(handle=resume_handle),
        # Audio sessions die at 15 minutes without compression; a sliding window keeps long calls alive.
        context_window_compression=types.ContextWindowCompressionConfig(sliding_window=types.SlidingWindow()),
        realtime_input_config=types.RealtimeInputConfig(automatic_activity_detection=detection),
        history_config=types.HistoryConfig(initial_history_in_client_content=True) if seed_history else None,
    )


def _sensitivity(enum: Any, prefix: str, value: str | None) -> Any:
    return None if value is None else enum(f"{prefix}_SENSITIVITY_{value.upper()}")


class Opening(enum.Enum):
    RESUMED = "resumed"
    SEEDED = "seeded"
    FOLDED = "folded"
    PLAIN = "plain"


class HistoryMode(enum.Enum):
    """How a fresh session is given the conversation so far; it only ever moves down, once per refusal."""

    CLIENT_CONTENT = "client_content"
    INSTRUCTION = "instruction"
    NONE = "none"


def add_to_history(history: list[types.Content], role: str, text: str) -> None:
    """One transcript line onto `history`, a turn of the same role extended rather than repeated."""
    if text:
        if history and history[-1].role == role:
            parts = history[-1].parts or []
            parts.append(types.Part(text=text))
        else:
            history.append(types.Content(role=role, parts=[types.Part(text=text)]))


def opening(handle: str | None, has_history: bool, mode: HistoryMode) -> Opening:
    if handle:
        return Opening.RESUMED
    if not has_history or mode is HistoryMode.NONE:
        return Opening.PLAIN
    return Opening.SEEDED if mode is HistoryMode.CLIENT_CONTENT else Opening.FOLDED


# Close codes that refuse what a connection opened with, when they come before any of the conversation.
REFUSED = (1007, 1008)


def after_refusal(opened: Opening, mode: HistoryMode, code: int | None, heard: bool) -> tuple[bool, HistoryMode] | None:
    """A connection opened as `opened` closed with `code` after delivering (`heard`) conversation events or not:
    (drop the handle?, the history mode from now on), or None when that close says nothing about the opening.
    The mode only moves down, so the ladder is finite: at most three refusals move it."""
    if code not in REFUSED or heard or opened is Opening.PLAIN:
        return None
    if opened is Opening.SEEDED:
        return True, HistoryMode.INSTRUCTION
    if opened is Opening.FOLDED:
        return True, HistoryMode.NONE
    return True, mode  # a refused handle: a fresh session, given the history as the mode says


# The folded history is cut to its most recent part: a system instruction is not the place for a long call.
FOLD_MAX_CHARS = 16_000
_FOLD_HEADER = (
    "\n\nThis call was reconnected. The conversation so far, oldest first (continue it; do not greet the"
    " caller again):\n"
)
_SPEAKER = {"user": "Caller", "model": "You"}


def fold_history(instructions: str, history: Sequence[types.Content]) -> str:
    """`instructions` followed by the conversation so far as plain lines (the most recent FOLD_MAX_CHARS)."""
    lines = [
        f"{_SPEAKER.get(content.role or '', content.role or 'unknown')}: {part.text}"
        for content in history for part in content.parts or [] if part.text
    ]
    if not lines:
        return instructions
    kept: list[str] = []
    size = 0
    for line in reversed(lines):
        size += len(line) + 1
        if size > FOLD_MAX_CHARS:
            break
        kept.append(line)
    return instructions + _FOLD_HEADER + "\n".join(reversed(kept))


def cause_of(exc: BaseException) -> str:
    """What ended a connection, as the reconnect counters and logs name it."""
    if isinstance(exc, genai_errors.APIError):
        return f"close_{exc.code}"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return type(exc).__name__
