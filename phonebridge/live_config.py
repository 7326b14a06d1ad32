"""The Live session's configuration: what gemini-3.1-flash-live-preview accepts, and nothing it refuses
(proactivity, affective dialog, thinking budgets)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.genai import types

from phonebridge.agent import Agent


def build_config(
    agent: Agent,
    declarations: Sequence[types.FunctionDeclaration] = (),
    *,
    resume_handle: str | None = None,
    seed_history: bool = False,
) -> types.LiveConnectConfig:
    """The session configuration for `agent`, correct for gemini-3.1-flash-live-preview."""
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
        system_instruction=types.Content(parts=[types.Part(text=agent.instructions)]),
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
