"""Memory limits: every per-call buffer is bounded, and a stalled Twilio socket cannot grow memory.

A stalled Twilio leg (it stops reading) must push back on the model connection instead of piling the
agent's audio up in the bridge: the bridge awaits each send, aiohttp waits for the socket to drain, so
the model's turn simply cannot finish until the caller reads again. The one place that holds audio on
purpose (caller audio while the model connection switches) is a fixed-size ring.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
import weakref
from typing import Any

import aiohttp
from google import genai

from phonebridge.agent.definition import Agent
from phonebridge.server.config import Settings
from phonebridge.live.link import REPLAY_FRAMES, LiveLink
from phonebridge.testing.harness import ACCOUNT_SID, AUTH_TOKEN, PUBLIC_URL, BridgeHarness
from phonebridge.testing.live_script import CallTools, Say, Script, ToolCallSpec, WaitForText
from tests.test_hostile import CONNECTED, media_socket_headers, start_frame

RCVBUF = 16 * 1024


def make_agent() -> Agent:
    return Agent(instructions="You are a test agent.", greeting="Greet the caller.")


async def test_caller_audio_held_during_a_model_switch_is_a_fixed_size_ring():
    async def sink(event: Any) -> None:
        raise AssertionError("no event expected")

    link = LiveLink(genai.Client(api_key="unused"), make_agent(), [], sink,
                    logger=logging.LoggerAdapter(logging.getLogger("test"), {}))
    frame = b"\x00\x01" * 320
    for _ in range(REPLAY_FRAMES * 10):  # 60 s of caller audio with no model connection
        await link.send_audio(frame)
    assert link.held_dropped == REPLAY_FRAMES * 9
    assert REPLAY_FRAMES == 300  # 6 s of 20 ms frames: the documented bound


def small_receive_buffer(addr_info: Any) -> socket.socket:
    """The stalled caller's socket: a small fixed receive buffer (no autotuning), like a slow mobile peer."""
    family, kind, proto, _, _ = addr_info
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    return sock


async def test_a_stalled_twilio_socket_pushes_back_on_the_model_instead_of_buffering_the_turn():
    seconds = 400.0  # over 4 MB of Twilio JSON: more than loopback socket buffers absorb (autotuned to ~4 MB)
    total_frames = round(seconds / 0.02)
    script = Script([WaitForText(), Say("A very long story. " * 20, seconds=seconds, chunk_ms=1000)])
    # This caller sends nothing after `start` (real Twilio would keep sending media): no media timeout here.
    settings = Settings(public_url=PUBLIC_URL, twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN,
                        model_connect_timeout_s=5.0, reconnect_attempts=2, media_timeout_s=600.0)
    async with BridgeHarness(make_agent(), script, settings=settings) as h:
        connector = aiohttp.TCPConnector(socket_factory=small_receive_buffer)
        async with aiohttp.ClientSession(connector=connector) as session:
            ws = await session.ws_connect(h.server_url + "/twilio/media", headers=media_socket_headers())
            await ws.send_str(json.dumps(CONNECTED))
            await ws.send_str(json.dumps(start_frame()))
            # ...and never read: the caller is stalled.
            conv_ready = await h.emulator.wait_until(lambda: bool(h.emulator.conversations), 10)
            assert conv_ready
            conv = h.emulator.conversations[0]
            session_ = next(iter(h.runtime.active.values()))
            # Either the model finishes sending the whole turn (the kernel's buffers on the model side absorb
            # it), or the back-pressure reaches the model too and its sends stall: how much the loopback
            # buffers hold varies with the machine's autotuning, and both show the bridge queues nothing.
            finished = await h.emulator.wait_until(lambda: conv.turns_spoken == 1, 15)
            sent_while_stalled = session_.stats.frames_out
            # The bridge forwarded only what the stalled socket's buffers took: it awaits each send rather than
            # queueing the rest (about 13,000 frames = 4 MB on this machine's loopback).
            assert sent_while_stalled < total_frames * 3 // 4, (finished, sent_while_stalled)
            # The caller reads again: the whole turn arrives, nothing was lost or reordered.
            media = 0
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT and '"media"' in message.data:
                    media += 1
                if media == total_frames:
                    break
            await ws.close()
        await h.wait_idle()
    stats = h.runtime.finished[-1]
    assert stats.frames_out == total_frames + 1  # the resampler's flushed tail is one short last frame
    print(f"frames sent while stalled: {sent_while_stalled} of {total_frames}")


async def test_a_finished_call_is_freed_by_reference_counting_alone():
    """A call's parts hold callbacks into its session; if the session kept them after the call, its whole
    object graph would wait for the cyclic GC's rare full collections (RSS climbed ~0.4 MiB a call at 100
    concurrent calls). With the collector off, an ended call that used tools, the hold sound and a
    reconnection must still be gone once it ends."""
    agent = Agent(instructions="You are a test agent.", greeting="Greet the caller.", hold_sound_after_s=0.0)
    release, started = asyncio.Event(), asyncio.Event()

    @agent.tool
    async def book(day: str) -> dict[str, str]:
        """Book a table."""
        started.set()
        await release.wait()
        return {"booked": day}

    script = Script([WaitForText(), Say("Hello."), CallTools((ToolCallSpec("book", {"day": "friday"}),)),
                     Say("You are booked.")])
    gc.collect()
    gc.disable()
    logging.disable(logging.CRITICAL)  # pytest's log capture keeps records, and a record's exception its frames
    try:
        async with BridgeHarness(agent, script) as h:
            async with h.caller(continuous=False):
                await asyncio.wait_for(started.wait(), 10)
                (session,) = h.runtime.active.values()
                freed = weakref.ref(session)
                del session
                await h.emulator.connections[0].drop()
                await h.emulator.wait_for(lambda: len(h.emulator.connections) >= 2)
                release.set()
                await h.emulator.wait_for(lambda: h.emulator.conversations[0].turns_spoken == 2)
            await h.wait_idle()
            stats = h.runtime.finished[-1]
            assert stats.hold_plays >= 1 and stats.tool_calls >= 1
            assert freed() is None, "the ended call's session is only reachable through a reference cycle"
    finally:
        logging.disable(logging.NOTSET)
        gc.enable()
