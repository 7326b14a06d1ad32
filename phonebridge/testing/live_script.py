"""What the Live emulator's model does on a call: a script of small frozen steps.

A script is written in Python (`Script([WaitForText(), Say("Hello"), ...])`) or loaded from YAML/JSON as a
list of one-key mappings::

    - wait_for_text: {}
    - say: {text: "Thanks for calling Luigi's, how can I help?"}
    - wait_for_caller: {}
    - call_tools: {calls: [{name: lookup_order, args: {order_id: A-1}}]}

A step whose only argument is its text may be written short: `- say: Hello`. Unknown steps or keys are
refused with the step's position, so a typo never silently changes a test.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from phonebridge.errors import ConfigError


class ScriptError(ConfigError, ValueError):
    """A script file or list is malformed; the message names the step and the key."""


@dataclass(frozen=True)
class WaitForCaller:
    """Wait until the caller has spoken and stopped: at least `min_speech_ms` of 16 kHz input louder than
    `threshold_dbfs`, then `end_silence_ms` below it. Measured in audio time, so any pacing gives the same
    result. `timeout_s` is wall time; on timeout a failure is recorded and the script goes on."""

    min_speech_ms: float = 200.0
    end_silence_ms: float = 300.0
    threshold_dbfs: float = -40.0
    timeout_s: float = 30.0


@dataclass(frozen=True)
class WaitForText:
    """Wait for a realtime_input text (the greeting prompt, a DTMF notice), containing `contains` if set."""

    contains: str | None = None
    timeout_s: float = 30.0


@dataclass(frozen=True)
class Say:
    """Speak `text` as 24 kHz speech-like audio with its outputTranscription, then end the turn."""

    text: str
    seconds: float | None = None
    chunk_ms: float = 40.0
    pitch_hz: float = 140.0
    interruptible: bool = True
    usage: bool = True


@dataclass(frozen=True)
class Hear:
    """Report what the caller said: inputTranscription {text, finished: true} (LiveQuirks: word slices, unfinished)."""

    text: str


@dataclass(frozen=True)
class ToolCallSpec:
    """One function call; `id` defaults to "fc-N", numbered per conversation."""

    name: str
    args: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True)
class CallTools:
    """Send one toolCall with every call, then wait (wall time) for tool_response(s) covering every id."""

    calls: tuple[ToolCallSpec, ...]
    timeout_s: float = 10.0


@dataclass(frozen=True)
class CancelTools:
    """toolCallCancellation for these ids."""

    ids: tuple[str, ...]


@dataclass(frozen=True)
class GoAway:
    """goAway{timeLeft}; if the client is still connected when the time is up (scaled by the emulator's
    speed), close with `close_code`/`close_reason`. The code the real service uses then is unconfirmed."""

    time_left_s: float = 10.0
    close_after: bool = True
    close_code: int = 1011
    close_reason: str = "Deadline expired before operation could complete."


@dataclass(frozen=True)
class Drop:
    """Abort the transport: no close frame (the client sees 1006)."""


@dataclass(frozen=True)
class Close:
    """Close the WebSocket with this code and reason."""

    code: int = 1011
    reason: str = "Internal error encountered."


@dataclass(frozen=True)
class Usage:
    """A usage-only usageMetadata message (3.1 sends these, e.g. before the first modelTurn)."""

    prompt_tokens: int = 0
    response_tokens: int = 0


@dataclass(frozen=True)
class Pause:
    """Do nothing for `seconds` (scaled by the emulator's speed)."""

    seconds: float


Step = Union[WaitForCaller, WaitForText, Say, Hear, CallTools, CancelTools, GoAway, Drop, Close, Usage, Pause]

STEP_NAMES: dict[str, type[Any]] = {
    "wait_for_caller": WaitForCaller,
    "wait_for_text": WaitForText,
    "say": Say,
    "hear": Hear,
    "call_tools": CallTools,
    "cancel_tools": CancelTools,
    "go_away": GoAway,
    "drop": Drop,
    "close": Close,
    "usage": Usage,
    "pause": Pause,
}
# Steps that may be written as `- say: Hello`: the scalar fills this field.
_SHORT_FIELD = {Say: "text", Hear: "text", Pause: "seconds", WaitForText: "contains"}


@dataclass(frozen=True)
class Script:
    """A conversation. When the steps run out the script ends, or starts again at `loop_from` if set."""

    steps: Sequence[Step]
    name: str = "script"
    loop_from: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))
        if self.loop_from is not None and not 0 <= self.loop_from < len(self.steps):
            raise ScriptError(f"loop_from={self.loop_from} is outside the script's {len(self.steps)} steps")

    @classmethod
    def from_file(cls, path: str | Path) -> Script:
        """Load a YAML (.yaml/.yml) or JSON file: a list of steps, or {name, steps, loop_from}."""
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise ScriptError(f"{path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}") from exc
        return cls.from_data(data, name=path.stem)

    @classmethod
    def from_data(cls, data: Any, name: str = "script") -> Script:
        """Build from parsed YAML/JSON: a list of one-key mappings, or {name, steps, loop_from}."""
        loop_from = None
        if isinstance(data, Mapping):
            unknown = set(data) - {"name", "steps", "loop_from"}
            if unknown:
                raise ScriptError(f"unknown script keys {sorted(unknown)}; expected name, steps, loop_from")
            name, loop_from, data = data.get("name", name), data.get("loop_from"), data.get("steps", [])
        if not isinstance(data, list):
            raise ScriptError(f"a script is a list of steps, got {type(data).__name__}")
        return cls([_parse_step(i, item) for i, item in enumerate(data)], name=name, loop_from=loop_from)


