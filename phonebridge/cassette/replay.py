"""What a replay compares: a recorded call's conduct against the current code's, and which cassettes can be replayed.

No I/O here. The driver that runs the bridge on a cassette is phonebridge.testing.replay (it imports this
module); the `phonebridge replay CASSETTE...` command is replay_cli.py (it imports both).

What is compared:
- the tool calls the bridge ran: id, name, arguments, status and response, in order;
- the tool responses it sent to the model, in order;
- its Twilio outbound stream: media bytes concatenated per run (between marks and clears), mark names, clears.
Times, stream sids, sequence numbers and caller audio are not compared: they differ on every run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from phonebridge.cassette.record import Cassette, CassetteError, decode_bytes

MAX_DIVERGENCES = 5  # a readable diff shows the first few; the rest usually follow from them
DTMF_DIGITS = frozenset("0123456789*#ABCD")


@dataclass(frozen=True)
class Conduct:
    """What the bridge did on one call, in the terms a replay compares."""

    tools: tuple[dict[str, Any], ...]
    tool_responses: tuple[dict[str, Any], ...]
    twilio_out: tuple[tuple[str, Any], ...]  # ("media", bytes) per run, ("mark", name), ("clear", None), ...


@dataclass
class ReplayResult:
    """One cassette's replay: `ok` only when nothing diverged and the replay ran to the end."""

    path: str
    divergences: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what went wrong driving the replay (stalls, timeouts)
    expected: Conduct | None = None
    actual: Conduct | None = None

    @property
    def ok(self) -> bool:
        return not self.divergences

    @property
    def diff(self) -> str:
        if self.ok:
            return f"{self.path}: replay matches the recording"
        lines = [f"{self.path}: the replay diverges from the recording"]
        lines += [f"  {line}" for line in self.divergences]
        lines += [f"  note: {line}" for line in self.notes]
        return "\n".join(lines)


def conduct_of(cassette: Cassette) -> Conduct:
    tools = tuple(
        {k: r.data.get(k) for k in ("id", "name", "args", "status", "response")} for r in cassette.of_kind("tool")
    )
    responses = tuple(
        item
        for r in cassette.of_kind("model_out") if isinstance(r.data, dict) and "tool_response" in r.data
        for item in (r.data["tool_response"].get("function_responses") or [])
    )
    return Conduct(tools, responses, twilio_runs(r.data for r in cassette.of_kind("twilio_out")))


def twilio_runs(frames: Any) -> tuple[tuple[str, Any], ...]:
    """Outbound Twilio frames -> media merged into runs, then marks, clears and anything else, in order."""
    out: list[tuple[str, Any]] = []
    run = bytearray()
    for frame in frames:
        event = frame.get("event") if isinstance(frame, dict) else None
        if event == "media":
            run += decode_bytes(str(frame.get("media", {}).get("payload", "")))
            continue
        if run:
            out.append(("media", bytes(run)))
            run = bytearray()
        if event == "mark":
            out.append(("mark", frame.get("mark", {}).get("name")))
        elif event == "clear":
            out.append(("clear", None))
        else:
            out.append((str(event or "raw"), json.dumps(frame, sort_keys=True)))
    if run:
        out.append(("media", bytes(run)))
    return tuple(out)


def compare(expected: Conduct, actual: Conduct, limit: int = MAX_DIVERGENCES) -> list[str]:
    """Readable lines for the first `limit` divergences of each part; empty when everything matches."""
    found = _compare_list("tool call", expected.tools, actual.tools, _show_tool, limit)
    found += _compare_list("tool response", expected.tool_responses, actual.tool_responses, _show_json, limit)
    found += _compare_list("twilio out", expected.twilio_out, actual.twilio_out, _show_twilio, limit)
    return found


def _compare_list(what: str, expected: Any, actual: Any, show: Any, limit: int) -> list[str]:
    found: list[str] = []
    for index, (want, got) in enumerate(zip(expected, actual), start=1):
        if want != got:
            found.append(_explain(what, index, want, got, show))
            if len(found) >= limit:
                return found + [f"{what}s: more divergences not shown"]
    if len(expected) != len(actual):
        more, label = (expected, "missing") if len(expected) > len(actual) else (actual, "extra")
        first = min(len(expected), len(actual))
        shown = ", ".join(show(item) for item in more[first : first + 3])
        found.append(
            f"{what}s: recorded {len(expected)}, replayed {len(actual)}; {label} from #{first + 1}: {shown}"
            + (" ..." if len(more) - first > 3 else "")
        )
    return found


def _explain(what: str, index: int, want: Any, got: Any, show: Any) -> str:
    if what == "twilio out" and want[0] == got[0] == "media":
        return f"{what} #{index}: {_media_difference(want[1], got[1])}"
    return f"{what} #{index}:\n      recorded: {show(want)}\n      replayed: {show(got)}"


