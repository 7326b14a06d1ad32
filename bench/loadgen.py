"""The load generator: one process holding the Live server (bench/lean_live.py) and N TwilioCallers.

Protocol with bench/main.py (one JSON object per line):
  stdout  {"base_url": ..., "ca_file": ...}                  the Live server is up: start `phonebridge serve`
  stdin   {"server_url", "serve_pid", "calls", "seconds", "public_url", "auth_token", "account_sid"}
  stdout  {"result": {...}}                                   then exit
Both sides of the bridge live in this one process on purpose: they share a core anyway (the bridge has the
other one), every timestamp comes from one clock, and pairing caller i with Live connection i is exact
because calls are dialled one at a time, each waiting for its own Live connection.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from correlate import inbound_latencies, outbound_latencies, pair_next, summary
from lean_caller import LeanCaller
from lean_live import LeanLive, Timeline
from procstat import CpuWindow, probe_loop_lag, rss_bytes

import samplers

from phonebridge.testing.speech import synth_speech
from phonebridge.testing.twilio_caller import TwilioCaller

RATE = 8000
WARMUP_S = 1.0  # after the last call is up, before measuring
SAMPLER_LEAD_S = 0.2  # samplers start this long before the window: their start-up stays out of it
DIAL_TIMEOUT_S = 10.0
BARGE_EVERY = 4  # every 4th caller turn talks over the agent
THINK_S = 0.3  # the caller's pause after the agent stops, before answering
# One turn: think, a second of speech, the Live server's 1.5 s answer. Each call starts its first turn at its
# own point of that cycle (golden-ratio spacing: evenly spread for any number of calls), as independent
# callers do. Started together, every call spoke, answered, called its tool and barged in at the same moment:
# the 100-call p99 swung between 2 and 180 ms from run to run on bursts no real line sees. `lockstep` in the
# spec keeps the old start, for comparison with figures measured that way.
CYCLE_S = THINK_S + 1.0 + 1.5
GOLDEN = (5**0.5 - 1) / 2


@dataclass
class Call:
    caller: LeanCaller
    live: Timeline
    stalls: list[str] = field(default_factory=list)


def phase(index: int) -> float:
    """Where in the turn cycle call `index` starts: 0, 0.618, 0.236, ... of CYCLE_S."""
    return (index * GOLDEN) % 1.0 * CYCLE_S


async def converse(call: Call, utterance: bytes, deadline: float, offset: float = 0.0) -> None:
    """Speak in turns with the agent until `deadline`, from `offset` seconds on: wait for it to finish, think,
    answer; every BARGE_EVERY-th turn talk over it 0.4 s after it starts instead."""
    caller, turn = call.caller, 0
    try:
        await caller.wait_for(lambda c: c.media_bytes_received > 0, DIAL_TIMEOUT_S)  # the greeting
        await asyncio.sleep(offset)  # the caller's own timing: this call's place in the cycle
        while time.monotonic() < deadline and caller.up:
            turn += 1
            if turn % BARGE_EVERY == 0:
                await asyncio.sleep(0.4)  # the caller's own timing: talk over the agent mid-sentence
            else:
                await _until_agent_done(caller)
            seen = caller.media_bytes_received
            await caller.say(utterance, rate=RATE)
            await caller.wait_for(functools.partial(_heard_more, seen=seen), DIAL_TIMEOUT_S)
    except TimeoutError as exc:
        if caller.up and time.monotonic() < deadline:  # a wait cut short by the end of the run is no stall
            call.stalls.append(str(exc)[:200])


def _heard_more(caller: TwilioCaller, seen: int) -> bool:
    return caller.media_bytes_received > seen


async def _until_agent_done(caller: TwilioCaller) -> None:
    while caller.up:
        await caller.wait_for(lambda c: c.playback_idle, DIAL_TIMEOUT_S)
        before = caller.media_bytes_received
        await asyncio.sleep(THINK_S)  # the caller's think time; new audio means the agent went on
        if caller.media_bytes_received == before and caller.playback_idle:
            return


async def dial_all(live: LeanLive, spec: dict[str, Any]) -> tuple[list[Call], int]:
    calls: list[Call] = []
    failed = 0
    for _ in range(int(spec["calls"])):
        caller = LeanCaller(
            spec["server_url"], public_url=spec["public_url"], auth_token=spec["auth_token"],
            account_sid=spec["account_sid"],
        )
        try:
            await asyncio.wait_for(caller.dial(), DIAL_TIMEOUT_S)
            timeline = await asyncio.wait_for(live.connections.get(), DIAL_TIMEOUT_S)
        except (TimeoutError, OSError, Exception) as exc:  # noqa: BLE001 - counted and reported, the run goes on
            print(f"dial failed: {exc!r}", file=sys.stderr)
            failed += 1
            await caller.close()
            continue
        calls.append(Call(caller, timeline))
    return calls, failed


def media_frames(caller: TwilioCaller) -> tuple[list[tuple[float, int]], list[float]]:
    """(arrival, size) of each media frame and the arrival of each clear, in monotonic seconds."""
    assert caller.started_at is not None
    frames: list[tuple[float, int]] = []
    clears: list[float] = []
    for received in caller.events:
        at = caller.started_at + received.t
        kind = received.message.get("event")
        if kind == "media":
            payload = received.message["media"]["payload"]
            frames.append((at, len(payload) * 3 // 4 - payload.count("=")))
        elif kind == "clear":
            clears.append(at)
    return frames, clears


def analyse(calls: list[Call], window: tuple[float, float]) -> dict[str, Any]:
    inbound: list[float] = []
    outbound: list[float] = []
    first: list[float] = []
    clear: list[float] = []
    tool_start: list[float] = []
    tool_reply: list[float] = []
    missing = 0
    for call in calls:
        inbound += inbound_latencies(call.caller.frame_times, call.live.audio_in, window)
        frames, clears = media_frames(call.caller)
        per_chunk, firsts, lost = outbound_latencies(call.live.turns, frames, window)
        outbound, first, missing = outbound + per_chunk, first + firsts, missing + lost
        clear += pair_next(call.live.interrupted, clears, window)
        for sent, (received, response) in zip(call.live.tool_calls, call.live.tool_responses):
            if window[0] <= sent < window[1] and "started" in response:
                tool_start.append(float(response["started"]) - sent)
                tool_reply.append(received - float(response["returned"]))
    return {
        "inbound": summary(inbound), "outbound": summary(outbound), "first_audio": summary(first),
        "clear": summary(clear), "tool_start": summary(tool_start), "tool_reply": summary(tool_reply),
        "negative": sum(1 for v in inbound + outbound if v < 0), "missing_chunks": missing,

        "stalls": sum(len(c.stalls) for c in calls), "stall_examples": [s for c in calls for s in c.stalls][:3],
        "barge_ins": sum(len(c.live.interrupted) for c in calls),
        "tool_calls": sum(len(c.live.tool_responses) for c in calls),
    }


async def scrape(server_url: str) -> str:
    """The server's /metrics text ("" if it cannot be had: the bench then prints n/a for its histograms)."""
    try:
        async with aiohttp.ClientSession() as session, session.get(server_url + "/metrics") as response:
            return await response.text()
    except (aiohttp.ClientError, OSError):
        return ""


