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

from phonebridge.agent.definition import Agent
from phonebridge.agent.context import CallContext
from phonebridge.errors import ToolError
from phonebridge.call.hold import HoldSound
from phonebridge.testing.harness import BridgeHarness
from phonebridge.testing.live_script import (
    CallTools,
    CancelTools,
    Hear,
    Say,
    Script,
    ToolCallSpec,
    WaitForCaller,
    WaitForText,
)
from phonebridge.testing.live_state import Conversation
from phonebridge.testing.speech import synth_speech
from tests.bridge_helpers import agent_audio_as_heard, reactions

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

    stuck_thread = threading.Event()

    @agent.tool(timeout_s=0.2)
    def slow_sync() -> str:
        """A blocking driver that answers too late."""
        stuck_thread.wait(10)
        return "too late"

    script = Script([
        WaitForText(),
        calls(ToolCallSpec("book", {"party": 4, "day": "2026-05-01", "seating": "patio", "tags": ["birthday"],
                                    "deposit": 12.5}, id="ok-1")),
        calls(ToolCallSpec("explode", {}, id="boom-1")),
        calls(ToolCallSpec("refuse", {"order_id": "Z-9"}, id="refuse-1")),
        calls(ToolCallSpec("slow", {}, id="slow-1")),
        calls(ToolCallSpec("slow_sync", {}, id="slow-2")),
        calls(ToolCallSpec("no_such_tool", {"x": 1}, id="unknown-1")),
        calls(ToolCallSpec("book", {"party": "many", "day": "2026-05-01", "seating": "roof", "tags": []},
                           id="bad-1")),
        Say("Done."),
    ])
    try:
        async with BridgeHarness(agent, script) as h:
            async with h.caller():
                conv = await conversation(h)
                await h.emulator.wait_for(lambda: conv.turns_spoken == 1)
            await h.wait_idle()
    finally:
        stuck_thread.set()
    assert seen == {"party": 4, "day": datetime.date(2026, 5, 1), "seating": "patio", "tags": ["birthday"],
                    "deposit": 12.5, "call_sid": h._callers[0].call_sid, "off_loop": True}
    got = responses(conv)
    assert [(i, n) for i, n, _ in got] == [("ok-1", "book"), ("boom-1", "explode"), ("refuse-1", "refuse"),
                                          ("slow-1", "slow"), ("slow-2", "slow_sync"), ("unknown-1", "no_such_tool"),
                                          ("bad-1", "book")]
    assert got[0][2] == {"reference": "B-1", "day": "2026-05-01", "party": 4}
    assert got[1][2] == {"error": f"The explode tool {INTERNAL}"}
    assert got[2][2] == {"error": "No order Z-9 was found."}
    assert got[3][2] == {"error": "The slow tool did not answer within 0.2 seconds and was stopped."}
    # A sync handler cannot be killed: it is answered on time and its thread's late result is discarded.
    assert got[4][2] == {"error": "The slow_sync tool did not answer within 0.2 seconds and was stopped."}
    assert got[5][2] == {"error": "There is no tool named 'no_such_tool'. The available tools are: book, explode, "
                                  "refuse, slow, slow_sync, end_call."}
    bad = got[6][2]["error"]
    assert bad.startswith("Invalid arguments for book: ") and "'party'" in bad and "'seating'" in bad
    assert bad.endswith("Call it again with corrected ones.")
    assert slow_cancelled.is_set()
    # The traceback of the crash goes to the log, never to the model.
    assert "database on fire" in caplog.text and "Traceback" in caplog.text
    assert "database on fire" not in str(got)
    assert tool_response_messages(conv) == [["ok-1"], ["boom-1"], ["refuse-1"], ["slow-1"], ["slow-2"], ["unknown-1"],
                                             ["bad-1"]]
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
    # The bridge's own reaction times: two handlers started, one response for both.
    measured = reactions(h)
    assert measured["tool_start"][0] == 2 and measured["tool_reply"][0] == 1
    assert measured["tool_start"][1] / 2 < 0.5 and measured["tool_reply"][1] < 0.5  # sane, not a benchmark
    h.emulator.check()


def add_slow_lookup(agent: Agent) -> tuple[asyncio.Event, asyncio.Event]:
    """Register a `lookup` tool that answers "found it" once released; the events say it started and release it."""
    entered, release = asyncio.Event(), asyncio.Event()

    @agent.tool
    async def lookup() -> str:
        """Slow back office."""
        entered.set()
        await release.wait()
        return "found it"

    return entered, release


