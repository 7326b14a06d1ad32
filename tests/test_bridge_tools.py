"""Business handlers through the real bridge: LiveEmulator (real google-genai client over TLS) -> bridge ->
ToolDispatcher -> handler -> tool_response, with the TwilioCaller listening and the TwilioRestEmulator taking
hang-ups and transfers. No sleeps: every wait is on an observed condition (an event a handler sets, a record
the emulator keeps, what the caller heard)."""

from __future__ import annotations

import asyncio
import base64
import datetime
import threading
from typing import Any, Literal

import pytest

from phonebridge.agent import Agent
from phonebridge.context import CallContext
from phonebridge.errors import ToolError
from phonebridge.hold import HoldSound
from phonebridge.testing.harness import BridgeHarness
from phonebridge.testing.live_script import (
    CallTools, CancelTools, Say, Script, ToolCallSpec, WaitForCaller, Hear, WaitForText,
)
from phonebridge.testing.live_state import Conversation
from phonebridge.testing.speech import synth_speech
from tests.bridge_helpers import agent_audio_as_heard

GREETING = "Hello, thanks for calling."
INTERNAL = ("failed with an internal error. Tell the caller it could not be done right now and offer another "
            "way to help.")


def make_agent(**kwargs: Any) -> Agent:
    return Agent(instructions="You are a test agent.", greeting="Greet the caller.", **kwargs)


def calls(*specs: ToolCallSpec, timeout_s: float = 10.0) -> CallTools:
    return CallTools(tuple(specs), timeout_s=timeout_s)


async def conversation(h: BridgeHarness) -> Conversation:
    await h.emulator.wait_for(lambda: bool(h.emulator.conversations))
    return h.emulator.conversations[0]


def responses(conv: Conversation) -> list[tuple[str, str, dict[str, Any]]]:
    return [(r.id, r.name, r.response) for r in conv.tool_responses]


def tool_response_messages(conv: Conversation) -> list[list[str]]:
    """The ids of each tool_response message the emulator received, message by message."""
    return [[item["id"] for item in r.message["toolResponse"]["functionResponses"]]
            for conn in conv.connections for r in conn.received if r.kind == "tool_response"]


def media_payloads(caller: Any) -> list[bytes]:
    return [base64.b64decode(e.message["media"]["payload"]) for e in caller.events if e.message["event"] == "media"]


def tool_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("tool:")]


# --- the dispatch contract -------------------------------------------------------------------------------


async def test_arguments_arrive_typed_and_every_failure_mode_gets_one_answer(caplog: pytest.LogCaptureFixture):
    agent = make_agent()
    seen: dict[str, Any] = {}
    loop_thread = threading.get_ident()
    slow_cancelled = asyncio.Event()

    @agent.tool
    def book(call: CallContext, party: int, day: datetime.date, seating: Literal["inside", "patio"],
             tags: list[str], deposit: float = 0.0) -> dict[str, Any]:
        """Book a table."""
        seen.update(party=party, day=day, seating=seating, tags=tags, deposit=deposit, call_sid=call.call_sid,
                    off_loop=threading.get_ident() != loop_thread)
        return {"reference": "B-1", "day": day, "party": party}

    @agent.tool
    async def explode() -> str:
        """Always fails."""
        raise RuntimeError("database on fire")

    @agent.tool
    async def refuse(order_id: str) -> str:
        """Refuses with a message for the model."""
        raise ToolError(f"No order {order_id} was found.")

    @agent.tool(timeout_s=0.2)
    async def slow() -> str:
        """Never answers in time."""
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            slow_cancelled.set()
            raise
        return "unreachable"

    script = Script([
        WaitForText(),
        calls(ToolCallSpec("book", {"party": 4, "day": "2026-05-01", "seating": "patio", "tags": ["birthday"],
                                    "deposit": 12.5}, id="ok-1")),
        calls(ToolCallSpec("explode", {}, id="boom-1")),
        calls(ToolCallSpec("refuse", {"order_id": "Z-9"}, id="refuse-1")),
        calls(ToolCallSpec("slow", {}, id="slow-1")),
        calls(ToolCallSpec("no_such_tool", {"x": 1}, id="unknown-1")),
        calls(ToolCallSpec("book", {"party": "many", "day": "2026-05-01", "seating": "roof", "tags": []},
                           id="bad-1")),
        Say("Done."),
    ])
    async with BridgeHarness(agent, script) as h:
        async with h.caller():
            conv = await conversation(h)
            await h.emulator.wait_for(lambda: conv.turns_spoken == 1)
        await h.wait_idle()
    assert seen == {"party": 4, "day": datetime.date(2026, 5, 1), "seating": "patio", "tags": ["birthday"],
                    "deposit": 12.5, "call_sid": h._callers[0].call_sid, "off_loop": True}
    got = responses(conv)
    assert [(i, n) for i, n, _ in got] == [("ok-1", "book"), ("boom-1", "explode"), ("refuse-1", "refuse"),
                                          ("slow-1", "slow"), ("unknown-1", "no_such_tool"), ("bad-1", "book")]
    assert got[0][2] == {"reference": "B-1", "day": "2026-05-01", "party": 4}
    assert got[1][2] == {"error": f"The explode tool {INTERNAL}"}
    assert got[2][2] == {"error": "No order Z-9 was found."}
    assert got[3][2] == {"error": "The slow tool did not answer within 0.2 seconds and was stopped."}
    assert got[4][2] == {"error": "There is no tool named 'no_such_tool'. The available tools are: book, explode, "
                                  "refuse, slow, end_call."}
    bad = got[5][2]["error"]
    assert bad.startswith("Invalid arguments for book: ") and "'party'" in bad and "'seating'" in bad
    assert bad.endswith("Call it again with corrected ones.")
    assert slow_cancelled.is_set()
    # The traceback of the crash goes to the log, never to the model.
    assert "database on fire" in caplog.text and "Traceback" in caplog.text
    assert "database on fire" not in str(got)
    assert tool_response_messages(conv) == [["ok-1"], ["boom-1"], ["refuse-1"], ["slow-1"], ["unknown-1"], ["bad-1"]]
    h.emulator.check()


