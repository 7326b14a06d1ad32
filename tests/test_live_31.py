"""What the real gemini-3.1 service is reported to do beyond its docs (docs PROTOCOLS.md section 4), through the
real bridge against LiveEmulator's LiveQuirks: each in both shapes, the documented one and the reported one.
Also the model link's own bounds: resent audio in bytes, a prompt close with messages unread."""

from __future__ import annotations

import gc
import logging
import math
import tracemalloc
from typing import Any

import pytest
from google import genai

from phonebridge.live.resend import REPLAY_BYTES
from phonebridge.live.link import LiveLink
from phonebridge.live.wire import audio_events
from phonebridge.testing.harness import BridgeHarness
from phonebridge.testing.live_emulator import LiveEmulator, LiveQuirks
from phonebridge.testing.live_script import (
    CallTools, Hear, Say, Script, ToolCallSpec, WaitForCaller, WaitForText,
)
from tests.bridge_helpers import agent_audio_as_heard
from tests.test_resilience import conv, make_agent, speak

DOCUMENTED, REPORTED = LiveQuirks(), LiveQuirks.reported_31()
UNFINISHED = LiveQuirks(unfinished_input_transcription=True)


def live_stats(h: BridgeHarness) -> Any:
    return next(iter(h.runtime.active.values())).stats


# ---- input transcription without `finished` ------------------------------------------------------------

@pytest.mark.parametrize("quirks", [DOCUMENTED, UNFINISHED], ids=["finished", "unfinished"])
async def test_the_callers_line_is_written_when_the_model_answers_with_or_without_finished(quirks, caplog):
    caplog.set_level(logging.INFO, logger="phonebridge.call")
    events: list[tuple[str, dict[str, Any]]] = []
    script = Script([WaitForText(), Say("Hello."), WaitForCaller(), Hear("Do you sell bread?"),
                     Say("Yes, every morning.")])
    async with BridgeHarness(make_agent(), script, quirks=quirks, observers=[lambda k, d: events.append((k, d))]) as h:
        async with h.caller(continuous=False) as caller:
            await h.emulator.wait_for(lambda: conv(h).turns_spoken == 1)
            await speak(caller)
            await h.emulator.wait_for(lambda: conv(h).turns_spoken == 2)
            await caller.wait_for(lambda c: len(live_stats(h).transcript) == 3)  # re-checked as Twilio frames arrive
            # While the call is still up: the caller's words sit between the two answers, exactly once.
            assert [(who, text) for _, who, text in live_stats(h).transcript] == [
                ("agent", "Hello."), ("caller", "Do you sell bread?"), ("agent", "Yes, every morning."),
            ]
        await h.wait_idle()
    assert [(who, text) for _, who, text in h.runtime.finished[-1].transcript] == [
        ("agent", "Hello."), ("caller", "Do you sell bread?"), ("agent", "Yes, every morning."),
    ]
    lines = [(d["who"], d["text"]) for kind, d in events if kind == "transcript"]
    assert lines == [("agent", "Hello."), ("caller", "Do you sell bread?"), ("agent", "Yes, every morning.")]
    logged = [r.getMessage() for r in caplog.records if "caller: " in r.getMessage() or "agent: " in r.getMessage()]
    assert [line.split("] ")[1] for line in logged] == [
        "agent: Hello.", "caller: Do you sell bread?", "agent: Yes, every morning.",
    ]
    h.emulator.check()


