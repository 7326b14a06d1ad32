"""`phonebridge demo`: a whole phone call on this machine, offline.

The real bridge runs on loopback; a LiveEmulator plays the model with a scripted pizzeria conversation
(greeting, a question, a tool call, a barge-in, goodbye), and a TwilioCaller plays the caller with
speech-like audio. The conversation prints as it happens; the call's stereo WAV, its cassette and a summary
are written to --out. With --live and GEMINI_API_KEY set, the same caller talks to the real Gemini.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from phonebridge.agent import Agent, load_agent
from phonebridge.errors import ConfigError

DEFAULT_AGENT = "phonebridge.examples.pizzeria"
CALLER_LINES = (
    "Hi! Which vegetarian pizzas do you have?",
    "Great. And where is my order, A-1042?",
    "Sorry to cut in, that's all I needed. Thanks, bye!",
)


def add_parser(sub: Any) -> None:
    demo = sub.add_parser("demo", help="a whole call on this machine: simulated caller, emulated (or real) Gemini")
    demo.add_argument("--agent", default=DEFAULT_AGENT, help="agent file or module (default: the pizzeria example)")
    demo.add_argument("--caller-audio", default=None, help="a WAV file to play as the caller's first words")
    demo.add_argument("--out", default="phonebridge-demo", help="where call.wav, the cassette and summary go")
    demo.add_argument("--speed", type=float, default=3.0, help="how much faster than real time (1 = real time)")
    demo.add_argument("--live", action="store_true", help="talk to the real Gemini (needs GEMINI_API_KEY)")
    demo.add_argument("--verbose", action="store_true", help="also show the bridge's own log lines")
    demo.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    agent = load_agent(args.agent)
    if not args.verbose:
        # The demo prints the conversation itself; the bridge's log lines would bury it.
        logging.getLogger("phonebridge").setLevel(logging.WARNING)
    if args.live and not (os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")):
        raise ConfigError("--live needs GEMINI_API_KEY (or GOOGLE_API_KEY) in the environment")
    speed = 1.0 if args.live else args.speed
    result = asyncio.run(demo_call(agent, Path(args.out), speed=speed, caller_audio=args.caller_audio,
                                   live=args.live, out=sys.stdout))
    return 0 if result["ok"] else 1


async def demo_call(
    agent: Agent, out_dir: Path, *, speed: float = 3.0, caller_audio: str | None = None, live: bool = False,
    out: TextIO = sys.stdout,
) -> dict[str, Any]:
    """Run the demo call; returns the summary it also writes to `out_dir/summary.json`."""
    from phonebridge.testing.demo_script import demo_script
    from phonebridge.testing.harness import BridgeHarness
    from phonebridge.testing.wav import read_wav

    out_dir.mkdir(parents=True, exist_ok=True)
    printer = _Printer(out)
    harness = BridgeHarness(agent, demo_script(), speed=speed, observers=[printer], record_dir=out_dir,
                            live=live)
    started = time.monotonic()
    async with harness:
        caller = harness.caller()
        first: bytes | str = CALLER_LINES[0]
        if caller_audio:
            first = read_wav(caller_audio, 8000)
        async with caller:
            printer.line(f"call {caller.call_sid} from {caller.from_number} to {caller.to_number}")
            await _caller_side(caller, first, speed)
            await caller.closed(timeout=60)
        await harness.wait_idle()
        caller.write_wav(out_dir / "call.wav")
        summary = _summary(harness, caller, time.monotonic() - started, printer)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    viewer = _write_viewer(out_dir, caller.call_sid, printer)
    printer.line(f"wrote {out_dir / 'call.wav'}, {viewer or 'the cassette'} and {out_dir / 'summary.json'}")
    return summary


def _write_viewer(out_dir: Path, call_sid: str, printer: _Printer) -> str | None:
    """call.html beside call.wav: the call's timeline, from the cassette the bridge just wrote."""
    from phonebridge.errors import PhonebridgeError
    from phonebridge.inspect_cli import write_call_html

    cassettes = sorted(out_dir.glob(f"{call_sid}*.jsonl"), key=lambda p: p.stat().st_mtime)
    if not cassettes:
        return None
    try:
        return f"{write_call_html(cassettes[-1], out_dir / 'call.html')} (the call's timeline: open it in a browser)"
    except PhonebridgeError as exc:  # the call itself went fine: say why there is no viewer, and go on
        printer.line(f"no call.html: {exc}")
        return None


async def _caller_side(caller: Any, first: bytes | str, speed: float) -> None:
    timeout = 60.0 if math.isinf(speed) else 120.0 / speed + 30
    quiet_s = 0.0 if math.isinf(speed) else 0.8 / speed
    await _agent_turn(caller, quiet_s, timeout)  # the greeting
    await caller.say(first)
    await _agent_turn(caller, quiet_s, timeout)  # the answer, after a tool call
    await caller.say(CALLER_LINES[1])
    heard = caller.heard_seconds
    await caller.wait_heard(heard + 2.5, timeout)  # into the long answer ...
    await caller.say(CALLER_LINES[2])  # ... and the caller cuts in


async def _agent_turn(caller: Any, quiet_s: float, timeout: float) -> None:
    """Wait until the agent has spoken, stopped sending for `quiet_s` and all of it has played.

    Only what a caller can observe is used, so the same wait works against the real Gemini (--live).
    """
    heard = caller.heard_seconds
    await caller.wait_for(lambda c: c.heard_seconds > heard + 0.2, timeout)
    while True:
        seen = len(caller.events)
        try:
            await caller.wait_for(lambda c, seen=seen: len(c.events) > seen, max(quiet_s, 0.05))
        except TimeoutError:
            await caller.wait_for(lambda c: c.playback_idle, timeout)
            return


class _Printer:
    """Prints the call as it happens, from the bridge's observer events."""

    def __init__(self, out: TextIO) -> None:
        self._out, self._t0 = out, time.monotonic()
        self.tools: list[dict[str, Any]] = []

    def line(self, text: str) -> None:
        print(f"{time.monotonic() - self._t0:6.2f}s  {text}", file=self._out, flush=True)

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
            stats = data["stats"]
            self.line(f"call ended: {stats.outcome}")


def _summary(harness: Any, caller: Any, elapsed: float, printer: _Printer) -> dict[str, Any]:
    stats = harness.runtime.finished[-1] if harness.runtime.finished else None
    conversation_ok = stats is not None and stats.outcome == "agent_hung_up" and stats.barge_ins >= 1
    summary = {
        "ok": conversation_ok and not harness.emulator.failures,
        "outcome": stats.outcome if stats else "no call",
        "wall_seconds": round(elapsed, 2),
        "caller_heard_seconds": round(caller.heard_seconds, 2),
        "turns": stats.turns if stats else 0,
        "barge_ins": stats.barge_ins if stats else 0,
        "first_audio_ms": round(stats.first_audio_s * 1000, 1) if stats and stats.first_audio_s else None,
        "tool_calls": [{k: t[k] for k in ("name", "status", "latency_s")} for t in printer.tools],
        "transcript": [{"at": round(a, 2), "who": w, "text": t} for a, w, t in (stats.transcript if stats else [])],
        "emulator_failures": list(harness.emulator.failures),
    }
    printer.line(
        f"summary: {summary['outcome']}, {summary['turns']} agent turns, {summary['barge_ins']} barge-in, "
        f"{len(summary['tool_calls'])} tool calls, first audio {summary['first_audio_ms']} ms, "
        f"{summary['wall_seconds']} s"
    )
    return summary