async def test_calls_in_one_tool_call_run_concurrently_and_are_answered_in_one_message():
    agent = make_agent(tool_timeout_s=2.0)  # run one after the other, they would time out instead
    started = {"a": asyncio.Event(), "b": asyncio.Event()}

    @agent.tool
    async def lookup(key: Literal["a", "b"]) -> dict[str, str]:
        """Looks something up."""
        started[key].set()
        # Each waits for the other to have started: this returns only if both run at the same time.
        other = "b" if key == "a" else "a"
        await started[other].wait()
        return {"key": key}

    script = Script([
        WaitForText(),
        calls(ToolCallSpec("lookup", {"key": "a"}, id="c-a"), ToolCallSpec("lookup", {"key": "b"}, id="c-b"),
              timeout_s=5.0),
        Say("Both found."),
    ])
    async with BridgeHarness(agent, script) as h:
        async with h.caller():
            conv = await conversation(h)
            await h.emulator.wait_for(lambda: conv.turns_spoken == 1)
        await h.wait_idle()
    assert responses(conv) == [("c-a", "lookup", {"key": "a"}), ("c-b", "lookup", {"key": "b"})]
    assert tool_response_messages(conv) == [["c-a", "c-b"]]
    h.emulator.check()


async def test_cancellation_cancels_the_handler_and_sends_nothing_for_its_id():
    agent = make_agent()
    entered, cancelled = asyncio.Event(), asyncio.Event()

    @agent.tool
    async def wait_forever() -> str:
        """Never returns."""
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "unreachable"

    # The emulator waits (wall time) for an answer before it may cancel: the call stays open 0.3 s.
    script = Script([
        WaitForText(),
        calls(ToolCallSpec("wait_forever", {}, id="fc-c"), timeout_s=0.3),
        CancelTools(("fc-c",)),
        Say("Never mind."),
    ])
    async with BridgeHarness(agent, script) as h:
        async with h.caller():
            conv = await conversation(h)
            await asyncio.wait_for(entered.wait(), 10)
            await asyncio.wait_for(cancelled.wait(), 10)
            await h.emulator.wait_for(lambda: conv.turns_spoken == 1)
        await h.wait_idle()
    # The socket is closed: anything the bridge had sent for fc-c would be recorded by now.
    assert tool_response_messages(conv) == []
    assert conv.tool_responses == []
    assert conv.failures == ["script#0: no tool_response for fc-c (wait_forever) within 0.3 s"]
    assert tool_tasks() == []