def _parse_step(index: int, item: Any) -> Step:
    if not isinstance(item, Mapping) or len(item) != 1:
        raise ScriptError(f"step {index}: expected a mapping with one step name, got {item!r}")
    (key, value), = item.items()
    kind = STEP_NAMES.get(key)
    if kind is None:
        raise ScriptError(f"step {index}: unknown step {key!r}; expected one of {', '.join(STEP_NAMES)}")
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        if kind not in _SHORT_FIELD:
            raise ScriptError(f"step {index} ({key}): expected a mapping of arguments, got {value!r}")
        value = {_SHORT_FIELD[kind]: value}
    allowed = {f.name: f for f in dataclasses.fields(kind)}
    unknown = set(value) - set(allowed)
    if unknown:
        raise ScriptError(
            f"step {index} ({key}): unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
            f"expected {', '.join(allowed) or 'none'}"
        )
    kwargs = dict(value)
    if kind is CallTools:
        kwargs["calls"] = tuple(_parse_call(index, c) for c in kwargs.get("calls") or [])
        if not kwargs["calls"]:
            raise ScriptError(f"step {index} (call_tools): 'calls' must list at least one call")
    if kind is CancelTools:
        kwargs["ids"] = tuple(str(i) for i in kwargs.get("ids") or [])
    try:
        step: Step = kind(**kwargs)
    except TypeError as exc:
        raise ScriptError(f"step {index} ({key}): {exc}") from exc
    return step


def _parse_call(index: int, data: Any) -> ToolCallSpec:
    if not isinstance(data, Mapping) or "name" not in data:
        raise ScriptError(f"step {index} (call_tools): each call needs a name, got {data!r}")
    unknown = set(data) - {"name", "args", "id"}
    if unknown:
        raise ScriptError(f"step {index} (call_tools): unknown call key(s) {sorted(unknown)}; expected name, args, id")
    args = data.get("args") or {}
    if not isinstance(args, Mapping):
        raise ScriptError(f"step {index} (call_tools): args of {data['name']!r} must be a mapping")
    return ToolCallSpec(name=str(data["name"]), args=dict(args), id=data.get("id"))


def default_script(setup: Mapping[str, Any] | None = None) -> Script:
    """The conversation used when the emulator is given none: wait for the greeting prompt, greet, then
    answer every caller turn, forever."""
    return Script(
        [
            WaitForText(),
            Say("Hello, thanks for calling. How can I help you today?"),
            WaitForCaller(),
            Say("Sure, I can help with that."),
        ],
        name="default",
        loop_from=2,
    )
