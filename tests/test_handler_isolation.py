"""One call's hung sync handlers do not starve another call's sync tool (through the real bridge: the
LiveEmulator with the real google-genai client, the app's own handler pool). Before each call had a bounded
share, a call whose model issued 33 calls of a hung handler held all 32 threads of the shared executor,
and the other call's quick sync lookup waited in the queue until it timed out."""

from __future__ import annotations

import asyncio
import threading

from phonebridge.agent.definition import Agent
from phonebridge.agent.handler_pool import HANDLER_THREADS_PER_CALL
from phonebridge.testing.harness import BridgeHarness
from phonebridge.testing.live_script import (
    CallTools,
    Say,
    Script,
    ToolCallSpec,
    WaitForText,
)

HUNG_CALLS = 33


async def test_a_call_with_33_hung_sync_handlers_does_not_delay_another_calls_sync_tool():
    agent = Agent(instructions="You are a test agent.", greeting="Greet the caller.")
    loop = asyncio.get_running_loop()
    release, share_full = threading.Event(), asyncio.Event()
    entered = [0]
    lock = threading.Lock()

    @agent.tool(timeout_s=60.0)
    def stuck_lookup(n: int) -> str:
        """A blocking driver that hangs."""
        with lock:
            entered[0] += 1
            if entered[0] == HANDLER_THREADS_PER_CALL:
                loop.call_soon_threadsafe(share_full.set)
        release.wait(30)  # bounded, so that a broken test cannot hang the suite
        return "late"

    @agent.tool(timeout_s=3.0)
    def opening_hours() -> str:
        """Quick."""
        return "nine to five"

    hung = CallTools(tuple(ToolCallSpec("stuck_lookup", {"n": i}, id=f"s-{i}") for i in range(HUNG_CALLS)),
                     timeout_s=30.0)
    scripts = iter([
        Script([WaitForText(), hung], name="hung"),
        Script([WaitForText(), CallTools((ToolCallSpec("opening_hours", {}, id="h-1"),), timeout_s=10.0),
                Say("We open at nine.")], name="other"),
    ])
    try:
        async with BridgeHarness(agent, lambda setup: next(scripts)) as h:
            blocked = h.caller()
            await blocked.dial()
            await asyncio.wait_for(share_full.wait(), 10)
            async with h.caller():
                await h.emulator.wait_for(lambda: len(h.emulator.conversations) == 2)
                other = h.emulator.conversations[1]
                asked = loop.time()
                await h.emulator.wait_for(lambda: bool(other.tool_responses), timeout=10)
                answered = loop.time() - asked
                assert [(r.id, r.response) for r in other.tool_responses] == [("h-1", {"result": "nine to five"})]
                assert answered < 3.0  # answered, not timed out behind the hung call's threads
                await h.emulator.wait_for(lambda: other.turns_spoken == 1)
            # The hung call never held more than its share.
            assert entered[0] == HANDLER_THREADS_PER_CALL
            await blocked.hangup()
            await h.wait_idle(timeout=5)
    finally:
        release.set()