@pytest.mark.parametrize("quirks", [DOCUMENTED, UNFINISHED], ids=["finished", "unfinished"])
async def test_the_callers_line_is_written_before_the_tool_call_it_asked_for(quirks):
    agent = make_agent()
    events: list[str] = []

    @agent.tool
    def book(day: str) -> dict:
        """Book a table."""
        return {"booked": day}

    def observe(kind: str, data: dict[str, Any]) -> None:
        if kind == "transcript":
            events.append(f"{data['who']}: {data['text']}")
        elif kind == "tool_call":
            events.append(f"tool: {data['name']}")

    script = Script([WaitForText(), Say("Hello."), WaitForCaller(), Hear("A table for Friday please."),
                     CallTools((ToolCallSpec("book", {"day": "friday"}),)), Say("Booked.")])
    async with BridgeHarness(agent, script, quirks=quirks, observers=[observe]) as h:
        async with h.caller(continuous=False) as caller:
            await h.emulator.wait_for(lambda: conv(h).turns_spoken == 1)
            await speak(caller)
            await h.emulator.wait_for(lambda: conv(h).turns_spoken == 2)
            await caller.wait_for(lambda c: "agent: Booked." in events)  # re-checked as Twilio frames arrive
        await h.wait_idle()
    assert events == ["agent: Hello.", "caller: A table for Friday please.", "tool: book", "agent: Booked."]
    h.emulator.check()


@pytest.mark.parametrize("quirks", [DOCUMENTED, UNFINISHED], ids=["finished", "unfinished"])
async def test_a_fresh_session_is_seeded_with_the_callers_side_too(quirks):
    scripts = iter([
        Script([WaitForText(), Say("Welcome to the shop."), WaitForCaller(), Hear("Do you sell bread?"),
                Say("Yes, we bake every morning.")], name="first"),
        Script([WaitForCaller(), Hear("Still there?"), Say("Yes.")], name="seeded"),
    ])
    emulator = LiveEmulator(lambda setup: next(scripts), speed=math.inf, resumption_handle_ttl_s=0.0, quirks=quirks)
    async with BridgeHarness(make_agent(), emulator=emulator) as h:
        async with h.caller(continuous=False) as caller:
            await h.emulator.wait_for(lambda: conv(h).turns_spoken == 1)
            await speak(caller)
            await h.emulator.wait_for(lambda: conv(h).turns_spoken == 2)
            await caller.wait_for(lambda c: len(live_stats(h).transcript) == 3)  # re-checked as Twilio frames arrive
            await h.emulator.connections[0].drop()
            await h.emulator.wait_for(lambda: len(h.emulator.conversations) == 2, timeout=15)
            seeded = h.emulator.conversations[1].connections[0]
            await h.emulator.wait_for(lambda: any(r.kind == "client_content" for r in seeded.received))
        await h.wait_idle()
    (history,) = [r.message for r in seeded.received if r.kind == "client_content"]
    assert [(t["role"], t["parts"][0]["text"]) for t in history["clientContent"]["turns"]] == [
        ("model", "Welcome to the shop."), ("user", "Do you sell bread?"), ("model", "Yes, we bake every morning."),
    ]


async def test_the_callers_words_that_trail_in_during_the_answer_stay_one_line_before_it():
    # 3.1 may go on transcribing the question after the answer has begun: those slices are one caller line.
    script = Script([WaitForText(), Say("Hello."), WaitForCaller(), Say("Let me think about that one.", seconds=2.0)])
    async with BridgeHarness(make_agent(), script, speed=5.0, quirks=UNFINISHED) as h:
        async with h.caller(continuous=False, speed=math.inf) as caller:
            await h.emulator.wait_for(lambda: conv(h).turns_spoken == 1)
            connection = h.emulator.connections[0]
            greeting = sum(r.kind == "audio" for r in connection.sent)
            await speak(caller)

            def answer_audio() -> int:
                return sum(r.kind == "audio" for r in connection.sent) - greeting

            await h.emulator.wait_for(lambda: answer_audio() >= 3)
            await connection.send_raw({"serverContent": {"inputTranscription": {"text": "Do you"}}})
            sent = answer_audio()
            await h.emulator.wait_for(lambda: answer_audio() > sent)  # answer audio between the two slices
            await connection.send_raw({"serverContent": {"inputTranscription": {"text": " sell bread?"}}})
            await h.emulator.wait_for(lambda: conv(h).turns_spoken == 2)
            await caller.wait_for(lambda c: len(live_stats(h).transcript) == 3)
            assert answer_audio() > sent + 1  # the second slice, too, came in the middle of the answer
        await h.wait_idle()
    assert [(who, text) for _, who, text in h.runtime.finished[-1].transcript] == [
        ("agent", "Hello."), ("caller", "Do you sell bread?"), ("agent", "Let me think about that one."),
    ]


