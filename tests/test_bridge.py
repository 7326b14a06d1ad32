"""The call bridge end to end: real aiohttp server, real google-genai client over TLS to the LiveEmulator,
TwilioCaller speaking Twilio's JSON. No sleeps: every wait is on an observed condition."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac

import aiohttp
import pytest

from phonebridge.agent.definition import Agent
from phonebridge.testing.harness import ACCOUNT_SID, AUTH_TOKEN, BridgeHarness
from phonebridge.testing.live_script import Hear, Say, Script, WaitForCaller, WaitForText
from phonebridge.testing.speech import synth_speech
from phonebridge.testing.twilio_caller import CallRejected
from tests.bridge_helpers import agent_audio_as_heard, reactions

GREETING = "Hello, thanks for calling. How can I help?"


def make_agent(**kwargs) -> Agent:
    return Agent(instructions="You are a test agent.", greeting="Greet the caller.", **kwargs)


def greeting_script(*more) -> Script:
    return Script([WaitForText(), Say(GREETING), *more])


def stream_token(call_sid: str) -> str:
    """The per-call stream token, computed independently of phonebridge.twilio.signatures."""
    message = f"phonebridge-stream-v1\0{ACCOUNT_SID}\0{call_sid}".encode()
    return hmac.new(AUTH_TOKEN.encode(), message, hashlib.sha256).hexdigest()


async def first_turn_spoken(h: BridgeHarness, turns: int = 1):
    await h.emulator.wait_for(lambda: bool(h.emulator.conversations) and h.emulator.conversations[0].turns_spoken >= turns)
    return h.emulator.conversations[0]


async def heard_all(caller, h: BridgeHarness, turns: int, timeout: float = 20.0) -> None:
    """Wait until the emulator finished `turns` turns and the caller heard all of it played out."""
    conv = await first_turn_spoken(h, turns)
    conn = conv.connections[-1]
    await caller.wait_for(lambda c: c.playback_idle and len(c.heard()) >= len(agent_audio_as_heard(conn)), timeout)


async def test_greeting_is_prompted_by_realtime_text_and_heard_by_the_caller():
    async with BridgeHarness(make_agent(), greeting_script()) as h:
        async with h.caller() as caller:
            conv = await first_turn_spoken(h)
            conn = conv.connections[0]
            await caller.wait_for(lambda c: len(c.heard()) == len(agent_audio_as_heard(conn)))
            assert conn.texts() == ["Greet the caller."]
            assert 'statusCallback="https://agent.example.com/twilio/status"' in caller.twiml
            assert caller.parameters == {"CallSid": caller.call_sid, "From": caller.from_number,
                                         "To": caller.to_number, "Direction": "inbound",
                                         "phonebridgeStreamToken": stream_token(caller.call_sid)}
            # Bit-exact: what the caller heard is the model's audio through our resampler and codec.
            assert caller.heard() == agent_audio_as_heard(conn)
            assert abs(caller.heard_seconds - len(synth_speech(GREETING, 24000)) / 48000) < 0.01
    h.emulator.check()


async def test_setup_is_correct_for_gemini_3_1_field_by_field():
    agent = make_agent(voice="Puck", start_of_speech_sensitivity="low", silence_duration_ms=500)
    async with BridgeHarness(agent, greeting_script()) as h:
        async with h.caller() as caller:
            await caller.wait_heard(0.5)
        setup = h.emulator.connections[0].raw_setup
    assert setup["model"] == "models/gemini-3.1-flash-live-preview"
    generation = setup["generationConfig"]
    assert generation["responseModalities"] == ["AUDIO"]
    assert generation["speechConfig"]["voice_config"]["prebuilt_voice_config"]["voice_name"] == "Puck"
    assert generation["thinkingConfig"] == {"thinking_level": "MINIMAL"}
    assert setup["systemInstruction"] == {"parts": [{"text": "You are a test agent."}]}
    assert setup["inputAudioTranscription"] == {} and setup["outputAudioTranscription"] == {}
    assert setup["sessionResumption"] == {}
    assert "sliding_window" in setup["contextWindowCompression"]
    detection = setup["realtimeInputConfig"]["automatic_activity_detection"]
    assert detection == {"disabled": False, "start_of_speech_sensitivity": "START_SENSITIVITY_LOW",
                         "silence_duration_ms": 500}
    declared = {d["name"] for d in setup["tools"][0]["functionDeclarations"]}
    assert declared == {"end_call"}
    text = str(setup)
    for refused in ("proactivity", "enableAffectiveDialog", "enable_affective_dialog", "thinkingBudget",
                    "thinking_budget", "historyConfig"):
        assert refused not in text


async def test_question_and_answer():
    script = greeting_script(WaitForCaller(), Hear("What time do you close?"), Say("We close at ten tonight."))
    async with BridgeHarness(make_agent(), script, speed=20) as h:
        async with h.caller() as caller:
            await heard_all(caller, h, 1)
            await caller.say("What time do you close tonight?")
            conv = h.emulator.conversations[0]
            await h.emulator.wait_for(lambda: conv.turns_spoken == 2, timeout=20)
            conn = h.emulator.connections[0]
            await caller.wait_for(lambda c: c.heard() == agent_audio_as_heard(conn), timeout=20)
            # The caller's speech reached the model as 16 kHz PCM with real energy in it.
            assert conv.audio_bytes_in > 16000 * 2 * 1.0
        await h.wait_idle()
    stats = h.runtime.finished[-1]
    assert [who for _, who, _ in stats.transcript] == ["agent", "caller", "agent"]
    assert stats.transcript[1][2] == "What time do you close?"
    assert stats.transcript[2][2] == "We close at ten tonight."
    assert stats.outcome == "caller_hung_up"
    h.emulator.check()


async def test_barge_in_clears_twilio_and_sends_nothing_more_of_the_cut_turn():
    long_answer = "Let me tell you about every one of our many specials tonight, starting with the soups. " * 2
    script = Script([WaitForText(), Say(long_answer), WaitForCaller(), Hear("Stop, please."), Say("Sure.")])
    async with BridgeHarness(make_agent(), script, speed=8) as h:
        async with h.caller() as caller:
            await caller.wait_heard(1.0, timeout=20)
            await caller.say("Stop, stop, please stop.")
            conv = h.emulator.conversations[0]
            await h.emulator.wait_for(lambda: conv.turns_spoken == 2, timeout=20)
            sure = agent_audio_as_heard_of_turn(h.emulator.connections[0], 2)
            await caller.wait_for(lambda c: len(media_after_clear(c)) >= len(sure), timeout=20)
            # Everything sent after the clear is exactly the next turn ("Sure."), nothing of the cut one.
            media_after = media_after_clear(caller)
            assert media_after == sure
            assert len(caller.clears) == 1
            assert conv.barge_ins == 1
        await h.wait_idle()
    stats = h.runtime.finished[-1]
    assert stats.barge_ins == 1
    count, seconds = reactions(h)["clear"]  # interrupted off the socket -> clear sent, on the bridge's clock
    assert count == 1 and seconds < 0.5


def media_after_clear(caller) -> bytes:
    clear_index = next((i for i, e in enumerate(caller.events) if e.message["event"] == "clear"), None)
    if clear_index is None:
        return b""
    return b"".join(
        base64.b64decode(e.message["media"]["payload"])
        for e in caller.events[clear_index + 1:] if e.message["event"] == "media"
    )


def agent_audio_as_heard_of_turn(connection, turn: int) -> bytes:
    """Like agent_audio_as_heard, for the n-th turn of the connection only (1-based)."""
    from phonebridge.testing.live_state import Received

    turns: list[list[Received]] = [[]]
    for record in connection.sent:
        turns[-1].append(record)
        if record.message.get("serverContent", {}).get("turnComplete"):
            turns.append([])

    class _Only:
        sent = turns[turn - 1]

    return agent_audio_as_heard(_Only)  # type: ignore[arg-type]


async def test_dtmf_reaches_the_model_as_text():
    script = greeting_script(WaitForText(contains="pressed 4"), Say("You pressed four."))
    async with BridgeHarness(make_agent(), script) as h:
        async with h.caller() as caller:
            await caller.wait_heard(0.5)
            await caller.press("4")
            conv = h.emulator.conversations[0]
            await h.emulator.wait_for(lambda: conv.turns_spoken == 2)
        assert "The caller pressed 4 on the keypad." in h.emulator.connections[0].texts()
        await h.wait_idle()
    assert h.runtime.finished[-1].dtmf == ["4"]


async def test_caller_hang_up_mid_utterance_closes_the_model_session_and_leaves_no_task():
    baseline = {t for t in asyncio.all_tasks()}
    async with BridgeHarness(make_agent(), greeting_script(WaitForCaller())) as h:
        caller = h.caller(speed=20)
        await caller.dial()
        await caller.wait_heard(0.5)
        talking = asyncio.create_task(caller.say("I was just saying that I would like to order something"))
        await h.emulator.wait_for(lambda: h.emulator.conversations[0].audio_bytes_in > 3200)
        await caller.hangup()
        talking.cancel()
        await asyncio.gather(talking, return_exceptions=True)
        await h.wait_idle()
        conn = h.emulator.connections[0]
        await h.emulator.wait_for(lambda: not conn.open)
        stats = h.runtime.finished[-1]
        assert stats.outcome == "caller_hung_up"
        bridge_tasks = [t for t in asyncio.all_tasks() - baseline
                        if "phonebridge/call/bridge.py" in repr(t.get_coro()) or "phonebridge/live/link.py" in repr(t.get_coro())]
        assert bridge_tasks == []


async def test_model_failing_at_start_ends_the_call_cleanly_with_a_logged_reason(caplog):
    from phonebridge.testing.live_script import Close

    # Every connection, resumed or not, is closed at once (loop_from: a resumed one starts over).
    script = Script([Close(1011, "Internal error encountered.")], loop_from=0)
    async with BridgeHarness(make_agent(), script) as h:
        async with h.caller() as caller:
            await caller.closed(timeout=20)
            assert caller.closed_by_server
            # Closing the stream makes Twilio run what follows <Connect>: an apology, not silence.
            assert "</Connect><Say>Sorry, our assistant can't take your call right now." in caller.twiml
        await h.wait_idle()
        # Known down: readiness turns false so a load balancer can prefer instances that reach the model.
        async with aiohttp.ClientSession() as http, http.get(h.server_url + "/readyz") as response:
            assert response.status == 503
            assert await response.json() == {"ready": False, "draining": False, "model_down": True}
    assert h.runtime.finished[-1].outcome == "model_unavailable"
    assert "model is unreachable" in caplog.text
    assert len(h.emulator.connections) == 3  # the first try and two reconnects, then we give up


async def test_bad_signatures_are_refused_before_any_model_session():
    async with BridgeHarness(make_agent(), greeting_script()) as h:
        with pytest.raises(CallRejected) as rejected:
            await h.caller(auth_token="not-the-token").dial()
        assert rejected.value.status == 403
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(h.server_url + "/twilio/media")
            assert refused.value.status == 403
            with pytest.raises(aiohttp.WSServerHandshakeError) as forged:
                await session.ws_connect(h.server_url + "/twilio/media", headers={"X-Twilio-Signature": "forged"})
            assert forged.value.status == 403
    assert h.emulator.connections == []


async def test_malformed_frames_mid_call_are_logged_and_the_call_goes_on(caplog):
    script = greeting_script(WaitForCaller(), Hear("hello"), Say("I still hear you."))
    async with BridgeHarness(make_agent(), script, speed=20) as h:
        async with h.caller() as caller:
            await caller.wait_heard(0.5, timeout=20)
            await caller.send_raw("this is not json")
            await caller.send_raw({"event": "media", "streamSid": caller.stream_sid, "sequenceNumber": "999",
                                   "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": "%%%"}})
            await caller.send_raw({"event": "surprise", "streamSid": caller.stream_sid})
            await caller.say("Hello, are you still there?")
            conv = h.emulator.conversations[0]
            await h.emulator.wait_for(lambda: conv.turns_spoken == 2, timeout=20)
        await h.wait_idle()
    stats = h.runtime.finished[-1]
    assert stats.malformed == 2 and stats.ignored == 1
    assert "not_json" in caplog.text and "bad_base64" in caplog.text


async def test_twenty_concurrent_calls_each_hear_only_their_own_agent():
    counter = iter(range(100))

    def script_for(setup) -> Script:
        n = next(counter)
        return Script([WaitForText(), Say(f"This is agent number {n}.", pitch_hz=100 + 6 * n),
                       WaitForCaller(), Hear(f"caller {n}"), Say(f"Goodbye caller {n}.", pitch_hz=100 + 6 * n)],
                      name=f"agent-{n}")

    async with BridgeHarness(make_agent(), script_for, speed=20) as h:
        callers = [h.caller(continuous=False) for _ in range(20)]
        await asyncio.gather(*(c.dial() for c in callers))

        def all_spoke(turns: int) -> bool:
            convs = h.emulator.conversations
            return len(convs) == 20 and all(conv.turns_spoken >= turns for conv in convs)

        await h.emulator.wait_for(lambda: all_spoke(1), timeout=30)
        await asyncio.gather(*(c.wait_for(lambda c: c.playback_idle, timeout=30) for c in callers))
        async def speak(i: int, c) -> None:
            await c.say(synth_speech(f"caller number {i} speaking", 8000, pitch_hz=120 + 5 * i))
            await c.silence(0.5)  # without continuous streaming, silence must be sent to end the turn

        await asyncio.gather(*(speak(i, c) for i, c in enumerate(callers)))
        await h.emulator.wait_for(lambda: all_spoke(2), timeout=30)
        expected = {agent_audio_as_heard(conn): conn.index for conn in h.emulator.connections}
        await asyncio.gather(*(
            c.wait_for(lambda c: c.playback_idle and c.heard() in expected, timeout=30) for c in callers
        ))
        matches = [expected[c.heard()] for c in callers]
        assert sorted(matches) == sorted(conn.index for conn in h.emulator.connections)
        assert all(c.clears == [] for c in callers)
        for c in callers:
            await c.hangup()
        await h.wait_idle(timeout=30)
    h.emulator.check()


async def test_a_caller_who_answers_before_the_model_listens_is_still_heard():
    # At infinite speed the caller's whole utterance can arrive before the emulator reaches WaitForCaller;
    # like the real service's always-on VAD, the emulator still takes it as the caller's turn.
    script = greeting_script(WaitForCaller(), Hear("fast"), Say("Got it."))
    async with BridgeHarness(make_agent(), script) as h:
        async with h.caller() as caller:
            await caller.wait_heard(0.2)
            await caller.say("I talk fast")
            await caller.silence(0.5)
            await h.emulator.wait_for(lambda: h.emulator.conversations[0].turns_spoken == 2)
    h.emulator.check()
