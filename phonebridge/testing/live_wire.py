"""The Live emulator's wire format, with no I/O: reading what clients send, refusing what the real service
refuses, and building what the real service sends.

Facts this module encodes (see docs PROTOCOLS.md section 2):
- Clients mix snake_case and camelCase keys (the SDK itself does), so keys are normalised to camelCase,
  except inside user data (function args, responses, JSON schemas), which is kept byte for byte.
- Client audio is base64 in the URL-safe alphabet, padding not guaranteed. Server messages use standard
  base64 and camelCase keys only, and never a top-level key the SDK does not know (it crashes on those).
- gemini-3.1-flash-live-preview closes with 1007 on settings it does not support.
- What the real service is reported to do beyond its docs (PROTOCOLS.md section 4) is opt-in: LiveQuirks.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

# Values under these keys are user data, not protocol structure: never rename their keys.
_OPAQUE = frozenset(
    {"args", "response", "parameters", "parametersJsonSchema", "responseSchema", "responseJsonSchema", "scheduling"}
)
TOP_LEVEL = {"setup", "realtimeInput", "clientContent", "toolResponse"}
CLOSE_REASON_MAX_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes, 2 of them the code


def camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def normalise(value: Any) -> Any:
    """Return `value` with every protocol key in camelCase (user data under _OPAQUE keys left alone)."""
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            name = camel(str(key))
            out[name] = item if name in _OPAQUE else normalise(item)
        return out
    if isinstance(value, list):
        return [normalise(item) for item in value]
    return value


def decode_client_bytes(data: str) -> bytes:
    """Decode a client `data` field: URL-safe alphabet, padding restored (standard alphabet also accepted)."""
    text = data.replace("+", "-").replace("/", "_")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def audio_rate(mime_type: str) -> int | None:
    """16000 for "audio/pcm;rate=16000"; None for any other mime type (the service refuses those)."""
    match = re.fullmatch(r"audio/pcm;\s*rate=(\d+)", mime_type.strip())
    return int(match.group(1)) if match else None


def close_reason(text: str) -> str:
    """`text` cut to what fits in a close frame."""
    data = text.encode()[:CLOSE_REASON_MAX_BYTES]
    return data.decode(errors="ignore")


@dataclass(frozen=True)
class LiveQuirks:
    """Behaviours the real gemini-3.1-flash-live-preview is reported to have beyond its docs. All off by default
    (the documented shape); a test runs the bridge through both shapes. `LiveQuirks.reported_31()` turns all on.

    - `unfinished_input_transcription`: the caller's words come as several `inputTranscription` slices, none
      with `finished` (google/adk-python#6045 marks the first text finished itself; googleapis/js-genai#1429).
    - `refuse_client_content`: a `clientContent` seed closes the session with 1007 even with `historyConfig`
      set (yagudaev/voiceclaw#248, #252; livekit/agents#5262).
    - `audio_extra_fields`: audio messages carry fields beside the audio (`waitingForInput: false`, a part's
      `thought: false`; the real extras are unconfirmed, these are fields the SDK knows), which the bridge's
      direct reader does not take: such messages go through the SDK's own parse.
    """

    unfinished_input_transcription: bool = False
    refuse_client_content: bool = False
    audio_extra_fields: bool = False

    @classmethod
    def reported_31(cls) -> LiveQuirks:
        return cls(unfinished_input_transcription=True, refuse_client_content=True, audio_extra_fields=True)


CLIENT_CONTENT_REFUSED = "Request contains an invalid argument."


# ---- strictness: what gemini-3.1-flash-live-preview refuses with 1007 ---------------------------------------


def setup_problem(setup: Mapping[str, Any]) -> str | None:
    """The 1007 reason the real service gives for this (normalised) setup, or None if it is accepted."""
    model = str(setup.get("model") or "")
    if not model:
        return "Invalid argument: setup.model is required."
    gen = setup.get("generationConfig") or {}
    thinking = gen.get("thinkingConfig") or {}
    if "thinkingBudget" in thinking:
        return f"Invalid argument: thinking_budget is not supported for {model}; use thinking_level."
    if "enableAffectiveDialog" in gen or "enableAffectiveDialog" in setup:
        return f"Invalid argument: affective dialog is not supported for {model}."
    if "proactivity" in setup or "proactivity" in gen:
        return f"Invalid argument: proactivity is not supported for {model}."
    return None


def realtime_input_problem(body: Mapping[str, Any], model: str) -> str | None:
    """The 1007 reason for this (normalised) realtime_input, or None if it is accepted."""
    if "mediaChunks" in body:
        return f"Invalid argument: realtime_input.media_chunks is not supported for {model}; use audio."
    if len(body) != 1:
        return f"Invalid argument: realtime_input must set exactly one field, got {len(body)}."
    audio = body.get("audio")
    if audio is not None:
        mime = str(audio.get("mimeType") or "")
        if audio_rate(mime) is None:
            return f"Invalid argument: unsupported audio mime type {mime!r}; expected audio/pcm;rate=N."
    return None


def client_content_problem(setup: Mapping[str, Any], realtime_seen: bool) -> str | None:
    """3.1 takes client_content only to seed history, before any realtime input, and only when asked to."""
    history = setup.get("historyConfig") or {}
    if history.get("initialHistoryInClientContent") is not True:
        return "Invalid argument: client_content requires history_config.initial_history_in_client_content."
    if realtime_seen:
        return "Invalid argument: client_content is only accepted as initial history, before realtime input."
    return None


def unknown_tool_response_problem(unknown_ids: list[str]) -> str:
    return f"Invalid argument: tool_response for unknown function call id(s) {', '.join(unknown_ids)}."


# ---- what the server sends ----------------------------------------------------------------------------------


def duration(seconds: float) -> str:
    """A protobuf JSON duration: "10s", "1.500s"."""
    return f"{int(seconds)}s" if float(seconds).is_integer() else f"{seconds:.3f}s"


def audio_content(pcm24k: bytes, transcript: str | None, extra_fields: bool = False) -> dict[str, Any]:
    """One 3.1-style event: a chunk of 24 kHz audio with its slice of outputTranscription (and, with
    `extra_fields`, the LiveQuirks extras that take it off the bridge's fast path)."""
    data = base64.b64encode(pcm24k).decode("ascii")
    part: dict[str, Any] = {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": data}}
    content: dict[str, Any] = {"modelTurn": {"parts": [part]}}
    if transcript:
        content["outputTranscription"] = {"text": transcript}
    if extra_fields:
        part["thought"] = False
        content["waitingForInput"] = False
    return {"serverContent": content}


def input_transcription(text: str, finished: bool = True) -> list[dict[str, Any]]:
    """What the caller said: one finished `inputTranscription`, or (the 3.1 quirk) a slice per word, unfinished."""
    if finished:
        return [{"serverContent": {"inputTranscription": {"text": text, "finished": True}}}]
    slices = split_words(text, max(1, len(text.split())))
    return [{"serverContent": {"inputTranscription": {"text": piece}}} for piece in slices if piece]


def usage_metadata(prompt_tokens: int, response_tokens: int) -> dict[str, Any]:
    return {
        "promptTokenCount": prompt_tokens,
        "responseTokenCount": response_tokens,
        "totalTokenCount": prompt_tokens + response_tokens,
        "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": response_tokens}],
    }


def resumption_update(handle: str | None, last_index: int | None) -> dict[str, Any]:
    """A handle means "resumable from here"; no handle is the `resumable: false` form."""
    update: dict[str, Any] = {"resumable": handle is not None}
    if handle is not None:
        update["newHandle"] = handle
    if last_index is not None:
        update["lastConsumedClientMessageIndex"] = str(last_index)  # int64 travels as a JSON string
    return {"sessionResumptionUpdate": update}


def split_words(text: str, parts: int) -> list[str]:
    """`text` spread over `parts` transcript slices; concatenated they give the words joined by spaces."""
    words = text.split()
    cuts = [-(-len(words) * i // parts) for i in range(parts + 1)]  # ceil: words ride on the earliest audio
    out = []
    for start, end in zip(cuts, cuts[1:]):
        chunk = " ".join(words[start:end])
        out.append(("" if start == 0 or not chunk else " ") + chunk)
    return out


# ---- the caller's voice, by energy ---------------------------------------------------------------------------


class EnergyDetector:
    """Speech and silence of 16-bit PCM in AUDIO time over 10 ms frames, so the result does not depend on how
    fast the audio arrives.

    `speech_ms` counts loud frames of the current utterance (short gaps between words included), `silence_ms`
    quiet frames since the last loud one, `loud_run_ms` the current run of consecutive loud frames and
    `longest_loud_run_ms` the longest so far (barge-in: one message may hold a whole burst and the quiet after).
    A loud burst shorter than `min_speech_ms` followed by `end_silence_ms` of quiet is noise: forgotten.
    """

    def __init__(self, threshold_dbfs: float = -40.0, min_speech_ms: float = 200.0, end_silence_ms: float = 300.0):
        self.min_speech_ms = min_speech_ms
        self.end_silence_ms = end_silence_ms
        self._limit = (10 ** (threshold_dbfs / 20) * 32768) ** 2  # mean square of a frame at the threshold
        self.speech_ms = 0.0
        self.silence_ms = 0.0
        self.loud_run_ms = 0.0
        self.longest_loud_run_ms = 0.0
        self.stream_ended = False  # activityEnd / audioStreamEnd: the client says the caller stopped
        self._rate = 16000
        self._carry = b""

    def feed(self, pcm16: bytes, rate: int = 16000) -> None:
        if rate != self._rate:
            self._rate, self._carry = rate, b""
        frame_bytes = 2 * max(1, rate // 100)
        data = self._carry + pcm16
        whole = len(data) - len(data) % frame_bytes
        self._carry = data[whole:]
        if not whole:
            return
        frames = np.frombuffer(data[:whole], dtype="<i2").astype(np.float64).reshape(-1, frame_bytes // 2)
        for loud in np.mean(frames**2, axis=1) > self._limit:
            self._frame(bool(loud))

    def _frame(self, loud: bool) -> None:
        if loud:
            self.speech_ms += 10.0
            self.silence_ms = 0.0
            self.stream_ended = False
            self.loud_run_ms += 10.0
            self.longest_loud_run_ms = max(self.longest_loud_run_ms, self.loud_run_ms)
            return
        self.silence_ms += 10.0
        self.loud_run_ms = 0.0
        if self.silence_ms >= self.end_silence_ms and self.speech_ms < self.min_speech_ms:
            self.speech_ms = 0.0

    def end_of_stream(self) -> None:
        """The client sent activityEnd or audioStreamEnd: no trailing silence will come, speech is over."""
        self.stream_ended = True

    @property
    def utterance_ended(self) -> bool:
        quiet = self.silence_ms >= self.end_silence_ms or self.stream_ended
        return self.speech_ms >= self.min_speech_ms and quiet