# ---- clientContent refused --------------------------------------------------------------------------------

async def test_a_refused_seed_falls_back_to_the_history_in_the_system_instruction_and_the_call_goes_on():
    # The documented shape (the seed accepted) is test_resilience's test_refused_resumption_opens_a_fresh_session_...
    scripts = iter([
        Script([WaitForText(), Say("Welcome to the shop."), WaitForCaller(), Hear("Do you sell bread?"),
                Say("Yes, we bake every morning.")], name="first"),
        Script([WaitForCaller(timeout_s=60)], name="seeded, refused"),
        Script([WaitForCaller(), Hear("Still there?"), Say("Yes, sorry, where were we?")], name="folded"),
    ])
    emulator = LiveEmulator(lambda setup: next(scripts), speed=math.inf, resumption_handle_ttl_s=0.0,
                            quirks=LiveQuirks(refuse_client_content=True))
    async with BridgeHarness(make_agent(), emulator=emulator) as h:
        async with h.caller(continuous=False) as caller:
            await h.emulator.wait_for(lambda: conv(h).turns_spoken == 1)
            await speak(caller)
            await h.emulator.wait_for(lambda: conv(h).turns_spoken == 2)
            await h.emulator.connections[0].drop()
            # The expired handle is refused, then the clientContent seed; the third session has the history
            # in its system instruction and no clientContent.
            await h.emulator.wait_for(lambda: len(h.emulator.conversations) == 3, timeout=15)
            folded = h.emulator.conversations[2].connections[0]
            await speak(caller)
            await h.emulator.wait_for(lambda: h.emulator.conversations[2].turns_spoken == 1, timeout=15)
            assert not caller.closed_by_server
        await h.wait_idle()
    assert h.runtime.finished[-1].outcome == "caller_hung_up"
    seeded = h.emulator.conversations[1].connections[0]
    assert [r.kind for r in seeded.received if r.kind == "client_content"] == ["client_content"]
    assert seeded.close_code == 1007
    assert not [r for r in folded.received if r.kind == "client_content"]
    assert "historyConfig" not in folded.setup
    instruction = folded.setup["systemInstruction"]["parts"][0]["text"]
    assert instruction.startswith("You are a test agent.")
    assert instruction.endswith("You: Welcome to the shop.\nCaller: Do you sell bread?\nYou: Yes, we bake every morning.")
    # Only one seed was tried: the refusal was read as a refusal of the seed, not retried.
    assert sum(1 for c in h.emulator.connections for r in c.received if r.kind == "client_content") == 1


async def test_a_1007_after_the_conversation_went_on_keeps_the_handle_and_resumes():
    script = Script([WaitForText(), Say("Hello."), WaitForCaller(), Hear("question"), Say("An answer.")])
    async with BridgeHarness(make_agent(), script) as h:
        async with h.caller(continuous=False) as caller:
            await h.emulator.wait_for(lambda: conv(h).turns_spoken == 1)
            await h.emulator.connections[0].close(1007, "Invalid argument: a message the service did not like.")
            await h.emulator.wait_for(lambda: len(h.emulator.connections) == 2
                                      and h.emulator.connections[1].conversation is not None)
            assert h.emulator.connections[1].resumed_from is not None
            await speak(caller)
            await h.emulator.wait_for(lambda: conv(h).turns_spoken == 2)
        await h.wait_idle()
    assert len(h.emulator.conversations) == 1  # resumed, not a fresh session seeded with the transcript
    assert not [r for c in h.emulator.connections for r in c.received if r.kind == "client_content"]
    h.emulator.check()


# ---- audio messages with extra fields (off the bridge's fast path) --------------------------------------

