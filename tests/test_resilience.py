"""Calls that never drop: goAway rotations, abrupt drops, refused resumption, tool calls across a switch,
and a 60-minute call in emulator time. Real bridge, real SDK, LiveEmulator fault injection; no sleeps."""

from __future__ import annotations

import asyncio
import math

from phonebridge.agent.definition import Agent
from phonebridge.testing.harness import BridgeHarness
from phonebridge.testing.live_emulator import LiveEmulator
from phonebridge.testing.live_script import (
    CallTools, GoAway, Hear, Pause, Say, Script, ToolCallSpec, WaitForCaller, WaitForText,
)
from phonebridge.testing.speech import synth_speech

SPEECH = synth_speech("I would like to know more please", 8000)


def make_agent(**kwargs) -> Agent:
    return Agent(instructions="You are a test agent.", greeting="Greet the caller.", **kwargs)


async def speak(caller) -> None:
    await caller.say(SPEECH)
    await caller.silence(0.5)  # end of the caller's turn for the model's VAD


class _NoConversation:
    turns_spoken = 0
    audio_bytes_in = 0


def connected(h: BridgeHarness, count: int) -> bool:
    """`count` connections whose setup has been handled (attached to a conversation, or refused)."""
    conns = h.emulator.connections
    return len(conns) >= count and (conns[count - 1].conversation is not None or conns[count - 1].close_code is not None)


def conv(h: BridgeHarness):
    """The first conversation (a stand-in with nothing done before it exists, for wait predicates)."""
    return h.emulator.conversations[0] if h.emulator.conversations else _NoConversation()


async def test_go_away_switches_to_a_resumed_connection_and_the_call_goes_on():
    script = Script([WaitForText(), Say("Hello."), WaitForCaller(), Hear("question"), Say("An answer.")])
    async with BridgeHarness(make_agent(), script) as h:
        async with h.caller(continuous=False) as caller:
            await h.emulator.wait_for(lambda: conv(h).turns_spoken == 1)
            first = h.emulator.connections[0]
            await first.go_away(10.0)
            await h.emulator.wait_for(lambda: connected(h, 2))
            second = h.emulator.connections[1]
            assert second.resumed_from is not None and second.resumed_from.startswith("emu-0-")
            await speak(caller)
            await h.emulator.wait_for(lambda: conv(h).turns_spoken == 2)
            # Every byte of caller audio the bridge produced reached the model, across both connections.
            sent = h.runtime.active and next(iter(h.runtime.active.values())).stats.frames_in
            assert conv(h).audio_bytes_in == sent * 640
        await h.wait_idle()
    stats = h.runtime.finished[-1]
    assert stats.outcome == "caller_hung_up"
    assert [who for _, who, _ in stats.transcript] == ["agent", "caller", "agent"]
    assert first.close_code is not None
    h.emulator.check()


async def test_an_abrupt_drop_reconnects_with_the_handle():
    script = Script([WaitForText(), Say("Hello."), WaitForCaller(), Hear("question"), Say("An answer.")])
    async with BridgeHarness(make_agent(), script) as h:
        async with h.caller(continuous=False) as caller:
            await h.emulator.wait_for(lambda: conv(h).turns_spoken == 1)
            await h.emulator.connections[0].drop()
            await h.emulator.wait_for(lambda: connected(h, 2))
            assert h.emulator.connections[1].resumed_from is not None
            await speak(caller)
            await h.emulator.wait_for(lambda: conv(h).turns_spoken == 2)
            assert not caller.closed_by_server
        await h.wait_idle()
    assert h.runtime.finished[-1].outcome == "caller_hung_up"
    assert len(h.emulator.conversations) == 1
    h.emulator.check()