def add_never_returning_tool(agent: Agent, name: str) -> tuple[asyncio.Event, asyncio.Event]:
    """Register an async tool `name` that never returns; the events say it started and was cancelled."""
    entered, cancelled = asyncio.Event(), asyncio.Event()

    async def never_returns() -> str:
        """Never returns."""
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "unreachable"

    agent.tool(never_returns, name=name)
    return entered, cancelled


async def test_cancellation_cancels_the_handler_and_sends_nothing_for_its_id():
    agent = make_agent()
    entered, cancelled = add_never_returning_tool(agent, "wait_forever")

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


# --- no dead air, and the caller is still heard ------------------------------------------------------------


async def test_hold_sound_plays_while_a_handler_is_slow_and_stops_when_the_model_speaks():
    agent = make_agent(hold_sound_after_s=0.2)
    entered, release = add_slow_lookup(agent)

    answer = "Here is what I found for you."
    script = Script([WaitForText(), Say(GREETING), calls(ToolCallSpec("lookup", {}, id="fc-h")), Say(answer)])
    async with BridgeHarness(agent, script) as h:
        async with h.caller() as caller:
            conv = await conversation(h)
            await h.emulator.wait_for(lambda: conv.turns_spoken == 1)
            greeting = agent_audio_as_heard(conv.connections[0])
            await asyncio.wait_for(entered.wait(), 10)
            # Ten 20 ms frames of hold sound reach the caller while the handler is still blocked.
            await caller.wait_for(lambda c: len(c.heard()) >= len(greeting) + 10 * 160)
            assert not release.is_set() and conv.tool_responses == []
            release.set()
            await h.emulator.wait_for(lambda: conv.turns_spoken == 2)
            both = agent_audio_as_heard(conv.connections[0])
            await caller.wait_for(lambda c: c.heard().endswith(both[len(greeting):]))
        await h.wait_idle()
    heard = caller.heard()
    reply = both[len(greeting):]
    hold = heard[len(greeting):len(heard) - len(reply)]
    # Greeting, then only hold frames (bit-exact, from the loop's start), then the reply: no hold frame
    # inside or after the model's audio.
    assert heard.startswith(greeting) and heard.endswith(reply)
    frames = len(hold) // 160
    assert frames >= 10 and len(hold) == frames * 160
    sound = HoldSound()
    assert hold == b"".join(sound.next_frame() for _ in range(frames))
    assert responses(conv) == [("fc-h", "lookup", {"result": "found it"})]
    assert h.runtime.finished[-1].hold_plays == 1
    h.emulator.check()


async def test_caller_audio_keeps_reaching_the_model_while_a_handler_runs():
    agent = make_agent()
    entered, release = add_slow_lookup(agent)

    script = Script([WaitForText(), calls(ToolCallSpec("lookup", {}, id="fc-1")), Say("Found it.")])
    async with BridgeHarness(agent, script) as h:
        async with h.caller() as caller:
            conv = await conversation(h)
            await asyncio.wait_for(entered.wait(), 10)
            before = conv.audio_bytes_in
            speech = synth_speech("hello, are you still there?", 8000, seconds=0.5)  # 25 frames
            await caller.say(speech)
            # Every 20 ms frame of 8 kHz mu-law becomes 320 samples of 16 kHz PCM16 (640 bytes) at the model.
            await h.emulator.wait_for(lambda: conv.audio_bytes_in >= before + 25 * 640)
            assert conv.audio_bytes_in == before + 25 * 640
            assert not release.is_set() and conv.tool_responses == []
            release.set()
            await h.emulator.wait_for(lambda: conv.turns_spoken == 1)
        await h.wait_idle()
    assert responses(conv) == [("fc-1", "lookup", {"result": "found it"})]
    h.emulator.check()


# --- hanging up and transferring -------------------------------------------------------------------------


class _SnapshotOnAppend(list):  # type: ignore[type-arg]
    """Stands in for TwilioRestEmulator.requests: takes a snapshot the instant each request is recorded."""

    def __init__(self, snapshot: Any) -> None:
        super().__init__()
        self.snapshot, self.snapshots = snapshot, []

    def append(self, item: Any) -> None:
        self.snapshots.append(self.snapshot())
        super().append(item)


