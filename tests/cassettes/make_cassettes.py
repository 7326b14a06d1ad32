"""Make the committed cassettes: three short calls through the real bridge, recorded with --record-dir.

    python tests/cassettes/make_cassettes.py          # rewrites tests/cassettes/*.jsonl

Each call runs the whole bridge on loopback (BridgeHarness: LiveEmulator + TwilioCaller + Twilio REST
emulator). Utterances are short so each cassette stays small. `AGENT` is the agent they were recorded with;
tests/test_replay.py replays them against it.
"""

from __future__ import annotations

import asyncio
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from phonebridge.agent import Agent
from phonebridge.testing.harness import BridgeHarness
from phonebridge.testing.live_emulator import LiveEmulator
from phonebridge.testing.live_script import (
    CallTools, Hear, Say, Script, ToolCallSpec, WaitForCaller, WaitForText,
)
from phonebridge.testing.twilio_caller import TwilioCaller

HELLO = "Hello, how can I help?"
SAY_S = 0.5  # every agent line lasts this long (short: the model's 24 kHz audio is most of a cassette)
HERE = Path(__file__).resolve().parent
CALL_SIDS = {
    "question_answer": "CA" + "a1" * 16,
    "tool_call": "CA" + "b2" * 16,
    "barge_in": "CA" + "c3" * 16,
}


def make_agent() -> Agent:
    """The agent every committed cassette was recorded with (its one tool is what tool_call exercises)."""
    agent = Agent(instructions="You are the replay test agent.", greeting="Greet the caller.")

    @agent.tool
    async def lookup_order(order_id: str) -> dict[str, str]:
        """Look up an order by its id."""
        return {"order_id": order_id, "status": "out for delivery"}

    return agent


def say(text: str, seconds: float = SAY_S) -> Say:
    return Say(text, seconds=seconds)


def question_answer() -> Script:
    return Script([WaitForText(), say(HELLO), WaitForCaller(), Hear("Closing time?"), say("We close at ten.")],
                  name="question_answer")


def tool_call() -> Script:
    return Script([
        WaitForText(), say(HELLO), WaitForCaller(), Hear("Order A7?"),
        CallTools((ToolCallSpec("lookup_order", {"order_id": "A7"}),)), say("It is out for delivery."),
        WaitForCaller(), Hear("Bye now."), CallTools((ToolCallSpec("end_call", {}),)), say("Goodbye!"),
    ], name="tool_call")


def barge_in() -> Script:
    return Script([
        WaitForText(), say("Hello and welcome, let me tell you about all of our specials tonight.", 2.0),
        WaitForCaller(), Hear("Stop please."), say("Sure."),
    ], name="barge_in")


def _played_all(caller: TwilioCaller) -> bool:
    """The bridge's last frame is a mark and it came back: everything sent before it has played."""
    last = caller.events[-1].message if caller.events else {}
    return last.get("event") == "mark" and last["mark"]["name"] in caller.marks_echoed


async def _hear(caller: TwilioCaller, emulator: LiveEmulator, turns: int) -> None:
    """Wait until the model has finished its `turns`-th turn and the caller has heard all of it."""
    def turns_done() -> int:
        return sum(r.kind == "turn_complete" for c in emulator.connections for r in c.sent)

    await emulator.wait_for(lambda: turns_done() >= turns, timeout=15)
    await caller.wait_for(_played_all, timeout=15)


async def _speak(caller: TwilioCaller, text: str) -> None:
    await caller.say(text)
    if math.isinf(caller.speed):
        await caller.silence(0.4)  # unpaced callers send no frames on their own: end the utterance


async def _question_answer(caller: TwilioCaller, emulator: LiveEmulator) -> None:
    await _hear(caller, emulator, 1)
    await _speak(caller, "Closing time?")
    await _hear(caller, emulator, 2)
    await caller.hangup()


async def _tool_call(caller: TwilioCaller, emulator: LiveEmulator) -> None:
    await _hear(caller, emulator, 1)
    await _speak(caller, "Order A7?")
    await _hear(caller, emulator, 2)
    await _speak(caller, "Bye now.")
    await caller.closed(timeout=15)  # the agent hangs up after its goodbye


async def _barge_in(caller: TwilioCaller, emulator: LiveEmulator) -> None:
    await caller.wait_heard(1.0, timeout=15)
    await caller.say("Stop please.")
    await caller.wait_for(lambda c: len(c.clears) == 1, timeout=15)
    await _hear(caller, emulator, 2)
    await caller.hangup()


SCENARIOS: dict[str, tuple[Any, Any, float]] = {
    "question_answer": (question_answer, _question_answer, math.inf),
    "tool_call": (tool_call, _tool_call, math.inf),
    "barge_in": (barge_in, _barge_in, 10.0),  # a barge-in needs time: the caller talks over the agent
}


async def record(name: str, out_dir: Path) -> Path:
    """Record scenario `name` into out_dir/<name>.jsonl."""
    script, caller_side, speed = SCENARIOS[name]
    with tempfile.TemporaryDirectory() as tmp:
        async with BridgeHarness(make_agent(), script(), speed=speed, record_dir=tmp) as harness:
            async with harness.caller(call_sid=CALL_SIDS[name]) as caller:
                await caller_side(caller, harness.emulator)
            await harness.wait_idle()
            harness.emulator.check()
        (recorded,) = Path(tmp).glob("*.jsonl")
        target = out_dir / f"{name}.jsonl"
        target.write_bytes(recorded.read_bytes())
    return target


async def main(names: list[str]) -> None:
    for name in names or list(SCENARIOS):
        path = await record(name, HERE)
        print(f"{path.relative_to(HERE.parent.parent)}: {path.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