async def test_refused_resumption_opens_a_fresh_session_seeded_with_the_conversation():
    scripts = iter([
        Script([WaitForText(), Say("Welcome to the shop."), WaitForCaller(), Hear("Do you sell bread?"),
                Say("Yes, we bake every morning.")], name="first"),
        Script([WaitForCaller(), Hear("Still there?"), Say("Yes, sorry, where were we?")], name="seeded"),
    ])
    emulator = LiveEmulator(lambda setup: next(scripts), speed=math.inf, resumption_handle_ttl_s=0.0)
    async with BridgeHarness(make_agent(), emulator=emulator) as h:
        async with h.caller(continuous=False) as caller:
            await h.emulator.wait_for(lambda: conv(h).turns_spoken == 1)
            await speak(caller)
            await h.emulator.wait_for(lambda: conv(h).turns_spoken == 2)
            await h.emulator.connections[0].drop()
            # The expired handle is refused (1007); the bridge then starts over with the transcript.
            await h.emulator.wait_for(lambda: len(h.emulator.conversations) == 2, timeout=15)
            seeded = h.emulator.conversations[1].connections[0]
            await h.emulator.wait_for(lambda: any(r.kind == "client_content" for r in seeded.received))
            assert seeded.setup["historyConfig"] == {"initialHistoryInClientContent": True}
            (history,) = [r.message for r in seeded.received if r.kind == "client_content"]
            turns = history["clientContent"]["turns"]
            assert [(t["role"], t["parts"][0]["text"]) for t in turns] == [
                ("model", "Welcome to the shop."), ("user", "Do you sell bread?"),
                ("model", "Yes, we bake every morning."),
            ]
            await speak(caller)
            await h.emulator.wait_for(lambda: h.emulator.conversations[1].turns_spoken == 1)
        await h.wait_idle()
    assert h.runtime.finished[-1].outcome == "caller_hung_up"
    refused = [c for c in h.emulator.connections if c.close_code == 1007]
    assert len(refused) == 1


async def test_a_tool_call_open_across_a_drop_is_answered_once_and_its_handler_runs_once():
    agent = make_agent()
    release, started = asyncio.Event(), asyncio.Event()
    runs: list[str] = []

    @agent.tool
    async def book(day: str) -> dict:
        """Book a table."""
        runs.append(day)
        started.set()
        await release.wait()
        return {"booked": day}

    script = Script([WaitForText(), Say("Hello."), CallTools((ToolCallSpec("book", {"day": "friday"}),)),
                     Say("You are booked.")])
    async with BridgeHarness(agent, script) as h:
        async with h.caller(continuous=False):
            await asyncio.wait_for(started.wait(), 10)
            await h.emulator.connections[0].drop()
            # The resumed connection re-issues the call with a new id while the handler still runs.
            await h.emulator.wait_for(lambda: connected(h, 2))
            await h.emulator.wait_for(lambda: any(r.kind == "tool_call" for r in h.emulator.connections[1].sent))
            release.set()
            await h.emulator.wait_for(lambda: conv(h).turns_spoken == 2)
        await h.wait_idle()
    assert runs == ["friday"]  # the handler ran once
    responses = conv(h).tool_responses
    assert [(r.name, r.response) for r in responses] == [("book", {"booked": "friday"})]
    reissued = [r for r in h.emulator.connections[1].sent if r.kind == "tool_call"]
    assert responses[0].id == reissued[0].message["toolCall"]["functionCalls"][0]["id"]
    assert not [r for r in h.emulator.connections[0].received if r.kind == "tool_response"]
    h.emulator.check()


async def test_a_sixty_minute_call_rotates_connections_and_loses_no_turn():
    segment = [Pause(590.0), GoAway(10.0), WaitForCaller(), Hear("more"), Say("Here is more.")]
    script = Script([WaitForText(), Say("Hello."), *segment], loop_from=2)
    # 1000x: ten minutes of emulator time take 0.6 s.
    async with BridgeHarness(make_agent(), script, speed=1000.0) as h:
        async with h.caller(continuous=False, speed=math.inf) as caller:
            for rotation in range(1, 7):
                await h.emulator.wait_for(lambda rotation=rotation: connected(h, rotation + 1), timeout=20)
                await speak(caller)
                await h.emulator.wait_for(lambda rotation=rotation: conv(h).turns_spoken == 1 + rotation, timeout=20)
            assert not caller.closed_by_server
        await h.wait_idle()
    connections = h.emulator.connections
    assert len(connections) >= 7 and len(h.emulator.conversations) == 1
    # One resumption chain: every connection after the first resumed the same conversation.
    assert all(c.resumed_from is not None for c in connections[1:])
    stats = h.runtime.finished[-1]
    assert stats.outcome == "caller_hung_up"
    assert [who for _, who, _ in stats.transcript].count("agent") == 7
    assert [who for _, who, _ in stats.transcript].count("caller") == 6
    h.emulator.check()