def call_path(caller: Any) -> str:
    from phonebridge.testing.harness import ACCOUNT_SID

    return f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{caller.call_sid}.json"


async def _ending_call(agent: Agent, tool: ToolCallSpec, last_words: str) -> tuple[Any, BridgeHarness, bytes, int]:
    """Greeting, the tool call, the last words; returns (caller, harness, all agent audio, bytes the caller
    had heard when the one REST request arrived)."""
    script = Script([WaitForText(), Say(GREETING), calls(tool), Say(last_words)])
    async with BridgeHarness(agent, script, speed=20) as h:
        caller = h.caller()
        h.rest.requests = _SnapshotOnAppend(lambda: len(caller.heard()))
        async with caller:
            conv = await conversation(h)
            await h.rest.wait_for(lambda r: len(r.requests) >= 1, timeout=20)
            await caller.closed(timeout=20)
            assert caller.closed_by_server
        await h.wait_idle()
    assert len(h.rest.requests) == 1
    audio = agent_audio_as_heard(conv.connections[0])
    assert conv.turns_spoken == 2
    return caller, h, audio, h.rest.requests.snapshots[0]


async def test_end_call_hangs_up_through_rest_only_after_the_goodbye_has_played():
    goodbye = "Thank you for calling, have a lovely evening. Goodbye!"
    caller, h, audio, heard_at_hang_up = await _ending_call(
        make_agent(), ToolCallSpec("end_call", {}, id="fc-end"), goodbye
    )
    request = h.rest.requests[0]
    assert (request.method, request.path, request.form) == ("POST", call_path(caller), {"Status": "completed"})
    # When Twilio was asked to hang up, the caller had heard every byte of the greeting and the goodbye.
    assert heard_at_hang_up == len(audio)
    assert caller.heard() == audio
    assert h.rest.calls[caller.call_sid]["status"] == "completed"
    conv = h.emulator.conversations[0]
    assert responses(conv) == [("fc-end", "end_call", {"result": "the call will end after your goodbye"})]
    assert h.runtime.finished[-1].outcome == "agent_hung_up"
    h.emulator.check()


async def test_transfer_call_updates_the_call_with_dial_twiml_after_the_last_words():
    agent = make_agent(transfer_to="+1 (555) 010-0199")
    caller, h, audio, heard_at_transfer = await _ending_call(
        agent, ToolCallSpec("transfer_call", {"reason": "wants the manager"}, id="fc-t"), "Transferring you now."
    )
    twiml = ('<?xml version="1.0" encoding="UTF-8"?>'
             "<Response><Dial><Number>+15550100199</Number></Dial></Response>")
    request = h.rest.requests[0]
    assert (request.method, request.path, request.form) == ("POST", call_path(caller), {"Twiml": twiml})
    assert heard_at_transfer == len(audio)
    assert h.rest.calls[caller.call_sid]["twiml"] == twiml
    conv = h.emulator.conversations[0]
    assert responses(conv) == [
        ("fc-t", "transfer_call", {"result": "the caller will be transferred after you finish speaking"})
    ]
    assert h.runtime.finished[-1].outcome == "transferred"
    h.emulator.check()


# --- handlers that never finish --------------------------------------------------------------------------


async def test_a_handler_that_never_returns_is_cancelled_when_the_caller_hangs_up():
    agent = make_agent(tool_timeout_s=60.0)
    entered, cancelled = add_never_returning_tool(agent, "stuck")

    script = Script([WaitForText(), calls(ToolCallSpec("stuck", {}, id="fc-s"), timeout_s=30.0)])
    async with BridgeHarness(agent, script) as h:
        caller = h.caller()
        await caller.dial()
        conv = await conversation(h)
        await asyncio.wait_for(entered.wait(), 10)
        assert [t.get_name() for t in tool_tasks()] == ["tool:stuck"]
        await caller.hangup()
        await h.wait_idle()
        # The call is over: its handler was cancelled and its task is gone, long before any timeout.
        assert cancelled.is_set()
        assert tool_tasks() == []
        assert conv.tool_responses == []
        assert h.runtime.finished[-1].outcome == "caller_hung_up"


