"""Runs a conversation's script on one connection: each step sends what the real service would and waits
for what the script expects from the client. Waiting is on recorded events (never polling); pacing sleeps
only where the real service paces (speech), scaled by the emulator's speed."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any, Protocol

from phonebridge.testing.live_script import (
    CallTools,
    CancelTools,
    Close,
    Drop,
    GoAway,
    Hear,
    Pause,
    Say,
    Step,
    Usage,
    WaitForCaller,
    WaitForText,
)
from phonebridge.testing.live_state import Connection, ConnectionGone, Conversation
from phonebridge.testing.live_wire import (
    EnergyDetector,
    LiveQuirks,
    audio_content,
    input_transcription,
    resumption_update,
    split_words,
    usage_metadata,
)
from phonebridge.testing.speech import synth_speech

_OUT_RATE = 24000
_TOKENS_PER_AUDIO_S = 25  # Gemini counts audio at 25 tokens a second


class Runtime(Protocol):
    speed: float
    barge_in_threshold_dbfs: float
    barge_in_ms: float
    quirks: LiveQuirks

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool: ...

    def issue_handle(self, conversation: Conversation) -> str: ...

    def now(self) -> float: ...

    def notify(self) -> None: ...


class _Stop(Exception):
    """The script ends on this connection (Drop, Close)."""


async def run_conversation(rt: Runtime, conv: Conversation, conn: Connection) -> None:
    """Run `conv` from where it stands until the script ends or the connection goes."""
    steps = conv.script.steps
    try:
        while True:
            if conv.next_step >= len(steps):
                if conv.script.loop_from is None:
                    conv.finished = True
                    await send_resumable(rt, conv, conn)
                    return
                conv.next_step = conv.script.loop_from
            index = conv.next_step
            await _run_step(rt, conv, conn, index, steps[index])
            if conv.next_step == index:  # Say advances itself when it starts
                conv.next_step = index + 1
    except (_Stop, ConnectionGone):
        return


async def send_resumable(rt: Runtime, conv: Conversation, conn: Connection) -> None:
    """A fresh handle, only when the client asked for resumption and nothing is in flight."""
    if conv.resumable and not conv.open_calls and conn.open:
        await conn.send(resumption_update(rt.issue_handle(conv), _last_index(conn)), "session_resumption_update")


async def _send_not_resumable(conv: Conversation, conn: Connection) -> None:
    if conv.resumable:
        await conn.send(resumption_update(None, _last_index(conn)), "session_resumption_update")


def _last_index(conn: Connection) -> int | None:
    """Sent only to a client that asked for `transparent` resumption (Vertex; the Developer API refuses it)."""
    resumption = conn.setup.get("sessionResumption")
    if not (isinstance(resumption, dict) and resumption.get("transparent")):
        return None
    return conn.client_messages - 1 if conn.client_messages else None


async def _run_step(rt: Runtime, conv: Conversation, conn: Connection, index: int, step: Step) -> None:
    if isinstance(step, WaitForCaller):
        await _wait_for_caller(rt, conv, step)
    elif isinstance(step, WaitForText):
        await _wait_for_text(rt, conv, step)
    elif isinstance(step, Say):
        await _say(rt, conv, conn, index, step)
    elif isinstance(step, Hear):
        for message in input_transcription(step.text, finished=not rt.quirks.unfinished_input_transcription):
            await conn.send(message, "input_transcription")
    elif isinstance(step, CallTools):
        await _call_tools(rt, conv, conn, step)
    elif isinstance(step, CancelTools):
        for call_id in step.ids:
            conv.open_calls.pop(call_id, None)
        await conn.send({"toolCallCancellation": {"ids": list(step.ids)}}, "tool_call_cancellation")
    elif isinstance(step, GoAway):
        conv.next_step = index + 1  # a connection event, not conversation: a resumed connection goes on after it
        await send_resumable(rt, conv, conn)  # the service's regular handle update, so the switch resumes from here
        await conn.go_away(step.time_left_s, step.close_after, step.close_code, step.close_reason)
    elif isinstance(step, Usage):
        await conn.send({"usageMetadata": usage_metadata(step.prompt_tokens, step.response_tokens)}, "usage_metadata")
    elif isinstance(step, Pause):
        await _pace(rt, step.seconds)
    elif isinstance(step, (Drop, Close)):
        conv.next_step = index + 1  # a resumed connection must not drop or close again
        await send_resumable(rt, conv, conn)
        await (conn.drop() if isinstance(step, Drop) else conn.close(step.code, step.reason))
        raise _Stop
    else:
        raise TypeError(f"not a script step: {step!r}")


async def _pace(rt: Runtime, seconds: float) -> None:
    await asyncio.sleep(0 if math.isinf(rt.speed) else seconds / rt.speed)


async def _wait_for_caller(rt: Runtime, conv: Conversation, step: WaitForCaller) -> None:
    detector = EnergyDetector(step.threshold_dbfs, step.min_speech_ms, step.end_silence_ms)
    # Like the real service's VAD, which listens all the time: an utterance the caller finished since the
    # last one we consumed still counts, even if it ended before this step began (a fast caller).
    detector.feed(bytes(conv.recent_audio), conv.audio_rate)
    conv.listeners.append(detector)
    try:
        heard = await rt.wait_until(lambda: detector.utterance_ended, step.timeout_s)
    finally:
        conv.listeners.remove(detector)
    if heard:
        conv.recent_audio.clear()  # consumed: the next WaitForCaller waits for new speech
    if not heard:
        conv.fail(f"the caller did not speak and stop within {step.timeout_s:g} s")


async def _wait_for_text(rt: Runtime, conv: Conversation, step: WaitForText) -> None:
    def arrived() -> bool:
        while conv.pending_texts:
            text = conv.pending_texts.popleft()
            if step.contains is None or step.contains in text:
                return True
        return False

    if not await rt.wait_until(arrived, step.timeout_s):
        wanted = f"containing {step.contains!r}" if step.contains is not None else "at all"
        conv.fail(f"no realtime_input text {wanted} within {step.timeout_s:g} s")


async def _say(rt: Runtime, conv: Conversation, conn: Connection, index: int, step: Say) -> None:
    pcm = synth_speech(step.text, _OUT_RATE, pitch_hz=step.pitch_hz, seconds=step.seconds)
    size = 2 * max(1, round(_OUT_RATE * step.chunk_ms / 1000))
    chunks = [pcm[i : i + size] for i in range(0, len(pcm), size)]
    words = split_words(step.text, len(chunks))
    conv.next_step = index + 1  # from here on, a resumed connection does not say it again
    try:
        await _speak_turn(rt, conv, conn, step, pcm, chunks, words)
    finally:
        conv.turns_spoken += 1  # counted when the turn is over: complete, cut by the caller or by the line
        rt.notify()
    await send_resumable(rt, conv, conn)


async def _speak_turn(
    rt: Runtime, conv: Conversation, conn: Connection, step: Say, pcm: bytes, chunks: list[bytes], words: list[str]
) -> None:
    await _send_not_resumable(conv, conn)
    barge = EnergyDetector(rt.barge_in_threshold_dbfs)
    if step.interruptible:
        conv.listeners.append(barge)
    try:
        interrupted = await _stream(rt, conn, chunks, words, step.chunk_ms / 1000, lambda: barge.longest_loud_run_ms >= rt.barge_in_ms)
    finally:
        if step.interruptible:
            conv.listeners.remove(barge)
    if interrupted:
        conv.barge_ins += 1
        await conn.send({"serverContent": {"interrupted": True}}, "interrupted")
        await conn.send({"serverContent": {"turnComplete": True}}, "turn_complete")
        return
    await conn.send({"serverContent": {"generationComplete": True}}, "generation_complete")
    end: dict[str, Any] = {"serverContent": {"turnComplete": True}}
    if step.usage:
        prompt = conv.audio_bytes_in * _TOKENS_PER_AUDIO_S // (2 * conv.audio_rate)
        end["usageMetadata"] = usage_metadata(prompt, len(pcm) * _TOKENS_PER_AUDIO_S // (2 * _OUT_RATE))
    await conn.send(end, "turn_complete")


async def _stream(
    rt: Runtime, conn: Connection, chunks: list[bytes], words: list[str], chunk_s: float, barged: Callable[[], bool]
) -> bool:
    """Send the chunks at `speed` times real time; True if the caller barged in (the rest is cut)."""
    start = rt.now()
    for number, (chunk, text) in enumerate(zip(chunks, words), start=1):
        await conn.send(audio_content(chunk, text or None, rt.quirks.audio_extra_fields), "audio")
        due = 0.0 if math.isinf(rt.speed) else start + number * chunk_s / rt.speed - rt.now()
        if await rt.wait_until(barged, due):
            return True
    return False


async def _call_tools(rt: Runtime, conv: Conversation, conn: Connection, step: CallTools) -> None:
    calls = [(spec.id or conv.new_call_id(), spec) for spec in step.calls]
    sent_at = rt.now()
    for call_id, spec in calls:
        conv.open_calls[call_id] = (spec.name, sent_at)
    await _send_not_resumable(conv, conn)
    payload = [{"id": call_id, "name": spec.name, "args": dict(spec.args)} for call_id, spec in calls]
    await conn.send({"toolCall": {"functionCalls": payload}}, "tool_call")
    ids = [call_id for call_id, _ in calls]
    if not await rt.wait_until(lambda: not any(i in conv.open_calls for i in ids), step.timeout_s):
        for call_id, spec in calls:
            if conv.open_calls.pop(call_id, None) is not None:
                conv.fail(f"no tool_response for {call_id} ({spec.name}) within {step.timeout_s:g} s")
    await send_resumable(rt, conv, conn)