async def test_go_away_while_the_model_speaks_switches_at_the_deadline_and_cuts_the_turn_cleanly():
    from prometheus_client.parser import text_string_to_metric_families

    from phonebridge.server.app import METRICS

    long_answer = "This answer goes on and on while the server is about to go away. " * 3
    script = Script([WaitForText(), Say(long_answer), WaitForCaller(), Hear("hello?"), Say("Sorry, go on.")])
    async with BridgeHarness(make_agent(), script, speed=1.0) as h:
        async with h.caller(continuous=False, speed=math.inf) as caller:
            await h.emulator.wait_for(lambda: bool(h.emulator.connections) and any(
                r.kind == "audio" for r in h.emulator.connections[0].sent))
            # 2.5 s left: the bridge switches 2 s before the deadline although the model is mid-turn.
            await h.emulator.connections[0].go_away(2.5)
            await h.emulator.wait_for(lambda: connected(h, 2), timeout=10)
            assert h.emulator.connections[0].close_code is None or h.emulator.connections[0].close_code != 1011
            await caller.wait_for(lambda c: len(c.clears) == 1)  # the cut turn is cleared, not heard twice
            await speak(caller)
            await h.emulator.wait_for(lambda: conv(h).turns_spoken == 2, timeout=15)
        await h.wait_idle()
        body, _ = h.app[METRICS].render()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    assert samples[("phonebridge_live_reconnects_total", (("cause", "go_away"),))] == 1.0


# ---- input since the last handle is sent again: a handle stands for the state when it was issued ----------

def sent_audio(h: BridgeHarness, index: int) -> bool:
    conns = h.emulator.connections
    return len(conns) > index and any(s.kind == "audio" for s in conns[index].sent)


async def test_a_greeting_cut_by_a_drop_is_asked_for_again_on_the_resumed_connection():
    script = Script([WaitForText(contains="Greet"), Say("Hello there, how can I help?", seconds=2.0),
                     WaitForCaller(), Hear("question"), Say("An answer.")])
    async with BridgeHarness(make_agent(), script, speed=20.0) as h:
        async with h.caller(continuous=False, speed=math.inf) as caller:
            await h.emulator.wait_for(lambda: sent_audio(h, 0))  # the greeting has begun
            await h.emulator.connections[0].drop()
            await h.emulator.wait_for(lambda: connected(h, 2))
            second = h.emulator.connections[1]
            # The only handle is the one issued at setup, before the prompt: without the prompt sent again,
            # the resumed model would wait for it and the caller would hear nothing.
            assert second.resumed_from == "emu-0-1"
            await h.emulator.wait_for(lambda: conv(h).turns_spoken == 2)  # the cut greeting, then a whole one
            assert second.texts() == ["Greet the caller."]
            await speak(caller)
            await h.emulator.wait_for(lambda: conv(h).turns_spoken == 3)
            assert not caller.closed_by_server
        await h.wait_idle()
    assert h.runtime.finished[-1].outcome == "caller_hung_up"
    h.emulator.check()


async def test_a_question_whose_answer_a_drop_cut_is_heard_again_and_answered():
    script = Script([WaitForText(), Say("Hello."), WaitForCaller(), Hear("question"),
                     Say("An answer that takes a while.", seconds=2.0), WaitForCaller()])
    async with BridgeHarness(make_agent(), script, speed=20.0) as h:
        async with h.caller(continuous=False, speed=math.inf) as caller:
            await h.emulator.wait_for(lambda: conv(h).turns_spoken == 1)
            await speak(caller)
            await h.emulator.wait_for(lambda: conv(h).next_step == 5)  # the answer has begun
            await h.emulator.connections[0].drop()
            await h.emulator.wait_for(lambda: connected(h, 2))
            second = h.emulator.connections[1]
            assert second.resumed_from == "emu-0-2"  # issued after "Hello.", before the question
            await h.emulator.wait_for(lambda: conv(h).turns_spoken == 3)  # hello, the cut answer, the answer
            # The question reached the new connection again: the caller's speech at 16 kHz, twice its 8 kHz bytes.
            assert len(second.audio_in()) >= len(SPEECH) * 2
            assert not caller.closed_by_server
        await h.wait_idle()
    stats = h.runtime.finished[-1]
    assert stats.outcome == "caller_hung_up"
    assert [who for _, who, _ in stats.transcript].count("agent") >= 2
    h.emulator.check()


async def test_a_key_pressed_as_the_connection_drops_still_reaches_the_model():
    script = Script([WaitForText(contains="Greet"), Say("Hello."), WaitForText(contains="pressed 5"), Say("Five.")])
    async with BridgeHarness(make_agent(), script, speed=20.0) as h:
        async with h.caller(continuous=False, speed=math.inf) as caller:
            await h.emulator.wait_for(lambda: conv(h).turns_spoken == 1)
            await h.emulator.connections[0].drop()
            await caller.press("5")  # on the dead connection, or held while the bridge reconnects
            await h.emulator.wait_for(lambda: conv(h).turns_spoken == 2)
            assert any("pressed 5" in text for c in h.emulator.connections for text in c.texts())
        await h.wait_idle()
    assert h.runtime.finished[-1].outcome == "caller_hung_up"
    h.emulator.check()
