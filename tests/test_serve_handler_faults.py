"""What a handler does cannot take the server down, with `phonebridge serve` as a real subprocess driven by
the shipped emulators (LiveEmulator through the SDK's own environment, TwilioCaller on the real routes).

Before: a handler raising SystemExit or KeyboardInterrupt exited the whole process (exit 3, 4 or 130, every
call dropped), and SIGTERM after calls whose sync handlers hung waited for those threads at interpreter exit
(concurrent.futures joins its executors' threads), for as long as they hung.
"""

from __future__ import annotations

import asyncio
import math
import signal
from pathlib import Path

import aiohttp
import pytest

from phonebridge.agent.handler_pool import HANDLER_THREADS_PER_CALL
from phonebridge.testing.live_emulator import LiveEmulator
from phonebridge.testing.live_script import (
    CallTools,
    Say,
    Script,
    ToolCallSpec,
    WaitForCaller,
    WaitForText,
)
from tests.test_drain import Server, caller_for, start_server

pytestmark = pytest.mark.timeout(90)

FAULTY = ("sync_exit", "async_exit", "sync_interrupt", "async_interrupt")
FAULTY_AGENT = '''
from phonebridge import Agent
agent = Agent(instructions="You are a test agent.", greeting="Greet the caller.")

@agent.tool
def sync_exit() -> str:
    """Exits the process, it thinks."""
    raise SystemExit(3)

@agent.tool
async def async_exit() -> str:
    """Exits the process, it thinks."""
    raise SystemExit(4)

@agent.tool
def sync_interrupt() -> str:
    """Interrupts."""
    raise KeyboardInterrupt

@agent.tool
async def async_interrupt() -> str:
    """Interrupts."""
    raise KeyboardInterrupt
'''
HUNG_AGENT = '''
import asyncio
import threading
from phonebridge import Agent
agent = Agent(instructions="You are a test agent.", greeting="Greet the caller.")

@agent.tool(timeout_s=0.3)
def stuck_lookup(n: int) -> str:
    """A driver that never returns."""
    threading.Event().wait()
    return "never"

@agent.tool(timeout_s=0.3)
async def stuck_async_lookup(n: int) -> str:
    """An async handler whose thread never returns: it is cancelled, its thread hangs on."""
    await asyncio.to_thread(threading.Event().wait)
    return "never"
'''
SORRY = "Sorry, I could not do that."


def internal_error(name: str) -> dict[str, str]:
    return {"error": f"The {name} tool failed with an internal error. Tell the caller it could not be done right "
                     "now and offer another way to help."}


async def stop(server: Server) -> None:
    if server.proc.returncode is None:
        server.proc.kill()
        await server.proc.wait()


async def test_handlers_raising_system_exit_or_keyboard_interrupt_are_answered_and_the_server_keeps_serving(
    tmp_path: Path,
) -> None:
    script = Script([WaitForText(), *(CallTools((ToolCallSpec(name, {}, id=name),)) for name in FAULTY),
                     Say(SORRY, seconds=0.4), WaitForCaller()])
    async with LiveEmulator(script, speed=math.inf) as emu:
        server = await start_server(tmp_path, emu, drain_timeout_s=600, agent_source=FAULTY_AGENT)
        callers = [caller_for(server), caller_for(server)]
        try:
            for n, caller in enumerate(callers):  # a second call after the first proves the server still serves
                await caller.dial()
                await emu.wait_for(lambda n=n: len(emu.conversations) == n + 1, timeout=20)
                conv = emu.conversations[n]
                await emu.wait_for(lambda conv=conv: len(conv.tool_responses) == len(FAULTY), timeout=20)
                assert [(r.id, r.response) for r in conv.tool_responses] == [(t, internal_error(t)) for t in FAULTY]
                # The call went on: the model's next words reached the caller.
                await caller.wait_heard(0.35, timeout=20)
                assert caller.up and server.proc.returncode is None
            async with aiohttp.ClientSession() as session, session.get(server.url + "/healthz") as r:
                assert r.status == 200 and (await r.json())["active_calls"] == 2
            for caller in callers:
                await caller.hangup()
            server.proc.send_signal(signal.SIGTERM)
            assert await server.exit_code(timeout=20) == 0  # it read the whole log
            # Each fault was logged with the call's identity and the handler's traceback.
            for caller in callers:
                raised = [rec for rec in server.records if rec.get("call_sid") == caller.call_sid
                          and " raised " in rec["msg"]]
                assert sorted(rec["msg"].split()[1] for rec in raised) == sorted(FAULTY)
                assert all(rec["level"] == "error" and "Traceback" in rec["exc"] for rec in raised)
        finally:
            for caller in callers:
                await caller.close()
            await stop(server)


async def test_sigterm_after_calls_whose_sync_handlers_hang_forever_exits_at_once(tmp_path: Path) -> None:
    hung = 2 * HANDLER_THREADS_PER_CALL  # the call's share of threads hangs; the rest queue and time out
    specs = (*(ToolCallSpec("stuck_lookup", {"n": i}, id=f"s-{i}") for i in range(hung)),
             *(ToolCallSpec("stuck_async_lookup", {"n": i}, id=f"a-{i}") for i in range(2)))
    script = Script([WaitForText(), CallTools(specs), Say(SORRY, seconds=0.4), WaitForCaller()])
    async with LiveEmulator(script, speed=math.inf) as emu:
        server = await start_server(tmp_path, emu, drain_timeout_s=600, agent_source=HUNG_AGENT)
        caller = caller_for(server)
        try:
            await caller.dial()
            await emu.wait_for(lambda: bool(emu.conversations), timeout=20)
            conv = emu.conversations[0]
            await emu.wait_for(lambda: len(conv.tool_responses) == len(specs), timeout=20)
            assert {r.response["error"] for r in conv.tool_responses} == {
                f"The {name} tool did not answer within 0.3 seconds and was stopped."
                for name in ("stuck_lookup", "stuck_async_lookup")}
            await caller.wait_heard(0.35, timeout=20)
            await caller.hangup()
            await server.wait_log("call ended")
            loop = asyncio.get_running_loop()
            server.proc.send_signal(signal.SIGTERM)
            signalled = loop.time()
            assert await server.exit_code(timeout=30) == 0
            # The threads still hang, and the process did not wait for them.
            assert loop.time() - signalled < 6.0  # the default executor's bounded wait (2 s) included
            assert any(f"{HANDLER_THREADS_PER_CALL} sync handlers still running at shutdown" in line
                       for line in server.lines)
            assert any("2 default-executor jobs still running at shutdown" in line for line in server.lines)
        finally:
            await caller.close()
            await stop(server)
