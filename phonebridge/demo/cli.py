"""`phonebridge demo`: a whole phone call on this machine, offline.

The real bridge runs on loopback; a LiveEmulator plays the model and a TwilioCaller plays the caller. The
pizzeria example (the default) gets a scripted pizzeria conversation (greeting, a question, a tool call, a
barge-in, goodbye); any other agent gets a conversation derived from its own tools, as `phonebridge dev`
makes one. The caller speaks in words through espeak-ng where it is installed, else in the built-in babble.
The conversation prints as it happens, timed as in call.wav; the call's stereo WAV, its cassette and a
summary are written to --out. With --live and GEMINI_API_KEY set, the same caller talks to the real Gemini.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from phonebridge.agent.definition import Agent, load_agent
from phonebridge.demo.report import Printer, summary
from phonebridge.errors import ConfigError

DEFAULT_AGENT = "phonebridge.examples.pizzeria"
CALLER_LINES = (
    "Hi! Which vegetarian pizzas do you have?",
    "Great. And where is my order, A-1042?",
    "Sorry to cut in, that's all I needed. Thanks, bye!",
)


def add_parser(sub: Any) -> None:
    demo = sub.add_parser("demo", help="a whole call on this machine: simulated caller, emulated (or real) Gemini")
    demo.add_argument("--agent", default=DEFAULT_AGENT,
                      help="agent file or module; other than the pizzeria, the call exercises its own tools "
                      "(default: %(default)s)")
    demo.add_argument("--caller-audio", default=None, help="a WAV file to play as the caller's first words")
    demo.add_argument("--out", default="phonebridge-demo", help="where call.wav, the cassette and summary go (default: %(default)s)")
    demo.add_argument("--speed", type=float, default=3.0,
                      help="how much faster than real time (1 = real time; --live is always 1); printed times "
                      "are call.wav's (default: %(default)s)")
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
    for problem in result["problems"]:
        print(f"phonebridge demo: {problem}", file=sys.stderr)
    return 0 if result["ok"] else 1


@dataclass(frozen=True)
class Plan:
    """Both sides of one demo conversation: the emulator's script and what the caller says."""

    name: str
    script: Any  # a Script, or a factory of one from the emulator connection's setup
    lines: tuple[str, ...]
    barge_in: bool  # the caller cuts into the agent's answer before its last line
    agent_ends: bool  # the script ends with end_call: wait for the agent to hang up


def plan_for(agent: Agent) -> Plan:
    """The pizzeria script for an agent with the pizzeria's tools; otherwise one derived from its tools."""
    from phonebridge.testing import demo_script as ds
    from phonebridge.agent.tools import all_tools

    names = all_tools(agent).names
    if ds.fits_pizzeria(names):
        return Plan("pizzeria", ds.demo_script(), CALLER_LINES, barge_in=True, agent_ends=True)
    own = ds.own_tools([{"name": n} for n in names])
    greets, ends = agent.greeting is not None, agent.end_call

    def script(setup: dict[str, Any]) -> Any:
        from phonebridge.dev.script import declarations_of

        return ds.derived_demo_script(declarations_of(setup), greets=greets, ends_call=ends)

    lines = (*(ds.caller_line(d) for d in own), ds.GOODBYE_LINE)
    tools = ", ".join(str(d["name"]) for d in own) or "none of its own"
    return Plan(f"derived from the agent's tools ({tools})", script, lines, barge_in=False, agent_ends=ends)