@pytest.mark.parametrize("quirks", [DOCUMENTED, LiveQuirks(audio_extra_fields=True)], ids=["plain", "extra_fields"])
async def test_audio_with_or_without_extra_fields_is_heard_bit_exact(quirks):
    script = Script([WaitForText(), Say("Hello, thanks for calling. How can I help?")])
    async with BridgeHarness(make_agent(), script, quirks=quirks) as h:
        async with h.caller() as caller:
            await h.emulator.wait_for(lambda: conv(h).turns_spoken == 1)
            connection = h.emulator.connections[0]
            expected = agent_audio_as_heard(connection)
            await caller.wait_for(lambda c: len(c.heard()) == len(expected))
            assert caller.heard() == expected
        await h.wait_idle()
    audio = [r.message for r in connection.sent if r.kind == "audio"]
    fast = [audio_events(message) is not None for message in audio]
    assert fast == [not quirks.audio_extra_fields] * len(audio)  # which path the bridge's reader took
    stats = h.runtime.finished[-1]
    assert [(who, text) for _, who, text in stats.transcript] == [("agent", "Hello, thanks for calling. How can I help?")]


async def test_every_reported_quirk_at_once_a_call_with_a_question_goes_through():
    script = Script([WaitForText(), Say("Hello."), WaitForCaller(), Hear("Do you sell bread?"), Say("Yes.")])
    async with BridgeHarness(make_agent(), script, quirks=REPORTED) as h:
        async with h.caller(continuous=False) as caller:
            await h.emulator.wait_for(lambda: conv(h).turns_spoken == 1)
            await speak(caller)
            await h.emulator.wait_for(lambda: conv(h).turns_spoken == 2)
        await h.wait_idle()
    assert [(who, text) for _, who, text in h.runtime.finished[-1].transcript] == [
        ("agent", "Hello."), ("caller", "Do you sell bread?"), ("agent", "Yes."),
    ]
    h.emulator.check()


# ---- the link's bounds ------------------------------------------------------------------------------------

async def test_caller_audio_held_for_the_next_connection_is_bounded_in_bytes_whatever_the_frame_size():
    async def sink(event: Any) -> None:
        raise AssertionError("no event expected")

    link = LiveLink(genai.Client(api_key="unused"), make_agent(), [], sink,
                    logger=logging.LoggerAdapter(logging.getLogger("test"), {}))
    frame = b"\x01\x02" * 96_000  # what a 48 KB Twilio media frame becomes at 16 kHz: 192 KB
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(50):
            await link.send_audio(bytes(frame))  # a fresh buffer each time, as the transcoder gives
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 2 * REPLAY_BYTES  # one bound's worth (plus bookkeeping), not 300 frames of 192 KB
    assert link.held_dropped == 49


async def test_hanging_up_while_the_model_floods_closes_its_connection_promptly():
    # A long turn in 1 s messages, each cheap for the emulator to send and dear for the bridge to play out
    # (50 Twilio frames): the bridge is soon far more than websockets' 16-message queue behind.
    script = Script([WaitForText(), Say("A story that goes on.", seconds=60.0, chunk_ms=1000.0,
                                        interruptible=False)])
    # The far end answers our close frame only after the turn it is sending: behind all the unread messages.
    emulator = LiveEmulator(script, speed=math.inf, close_reply_after_turn=True)
    async with BridgeHarness(make_agent(), emulator=emulator) as h:
        async with h.caller(continuous=False) as caller:
            await h.emulator.wait_for(lambda: bool(h.emulator.connections) and len(h.emulator.connections[0].sent) > 30)
            started = h.emulator.now()
            await caller.hangup()
            await h.wait_idle(timeout=15)
            await h.emulator.wait_for(lambda: h.emulator.connections[0].close_code is not None, timeout=15)
            took = h.emulator.now() - started
    # websockets' close_timeout (10 s) used to hold the call slot; now one CLOSE_TIMEOUT_S (0.25 s) at most.
    assert took < 1.5, f"shutdown took {took:.2f} s"  # measured 0.3 s; 10.0 s before
    assert h.runtime.finished[-1].outcome == "caller_hung_up"
