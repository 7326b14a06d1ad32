"""What `phonebridge demo` prints and summarises: the call as it happens, on the call's own timeline.

Every printed time is seconds since the call's media stream started, on the caller's clock, which is the
clock call.wav is written on: an event printed at 12.34 s is 12.34 s into the WAV, whatever --speed ran.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TextIO

UNAVAILABLE_HINT = (
    "the model could not be reached, so the call ended (the caller would hear the fallback). Check "
    "GEMINI_API_KEY, GOOGLE_GEMINI_BASE_URL and the network; the lines above say what failed"
)
BAD_TOOL_STATUSES = frozenset({"unknown", "invalid"})


class Printer:
    """Prints the call as it happens, from the bridge's observer events."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self.clock: Callable[[], float] = lambda: 0.0  # set to the caller's timeline once the stream is up
        self.tools: list[dict[str, Any]] = []

    def line(self, text: str) -> None:
        print(f"{self.clock():6.2f}s  {text}", file=self._out, flush=True)

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "transcript":
            self.line(f"{'caller' if data['who'] == 'caller' else 'agent '}: {data['text']}")
        elif kind == "tool_call":
            args = ", ".join(f"{k}={v!r}" for k, v in data["args"].items())
            self.line(f"  -> tool {data['name']}({args})")
        elif kind == "tool_result":
            self.tools.append(data)
            self.line(f"  <- {data['name']} {data['status']} in {data['latency_s'] * 1000:.1f} ms: "
                      f"{json.dumps(data['response'], default=str)[:120]}")
        elif kind == "barge_in":
            self.line(f"  !! caller barged in: audio cleared after {data['heard_s']:.2f} s of the answer")
        elif kind == "call_end":
            self.line(f"call ended: {data['stats'].outcome}")


def problems(stats: Any, tools: list[dict[str, Any]], failures: list[str], *, wants_barge_in: bool) -> list[str]:
    """Why the demo call did not go as scripted (empty: it did)."""
    if stats is None:
        return ["no call reached the bridge"]
    found = [f"tool {t['name']!r} came back {t['status']}: {t['response'].get('error', '')}"
             for t in tools if t["status"] in BAD_TOOL_STATUSES]
    if stats.outcome == "model_unavailable":
        found.append(UNAVAILABLE_HINT)
    elif stats.outcome not in ("agent_hung_up", "caller_hung_up"):
        found.append(f"the call ended as {stats.outcome}, not with a goodbye")
    if wants_barge_in and stats.barge_ins < 1:
        found.append("the caller's barge-in was not detected")
    found += [f"emulator: {f}" for f in failures]
    return found


def summary(harness: Any, caller: Any, elapsed: float, printer: Printer, *, wants_barge_in: bool,
            script: str, voice: str) -> dict[str, Any]:
    stats = harness.runtime.finished[-1] if harness.runtime.finished else None
    failures = [] if harness.live else list(harness.emulator.failures)
    wrong = problems(stats, printer.tools, failures, wants_barge_in=wants_barge_in)
    result = {
        "ok": not wrong,
        "problems": wrong,
        "script": script,
        "caller_voice": voice,
        "outcome": stats.outcome if stats else "no call",
        "wall_seconds": round(elapsed, 2),
        "caller_heard_seconds": round(caller.heard_seconds, 2),
        "turns": stats.turns if stats else 0,
        "barge_ins": stats.barge_ins if stats else 0,
        "first_audio_ms": round(stats.first_audio_s * 1000, 1) if stats and stats.first_audio_s else None,
        "tool_calls": [{k: t[k] for k in ("name", "status", "latency_s")} for t in printer.tools],
        "transcript": [{"at": round(a, 2), "who": w, "text": t} for a, w, t in (stats.transcript if stats else [])],
        "emulator_failures": failures,
    }
    printer.line(
        f"summary: {result['outcome']}, {result['turns']} agent turns, {result['barge_ins']} barge-in, "
        f"{len(result['tool_calls'])} tool calls, first audio {result['first_audio_ms']} ms, "
        f"{result['wall_seconds']} s"
    )
    return result