async def test_a_blocked_sync_handler_neither_stalls_other_calls_nor_delays_shutdown():
    agent = make_agent(tool_timeout_s=60.0)
    loop = asyncio.get_running_loop()
    entered, release, returned = asyncio.Event(), threading.Event(), threading.Event()
    thread_names: list[str] = []

    @agent.tool
    def blocking_lookup() -> str:
        """A blocking driver that hangs."""
        thread_names.append(threading.current_thread().name)
        loop.call_soon_threadsafe(entered.set)
        release.wait(30)  # bounded, so that a broken test cannot hang the suite forever
        returned.set()
        return "late"

    scripts = iter([
        Script([WaitForText(), calls(ToolCallSpec("blocking_lookup", {}, id="fc-b"), timeout_s=30.0)], name="blocked"),
        Script([WaitForText(), Say(GREETING), WaitForCaller(), Hear("When do you close?"), Say("At ten tonight.")],
               name="other"),
    ])
    try:
        async with BridgeHarness(agent, lambda setup: next(scripts)) as h:
            blocked = h.caller()
            await blocked.dial()
            await asyncio.wait_for(entered.wait(), 10)
            # A second call runs a whole exchange while the handler's thread is stuck.
            async with h.caller() as other:
                await h.emulator.wait_for(lambda: len(h.emulator.conversations) == 2)
                conv = h.emulator.conversations[1]
                await h.emulator.wait_for(lambda: conv.turns_spoken == 1)
                await other.say(synth_speech("when do you close tonight?", 8000, seconds=0.8))
                await other.silence(0.5)
                await h.emulator.wait_for(lambda: conv.turns_spoken == 2)
                audio = agent_audio_as_heard(conv.connections[0])
                await other.wait_for(lambda c: c.heard() == audio)
            assert not returned.is_set()
            await blocked.hangup()
            await h.wait_idle(timeout=5)
            assert not returned.is_set()
        # The harness (app cleanup included) stopped without waiting for the stuck thread.
        assert not returned.is_set()
    finally:
        release.set()
    assert thread_names and thread_names[0].startswith("phonebridge-tool")
    assert h.emulator.conversations[0].tool_responses == []
    assert [s.outcome for s in h.runtime.finished] == ["caller_hung_up", "caller_hung_up"]


async def test_hold_sound_goes_on_through_a_second_slow_tool_call_that_follows_at_once(monkeypatch):
    # The bridge gives the model HOLD_AFTER_RESPONSE_MAX_S after a tool response to speak before it stops the
    # hold sound; shortened here so that the test is quick. The model chains a second slow call instead.
    monkeypatch.setattr("phonebridge.call.tool_turns.HOLD_AFTER_RESPONSE_MAX_S", 0.3)
    agent = make_agent(hold_sound_after_s=0.1)
    entered = {"first": asyncio.Event(), "second": asyncio.Event()}
    release = {"first": asyncio.Event(), "second": asyncio.Event()}

    @agent.tool
    async def step(which: Literal["first", "second"]) -> str:
        """One step of a two-step lookup."""
        entered[which].set()
        await release[which].wait()
        return which

    script = Script([WaitForText(), Say(GREETING), calls(ToolCallSpec("step", {"which": "first"}, id="s-1")),
                     calls(ToolCallSpec("step", {"which": "second"}, id="s-2")), Say("All done.")])
    async with BridgeHarness(agent, script) as h:
        async with h.caller() as caller:
            conv = await conversation(h)
            await h.emulator.wait_for(lambda: conv.turns_spoken == 1)
            greeting = len(agent_audio_as_heard(conv.connections[0]))
            await asyncio.wait_for(entered["first"].wait(), 10)
            await caller.wait_for(lambda c: len(c.heard()) >= greeting + 5 * 160)
            release["first"].set()
            await asyncio.wait_for(entered["second"].wait(), 10)
            at_second = len(caller.heard())
            try:
                # One more second of hold sound (50 frames) while the second handler is still busy.
                await caller.wait_for(lambda c: len(c.heard()) >= at_second + 50 * 160, timeout=2)
                held_on = True
            except TimeoutError:
                held_on = False
            hold_in_second = (len(caller.heard()) - at_second) / 8000
            release["second"].set()
            await h.emulator.wait_for(lambda: conv.turns_spoken == 2)
        await h.wait_idle()
    assert held_on, f"dead air: the hold sound stopped {hold_in_second:.2f} s into the second call"
    assert responses(conv) == [("s-1", "step", {"result": "first"}), ("s-2", "step", {"result": "second"})]