async def run_step(live: LeanLive, spec: dict[str, Any]) -> dict[str, Any]:
    serve_pid, seconds = int(spec["serve_pid"]), float(spec["seconds"])
    rss_before = rss_bytes(serve_pid)
    utterance_pcm = synth_speech("where is my order please", RATE, seconds=1.0)
    calls, failed = await dial_all(live, spec)
    lockstep = bool(spec.get("lockstep", False))
    warmup = WARMUP_S if lockstep else WARMUP_S + CYCLE_S  # every call in its steady state before measuring
    start = time.monotonic() + warmup
    window = (start, start + seconds)
    tasks = [asyncio.ensure_future(converse(c, utterance_pcm, window[1], 0.0 if lockstep else phase(i)))
             for i, c in enumerate(calls)]
    lags: list[float] = []
    stop = asyncio.Event()
    prober = asyncio.ensure_future(probe_loop_lag(lags, stop))
    cpu = CpuWindow({"serve": serve_pid, "loadgen": os.getpid()})
    # pacing of the run itself: measure a steady state; the samplers' fork and exec fall just before the window
    await asyncio.sleep(max(0.0, warmup - SAMPLER_LEAD_S))
    sampling = samplers.start(serve_pid, seconds + SAMPLER_LEAD_S, spec.get("profile"), spec.get("perf"))
    await asyncio.sleep(min(warmup, SAMPLER_LEAD_S))
    metrics_before = await scrape(spec["server_url"])
    cpu.start()
    lag_from = len(lags)
    await asyncio.sleep(seconds)
    share = cpu.stop()
    metrics_after = await scrape(spec["server_url"])
    rss_during = rss_bytes(serve_pid)
    stop.set()
    await asyncio.gather(*[asyncio.wait_for(c.caller.hangup(), 5.0) for c in calls], return_exceptions=True)
    await asyncio.gather(*tasks, prober, return_exceptions=True)
    result = analyse(calls, window)
    samplers.finish(sampling, 30.0)  # each stops by itself with the window: this waits for its file
    n = max(1, len(calls))
    result.update({
        "calls": len(calls), "failed_dials": failed, "seconds": seconds, "lockstep": lockstep,
        "serve_cpu": share["serve"], "loadgen_cpu": share["loadgen"],
        "serve_rss_before": rss_before, "serve_rss_during": rss_during,
        "rss_per_call": (rss_during - rss_before) / n, "cpu_per_call": share["serve"] / n,
        "loadgen_lag": summary(lags[lag_from:]),
        "metrics_before": metrics_before, "metrics_after": metrics_after,  # the server's histograms, both ends
    })
    return result


async def main() -> int:
    live = LeanLive()
    await live.start()
    print(json.dumps({"base_url": live.base_url, "ca_file": live.ca_file}), flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if not line.strip():
        await live.stop()
        return 1
    # The generator's own heap of timestamps grows through the step; its full GC collections would stall
    # both sides of every call at once and be counted as the bridge's latency. A step is bounded: no GC.
    gc.collect()
    gc.disable()
    try:
        result = await run_step(live, json.loads(line))
    finally:
        gc.enable()
        await live.stop()
    print(json.dumps({"result": result}), flush=True)  # NaN (no samples) is written as NaN: json reads it
    return 0


if __name__ == "__main__":
    # uvloop when installed (the test and fast extras): the generator's own loop is what saturates first.
    from phonebridge.cli import run_loop

    sys.exit(run_loop(main()))
