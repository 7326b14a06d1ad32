"""The Live emulator against the real google-genai SDK over TLS: what a bridge sends and receives."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from google import genai
from google.genai import errors, types

from phonebridge.testing.live_emulator import LiveEmulator
from phonebridge.testing.live_script import (
    CallTools,
    CancelTools,
    Close,
    Drop,
    GoAway,
    Hear,
    Say,
    Script,
    ToolCallSpec,
    Usage,
    WaitForCaller,
    WaitForText,
)
from phonebridge.testing.speech import silence, synth_speech

MODEL = "gemini-3.1-flash-live-preview"
PCM16K = "audio/pcm;rate=16000"


def config(**extra: Any) -> types.LiveConnectConfig:
    return types.LiveConnectConfig(
        response_modalities=["AUDIO"],
        input_audio_transcription={},
        output_audio_transcription={},
        session_resumption=types.SessionResumptionConfig(handle=extra.pop("handle", None)),
        **extra,
    )


@contextlib.asynccontextmanager
async def session(emu: LiveEmulator, cfg: types.LiveConnectConfig | None = None) -> AsyncIterator[Any]:
    client = genai.Client(api_key="test", http_options=emu.http_options())
    async with client.aio.live.connect(model=MODEL, config=cfg or config()) as live:
        yield live


async def one_turn(live: Any) -> list[types.LiveServerMessage]:
    return [message async for message in live.receive()]


def audio_of(messages: list[types.LiveServerMessage]) -> bytes:
    return b"".join(
        part.inline_data.data
        for m in messages
        if m.server_content and m.server_content.model_turn
        for part in m.server_content.model_turn.parts or []
        if part.inline_data and part.inline_data.data
    )


def transcript_of(messages: list[types.LiveServerMessage]) -> str:
    return "".join(
        m.server_content.output_transcription.text
        for m in messages
        if m.server_content and m.server_content.output_transcription
    )


async def test_a_whole_call_audio_text_tool_goaway_and_resumption_updates() -> None:
    script = Script(
        [
            WaitForText(contains="Greet"),
            Say("Thanks for calling Luigi's, how can I help?"),
            WaitForCaller(),
            Hear("where is my order"),
            CallTools((ToolCallSpec("lookup_order", {"order_id": "A-1"}),)),
            Say("It is out for delivery."),
            GoAway(time_left_s=10.0),  # at speed inf the connection closes right after it
        ]
    )
    async with LiveEmulator(script, speed=math.inf) as emu:
        async with session(emu) as live:
            await live.send_realtime_input(text="Greet the caller.")
            greeting = await one_turn(live)
            caller = synth_speech("I want my order", 16000, level_dbfs=-20.0) + silence(0.4, 16000)
            await live.send_realtime_input(audio=types.Blob(data=caller, mime_type=PCM16K))
            second = []
            async for message in live.receive():
                second.append(message)
                if message.tool_call:
                    call = message.tool_call.function_calls[0]
                    await live.send_tool_response(
                        function_responses=[types.FunctionResponse(id=call.id, name=call.name, response={"status": "out"})]
                    )
            tail = []
            with pytest.raises(errors.APIError) as closed:
                async for message in live.receive():  # no turnComplete follows goAway: read until the close
                    tail.append(message)

    assert audio_of(greeting) == synth_speech("Thanks for calling Luigi's, how can I help?", 24000)
    assert transcript_of(greeting) == "Thanks for calling Luigi's, how can I help?"
    assert greeting[-1].server_content.turn_complete is True
    assert greeting[-1].usage_metadata.response_token_count > 0
    assert [m.server_content.generation_complete for m in greeting if m.server_content][-2] is True
    handles = [m.session_resumption_update.new_handle for m in greeting + second if m.session_resumption_update]
    assert handles[0] == "emu-0-1" and "emu-0-2" in handles
    assert [m.server_content.input_transcription.text for m in second if m.server_content and m.server_content.input_transcription] == ["where is my order"]
    calls = [m.tool_call.function_calls[0] for m in second if m.tool_call]
    assert [(c.id, c.name, c.args) for c in calls] == [("fc-1", "lookup_order", {"order_id": "A-1"})]
    assert transcript_of(second) == "It is out for delivery."
    assert [m.go_away.time_left for m in tail if m.go_away] == ["10s"]
    assert tail[-1].session_resumption_update.resumable is True
    assert (closed.value.code, closed.value.details) == (1011, "Deadline expired before operation could complete.")

    conn, conv = emu.connections[0], emu.conversations[0]
    assert [r.kind for r in conn.received] == ["setup", "text", "audio", "tool_response"]
    assert conn.audio_in() == caller  # URL-safe base64 decoded byte for byte
    assert conn.texts() == ["Greet the caller."]
    assert conn.setup["model"] == "models/gemini-3.1-flash-live-preview"
    assert [(r.id, r.name, r.response) for r in conv.tool_responses] == [("fc-1", "lookup_order", {"status": "out"})]
    assert 0 <= conv.tool_responses[0].latency_s < 5
    assert conv.turns_spoken == 2 and conv.finished and emu.failures == []


async def test_barge_in_interrupts_then_completes_the_turn_and_cuts_audio() -> None:
    full = synth_speech("a long answer", 24000, seconds=4.0)
    async with LiveEmulator(Script([Say("a long answer", seconds=4.0)]), speed=2.0) as emu:
        async with session(emu) as live:
            messages = []
            async for message in live.receive():
                messages.append(message)
                if len(messages) == 3:  # a few chunks in: the caller talks over the model
                    loud = synth_speech("stop please", 16000, level_dbfs=-15.0, seconds=0.3)
                    await live.send_realtime_input(audio=types.Blob(data=loud, mime_type=PCM16K))
    contents = [m.server_content for m in messages if m.server_content]
    assert contents[-2].interrupted is True and contents[-1].turn_complete is True
    assert not any(c.generation_complete for c in contents)
    heard = audio_of(messages)
    assert 0 < len(heard) < len(full) and full.startswith(heard)
    assert emu.conversations[0].barge_ins == 1
    kinds = [s.kind for s in emu.connections[0].sent]
    assert kinds[kinds.index("interrupted") + 1] == "turn_complete" and "generation_complete" not in kinds


async def test_say_is_paced_at_real_time_times_speed() -> None:
    async with LiveEmulator(Script([Say("paced", seconds=0.6)]), speed=2.0) as emu:
        async with session(emu) as live:
            await one_turn(live)
    audio = [s.t for s in emu.connections[0].sent if s.kind == "audio"]
    assert len(audio) == 15  # 0.6 s in 40 ms chunks
    assert 0.27 <= audio[-1] - audio[0] <= 1.0  # 14 gaps of 20 ms at twice real time; never early, slack for load


async def test_resumed_connection_continues_the_script_without_repeating() -> None:
    script = Script([WaitForText(), Say("one"), Drop(), Say("two"), Close(1000, "bye")])
    async with LiveEmulator(script, speed=math.inf) as emu:
        async with session(emu) as live:
            await live.send_realtime_input(text="hi")
            first = await one_turn(live)
            before_drop: list[types.LiveServerMessage] = []
            with pytest.raises(errors.APIError) as dropped:
                async for message in live.receive():
                    before_drop.append(message)
        updates = [m.session_resumption_update for m in first + before_drop if m.session_resumption_update]
        handle = [u.new_handle for u in updates if u.resumable][-1]  # "resumable: false" carries no handle
        assert handle == "emu-0-3"  # at setup, after "one", and the service's update just before the drop
        async with session(emu, config(handle=handle)) as live:
            second = await one_turn(live)
            with pytest.raises(errors.APIError) as closed:
                await one_turn(live)
    assert dropped.value.code == 1006
    assert transcript_of(first) == "one" and transcript_of(second) == "two"
    assert (closed.value.code, closed.value.details) == (1000, "bye")
    assert len(emu.conversations) == 1 and emu.conversations[0].connections == emu.connections
    assert emu.connections[1].resumed_from == handle
    assert emu.connections[0].close_code == 1006


@pytest.mark.parametrize("ttl", [7200.0, 0.0])
async def test_unknown_or_expired_handle_is_refused_before_setup_complete(ttl: float) -> None:
    async with LiveEmulator(Script([Say("one")]), speed=math.inf, resumption_handle_ttl_s=ttl) as emu:
        async with session(emu) as live:
            await one_turn(live)
        handle = "emu-0-1" if ttl == 0.0 else "no-such-handle"
        with pytest.raises(errors.APIError) as refused:
            async with session(emu, config(handle=handle)):
                pass
    assert refused.value.code == 1007
    assert refused.value.details == "Invalid argument: session resumption handle is invalid or has expired."
    assert [s.kind for s in emu.connections[1].sent] == []


SETUP_CASES = {
    "proactivity": (
        {"proactivity": types.ProactivityConfig(proactive_audio=True)},
        "Invalid argument: proactivity is not supported for models/gemini-3.1-flash-live-preview.",
    ),
    "affective": (
        {"enable_affective_dialog": True},
        "Invalid argument: affective dialog is not supported for models/gemini-3.1-flash-live-preview.",
    ),
    "thinking_budget": (
        {"thinking_config": types.ThinkingConfig(thinking_budget=0)},
        "Invalid argument: thinking_budget is not supported for models/gemini-3.1-flash-live-preview; use thinking_level.",
    ),
}


@pytest.mark.parametrize("case", sorted(SETUP_CASES))
async def test_setup_the_31_model_refuses_is_closed_with_1007(case: str) -> None:
    extra, reason = SETUP_CASES[case]
    async with LiveEmulator(Script([Say("never")]), speed=math.inf) as emu:
        with pytest.raises(errors.APIError) as refused:
            async with session(emu, config(**extra)):
                pass
    assert (refused.value.code, refused.value.details) == (1007, reason)
    assert emu.connections[0].close_code == 1007 and emu.conversations == []


async def test_thinking_level_is_accepted() -> None:
    async with LiveEmulator(Script([Say("ok")]), speed=math.inf) as emu:
        async with session(emu, config(thinking_config=types.ThinkingConfig(thinking_level="MINIMAL"))) as live:
            assert transcript_of(await one_turn(live)) == "ok"


async def _send_media_chunks(live: Any) -> None:
    await live.send_realtime_input(media=types.Blob(data=b"\0\0", mime_type=PCM16K))


async def _send_wav(live: Any) -> None:
    await live.send_realtime_input(audio=types.Blob(data=b"\0\0", mime_type="audio/wav"))


async def _content_without_history(live: Any) -> None:
    await live.send_client_content(turns=types.Content(role="user", parts=[types.Part(text="hi")]), turn_complete=False)


async def _unknown_tool_response(live: Any) -> None:
    await live.send_tool_response(function_responses=[types.FunctionResponse(id="fc-9", name="x", response={})])


SESSION_CASES = {
    "media_chunks": (_send_media_chunks, "Invalid argument: realtime_input.media_chunks is not supported for models/gemini-3.1-flash-live-preview; use audio."),
    "wav_mime": (_send_wav, "Invalid argument: unsupported audio mime type 'audio/wav'; expected audio/pcm;rate=N."),
    "client_content": (_content_without_history, "Invalid argument: client_content requires history_config.initial_history_in_client_content."),
    "unknown_tool_response": (_unknown_tool_response, "Invalid argument: tool_response for unknown function call id(s) fc-9."),
}


@pytest.mark.parametrize("case", sorted(SESSION_CASES))
async def test_messages_the_31_model_refuses_close_the_session_with_1007(case: str) -> None:
    send, reason = SESSION_CASES[case]
    async with LiveEmulator(Script([WaitForText()]), speed=math.inf) as emu:
        async with session(emu) as live:
            await send(live)
            with pytest.raises(errors.APIError) as refused:
                await one_turn(live)
    assert (refused.value.code, refused.value.details) == (1007, reason)
    assert (emu.connections[0].close_code, emu.connections[0].close_reason) == (1007, reason)


async def test_client_content_is_history_only_before_realtime_input() -> None:
    turn = types.Content(role="user", parts=[types.Part(text="earlier")])
    async with LiveEmulator(Script([WaitForText(), Say("ok")]), speed=math.inf) as emu:
        cfg = config(history_config=types.HistoryConfig(initial_history_in_client_content=True))
        async with session(emu, cfg) as live:
            await live.send_client_content(turns=turn, turn_complete=False)  # accepted: seeds history
            await live.send_realtime_input(text="go")
            await one_turn(live)
            await live.send_client_content(turns=turn, turn_complete=False)
            with pytest.raises(errors.APIError) as refused:
                await one_turn(live)
    assert refused.value.code == 1007
    assert refused.value.details == "Invalid argument: client_content is only accepted as initial history, before realtime input."
    assert [r.kind for r in emu.connections[0].received] == ["setup", "client_content", "text", "client_content"]


async def test_missing_tool_response_is_a_recorded_failure_and_the_script_goes_on() -> None:
    script = Script([CallTools((ToolCallSpec("lookup_order", {"order_id": "A-1"}),), timeout_s=0.2), Say("sorry")])
    async with LiveEmulator(script, speed=math.inf) as emu:
        async with session(emu) as live:
            messages = await one_turn(live)
    assert transcript_of(messages) == "sorry"
    assert emu.failures == ["script#0: no tool_response for fc-1 (lookup_order) within 0.2 s"]
    with pytest.raises(AssertionError, match="fc-1"):
        emu.check()


async def test_go_away_closes_when_time_is_up_and_python_fault_injection() -> None:
    async with LiveEmulator(Script([GoAway(time_left_s=0.05)]), speed=1.0) as emu:
        async with session(emu) as live:
            with pytest.raises(errors.APIError) as closed:
                async for _ in live.receive():
                    pass
        async with session(emu) as live:
            conn = emu.connections[1]
            await conn.send_raw({"serverContent": {"inputTranscription": {"text": "raw", "finished": True}}})
            await conn.close(1011, "Internal error encountered.")
            with pytest.raises(errors.APIError) as injected:
                await one_turn(live)
    assert (closed.value.code, closed.value.details) == (1011, "Deadline expired before operation could complete.")
    assert (injected.value.code, injected.value.details) == (1011, "Internal error encountered.")


@pytest.mark.parametrize("version", ["v1beta", "v1alpha", "trailing-slash"])
async def test_every_api_version_path_and_a_double_slash_are_served(version: str) -> None:
    async with LiveEmulator(Script([Say("ok")]), speed=math.inf) as emu:
        base = emu.base_url + "/" if version == "trailing-slash" else emu.base_url
        api = None if version == "trailing-slash" else version
        opts = types.HttpOptions(base_url=base, api_version=api, async_client_args={"ssl": emu.ssl_context})
        client = genai.Client(api_key="test", http_options=opts)
        async with client.aio.live.connect(model=MODEL, config=config()) as live:
            assert transcript_of(await one_turn(live)) == "ok"
    suffix = f"generativelanguage.{api or 'v1'}.GenerativeService.BidiGenerateContent"
    assert emu.connections[0].path.endswith(suffix)
    assert emu.connections[0].path.startswith("//ws/" if api is None else "/ws/")


async def test_stop_leaves_no_task_behind_even_mid_script() -> None:
    before = asyncio.all_tasks()
    emu = LiveEmulator(Script([WaitForText(timeout_s=30.0)]), speed=math.inf)
    await emu.start()
    client = genai.Client(api_key="test", http_options=emu.http_options())
    with pytest.raises(errors.APIError) as closed:
        async with client.aio.live.connect(model=MODEL, config=config()) as live:
            await emu.next_connection()
            await emu.stop()
            await one_turn(live)
    assert closed.value.code == 1001
    # the SDK's own websockets keepalive may still be unwinding: only the server side is ours to judge
    server_side = [t for t in asyncio.all_tasks() - before if _defined_in(t, ("aiohttp", "phonebridge"))]
    assert server_side == []


def _defined_in(task: asyncio.Task[Any], packages: tuple[str, ...]) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and any(f"/{p}/" in code.co_filename for p in packages)


async def test_resuming_from_before_a_turn_that_a_drop_cut_speaks_that_turn_again() -> None:
    """A handle stands for the state when it was issued: the cut turn is not in it, so it is generated anew
    (the client clears what it played of the cut one; nothing of the old connection is heard twice)."""
    script = Script([Say("a long first answer", seconds=2.0), Say("after")])
    async with LiveEmulator(script, speed=2.0) as emu:
        async with session(emu) as live:
            first = []
            with pytest.raises(errors.APIError) as dropped:
                async for message in live.receive():
                    first.append(message)
                    if message.server_content and message.server_content.model_turn:
                        await emu.connections[0].drop()  # fault injected from Python mid-utterance
        handle = first[0].session_resumption_update.new_handle  # issued right after setupComplete
        async with session(emu, config(handle=handle)) as live:
            second = await one_turn(live)
    assert dropped.value.code == 1006
    assert handle == "emu-0-1"
    assert transcript_of(second) == "a long first answer"
    await emu.wait_for(lambda: emu.conversations[0].turns_spoken >= 2)  # the cut turn, then the new one
    assert emu.connections[1].resumed_from == "emu-0-1"


async def test_tool_call_cancellation_and_usage_only_events_reach_the_sdk() -> None:
    async with LiveEmulator(Script([Usage(prompt_tokens=7, response_tokens=0), CancelTools(("fc-1", "fc-2")), Say("ok")]), speed=math.inf) as emu:
        async with session(emu) as live:
            messages = await one_turn(live)
    usage = [m.usage_metadata for m in messages if m.usage_metadata and not m.server_content]
    assert [(u.prompt_token_count, u.total_token_count) for u in usage] == [(7, 7)]
    assert [m.tool_call_cancellation.ids for m in messages if m.tool_call_cancellation] == [["fc-1", "fc-2"]]
    assert emu.failures == []


async def _handles_seen(emu: LiveEmulator, resumption: dict[str, Any]) -> list[dict[str, Any]]:
    """Raw wire (the SDK refuses `transparent` outside Vertex): setup, a text, then the updates of one turn."""
    url = emu.base_url.replace("https://", "wss://") + (
        "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent")
    updates = []
    async with aiohttp.ClientSession() as http, http.ws_connect(
        url, ssl=emu.ssl_context, headers={"x-goog-api-key": "test"}
    ) as ws:
        await ws.send_json({"setup": {"model": f"models/{MODEL}", "sessionResumption": resumption}})
        await ws.send_json({"realtimeInput": {"text": "hi"}})
        turn_over = False
        async with asyncio.timeout(10):
            async for msg in ws:  # until the handle that follows the turn
                data = json.loads(msg.data)
                turn_over = turn_over or bool(data.get("serverContent", {}).get("turnComplete"))
                update = data.get("sessionResumptionUpdate")
                if update is not None:
                    updates.append(update)
                    if turn_over and update.get("resumable"):
                        break
    return updates


async def test_last_consumed_client_message_index_comes_only_with_transparent_resumption() -> None:
    script = Script([WaitForText(), Say("hello")])
    async with LiveEmulator(script, speed=math.inf) as emu:
        plain = await _handles_seen(emu, {})
        transparent = await _handles_seen(emu, {"transparent": True})
    assert all("lastConsumedClientMessageIndex" not in u for u in plain)
    # After the turn, the handle includes the one client message after setup (index 0: the text).
    assert transparent[-1] == {"resumable": True, "newHandle": "emu-1-2", "lastConsumedClientMessageIndex": "0"}


# ---- LiveQuirks: what the real 3.1 service is reported to do beyond its docs -------------------------------

async def test_quirk_a_client_content_seed_is_refused_even_with_history_config() -> None:
    from phonebridge.testing.live_emulator import LiveQuirks

    turn = types.Content(role="user", parts=[types.Part(text="earlier")])
    quirks = LiveQuirks(refuse_client_content=True)
    async with LiveEmulator(Script([WaitForText(), Say("ok")]), speed=math.inf, quirks=quirks) as emu:
        cfg = config(history_config=types.HistoryConfig(initial_history_in_client_content=True))
        async with session(emu, cfg) as live:
            await live.send_client_content(turns=turn, turn_complete=True)
            with pytest.raises(errors.APIError) as refused:
                await one_turn(live)
    assert (refused.value.code, refused.value.details) == (1007, "Request contains an invalid argument.")


@pytest.mark.parametrize("unfinished", [False, True])
async def test_quirk_input_transcription_comes_in_word_slices_without_finished(unfinished: bool) -> None:
    from phonebridge.testing.live_emulator import LiveQuirks

    quirks = LiveQuirks(unfinished_input_transcription=unfinished)
    async with LiveEmulator(Script([WaitForText(), Hear("Do you sell bread?"), Say("Yes.")]), speed=math.inf,
                            quirks=quirks) as emu:
        async with session(emu) as live:
            await live.send_realtime_input(text="go")
            messages = await one_turn(live)
    heard = [m.server_content.input_transcription for m in messages
             if m.server_content and m.server_content.input_transcription]
    assert "".join(t.text or "" for t in heard) == "Do you sell bread?"
    if unfinished:
        assert [t.text for t in heard] == ["Do", " you", " sell", " bread?"]
        assert not any(t.finished for t in heard)
    else:
        assert [(t.text, t.finished) for t in heard] == [("Do you sell bread?", True)]


async def test_quirk_audio_messages_carry_extra_fields_and_the_same_audio() -> None:
    from phonebridge.live.wire import audio_events
    from phonebridge.testing.live_emulator import LiveQuirks

    heard: dict[bool, bytes] = {}
    for extra in (False, True):
        async with LiveEmulator(Script([WaitForText(), Say("Hello there.")]), speed=math.inf,
                                quirks=LiveQuirks(audio_extra_fields=extra)) as emu:
            async with session(emu) as live:
                await live.send_realtime_input(text="go")
                heard[extra] = audio_of(await one_turn(live))
            sent = [r.message for r in emu.connections[0].sent if r.kind == "audio"]
        assert sent and all((audio_events(m) is None) == extra for m in sent)
        if extra:
            assert all(m["serverContent"]["waitingForInput"] is False for m in sent)
    assert heard[True] == heard[False] and heard[True]