def _media_difference(want: bytes, got: bytes) -> str:
    at = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
    return (
        f"media run differs: recorded {len(want)} bytes ({len(want) / 8000:.3f} s), replayed {len(got)} bytes "
        f"({len(got) / 8000:.3f} s); first difference at byte {at} ({at / 8000:.3f} s into the run)"
    )


def _show_tool(tool: dict[str, Any]) -> str:
    args = json.dumps(tool.get("args"), sort_keys=True)
    return f"{tool.get('id')} {tool.get('name')}({args}) -> {tool.get('status')} {_show_json(tool.get('response'))}"


def _show_json(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 200 else text[:197] + "..."


def _show_twilio(item: tuple[str, Any]) -> str:
    kind, value = item
    if kind == "media":
        return f"media {len(value)} bytes ({len(value) / 8000:.3f} s)"
    if kind == "mark":
        return f"mark {value!r}"
    return kind if value is None else f"{kind} {value}"


# -- what a replay reads, checked before anything runs ---------------------------------------------------------


def check_replayable(cassette: Cassette) -> None:
    """Raise CassetteError naming the line of the first record a replay could not use (load_cassette already
    checked the file's shape): every field the comparison, the driver and the rebuilt agent read has its type,
    bytes are base64, and recorded server messages and tool declarations validate as the SDK's types."""
    header_sid = cassette.header.get("call_sid")
    if header_sid is not None and (not isinstance(header_sid, str) or len(header_sid) > 64):
        raise CassetteError(f"{cassette.path}: line 1: 'call_sid' must be a string of at most 64 characters")
    for record in cassette.records:
        try:
            _CHECKS.get(record.kind, _no_check)(record.data)
        except (CassetteError, TypeError, ValueError) as exc:  # ValueError: pydantic's ValidationError
            problem = " ".join(str(exc).split())[:200]
            raise CassetteError(f"{cassette.path}: line {record.line}: {record.kind} record: {problem}") from None


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"'{where}' must be an object, got {type(value).__name__}")
    return value


def _base64(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"'{where}' must be a base64 string, got {type(value).__name__}")
    decode_bytes(value)


def _check_twilio(data: dict[str, Any]) -> None:
    event = data.get("event")
    if event == "media":
        _base64(_object(data.get("media"), "media").get("payload", ""), "media.payload")
    elif event == "mark":
        _object(data.get("mark"), "mark")
    elif event == "dtmf" and _object(data.get("dtmf"), "dtmf").get("digit") not in DTMF_DIGITS:
        raise ValueError(f"'dtmf.digit' must be one of 0-9 * # A-D, got {data['dtmf'].get('digit')!r:.20}")


def _check_model_out(data: dict[str, Any]) -> None:
    body = _object(data.get("realtime_input") or {}, "realtime_input")
    if "audio" in body:
        _base64(_object(body["audio"], "realtime_input.audio").get("data", ""), "realtime_input.audio.data")
    if "tool_response" in data:
        responses = _object(data["tool_response"], "tool_response").get("function_responses") or []
        if not isinstance(responses, list):
            raise TypeError("'tool_response.function_responses' must be an array")


def _check_model_in(data: dict[str, Any]) -> None:
    from google.genai import types

    types.LiveServerMessage.model_validate(data)


def _check_tool(data: dict[str, Any]) -> None:
    if not isinstance(data.get("name"), str) or not isinstance(data.get("status"), (str, type(None))):
        raise TypeError("'name' must be a string and 'status' a string")
    if not isinstance(data.get("response"), (dict, type(None))) or not isinstance(data.get("args"), (dict, type(None))):
        raise TypeError("'args' and 'response' must be objects")


def _check_model_connect(data: dict[str, Any]) -> None:
    from google.genai import types

    config = _object(data.get("config", {}), "config")
    for part in _array(_object(config.get("system_instruction") or {}, "config.system_instruction").get("parts")):
        _object(part, "config.system_instruction.parts[]")
    for tool in _array(config.get("tools")):
        for declared in _array(_object(tool, "config.tools[]").get("function_declarations")):
            types.FunctionDeclaration.model_validate(declared)


def _array(value: Any) -> list[Any]:
    if not isinstance(value, (list, type(None))):
        raise TypeError(f"expected an array, got {type(value).__name__}")
    return value or []


def _no_check(data: dict[str, Any]) -> None:
    return None


_CHECKS = {"twilio_in": _check_twilio, "twilio_out": _check_twilio, "model_out": _check_model_out,
           "model_in": _check_model_in, "tool": _check_tool, "model_connect": _check_model_connect}


_MOVED = {"add_parser": "phonebridge.cassette.replay_cli", "run_replay": "phonebridge.cassette.replay_cli"}


def __getattr__(name: str) -> Any:
    # The command moved out so that this module and the driver it serves no longer import each other.
    if name in _MOVED:
        raise AttributeError(f"phonebridge.cassette.replay.{name} moved: import it from {_MOVED[name]}")
    raise AttributeError(f"module 'phonebridge.cassette.replay' has no attribute {name!r}")