async def demo_call(
    agent: Agent, out_dir: Path, *, speed: float = 3.0, caller_audio: str | None = None, live: bool = False,
    out: TextIO = sys.stdout, plan: Plan | None = None,
) -> dict[str, Any]:
    """Run the demo call; returns the summary it also writes to `out_dir/summary.json`.

    `plan` overrides the conversation chosen for the agent (a test plays the pizzeria script to another)."""
    from phonebridge.testing.harness import BridgeHarness
    from phonebridge.testing.speech import speech_engine

    out_dir.mkdir(parents=True, exist_ok=True)
    plan, voice, printer = plan or plan_for(agent), speech_engine(), Printer(out)
    printer.line(f"script: {'the real Gemini (--live)' if live else plan.name}")
    printer.line(f"caller voice: {_voice_note(voice)}")
    harness = BridgeHarness(agent, plan.script, speed=speed, observers=[printer], record_dir=out_dir, live=live)
    started = time.monotonic()
    async with harness:
        caller = harness.caller()
        said = await asyncio.to_thread(_utterances, plan, voice, caller_audio)  # before the clock starts
        async with caller:
            printer.clock = caller._now  # the caller's timeline: the clock call.wav is written on
            printer.line(f"call {caller.call_sid} from {caller.from_number} to {caller.to_number}")
            await _converse(caller, plan, said, speed, agent_ends=plan.agent_ends and not live)
        await harness.wait_idle()
        caller.write_wav(out_dir / "call.wav")
        result = summary(harness, caller, time.monotonic() - started, printer, wants_barge_in=plan.barge_in
                         and not live, script="live" if live else plan.name, voice=voice)
    (out_dir / "summary.json").write_text(json.dumps(result, indent=2, default=str))
    viewer = _write_viewer(out_dir, caller.call_sid, printer)
    printer.line(f"wrote {out_dir / 'call.wav'}, {viewer or 'the cassette'} and {out_dir / 'summary.json'}")
    return result


def _write_viewer(out_dir: Path, call_sid: str, printer: Printer) -> str | None:
    """call.html beside call.wav: the call's timeline, from the cassette the bridge just wrote."""
    from phonebridge.errors import PhonebridgeError
    from phonebridge.inspector.cli import write_call_html

    cassettes = sorted(out_dir.glob(f"{call_sid}*.jsonl"), key=lambda p: p.stat().st_mtime)
    if not cassettes:
        return None
    try:
        return f"{write_call_html(cassettes[-1], out_dir / 'call.html')} (the call's timeline: open it in a browser)"
    except PhonebridgeError as exc:  # the call itself went fine: say why there is no viewer, and go on
        printer.line(f"no call.html: {exc}")
        return None


def _utterances(plan: Plan, voice: str, caller_audio: str | None) -> list[bytes]:
    """The caller's lines as 8 kHz PCM (the first from --caller-audio when given)."""
    from phonebridge.testing.speech import speak
    from phonebridge.testing.wav import read_wav

    said = [speak(line, 8000, engine=voice) for line in plan.lines]
    if caller_audio and len(said) > 1:
        said[0] = read_wav(caller_audio, 8000)
    return said


def _voice_note(voice: str) -> str:
    if voice == "espeak-ng":
        return "espeak-ng (spoken words)"
    return "built-in babble (speech-like, not words: install espeak-ng for words)"


async def _converse(caller: Any, plan: Plan, said: list[bytes], speed: float, *, agent_ends: bool) -> None:
    """The caller's side, until the call is over; it stops early if the bridge ends the call first."""
    side = asyncio.create_task(_caller_side(caller, plan, said, speed))
    ended = asyncio.create_task(caller.closed(timeout=math.inf))
    await asyncio.wait({side, ended}, return_when=asyncio.FIRST_COMPLETED)
    if not side.done():  # e.g. the model is unreachable: the bridge ended the call, nothing more to say
        side.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await side  # a caller-side error (a timeout) surfaces here
    if agent_ends:
        await asyncio.wait_for(asyncio.shield(ended), 60)
    elif not ended.done():
        await caller.hangup()
    ended.cancel()


async def _caller_side(caller: Any, plan: Plan, said: list[bytes], speed: float) -> None:
    timeout = 60.0 if math.isinf(speed) else 120.0 / speed + 30
    # The agent's turn is over after 0.8 s of its silence (call time), but never less than 0.3 s of wall time:
    # at --speed 20 that would be 40 ms, and a busy machine stalls that long mid-turn, so the caller
    # would start talking over the agent (a barge-in nobody scripted). 0.15 s still let a suite running
    # beside three others (load average 3+) stall past it once in the greeting.
    quiet_s = 0.0 if math.isinf(speed) else max(0.8 / speed, 0.3)
    *lines, last = said
    await _agent_turn(caller, quiet_s, timeout)  # the greeting
    for index, line in enumerate(lines):
        await caller.say(line)
        if plan.barge_in and index == len(lines) - 1:
            await caller.wait_heard(caller.heard_seconds + 2.5, timeout)  # into the long answer ...
        else:
            await _agent_turn(caller, quiet_s, timeout)
    await caller.say(last)  # ... and the caller cuts in; or says goodbye
    if not plan.agent_ends:
        await _agent_turn(caller, quiet_s, timeout)


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
