"""`bench/soak`: many concurrent calls for a long time, with random goAways and dropped Live connections.

    bench/soak                          # 100 concurrent calls for 10 minutes
    bench/soak --calls 10 --minutes 0.5 # a quick run

`phonebridge serve --workers 1` runs as a subprocess (its RSS is what is measured), with `bench/agent.py`,
signatures on, pointed at a lean Live server in this process through the SDK's own environment. Each of
`--calls` slots keeps one call up for the whole run: a TwilioCaller (real-time pacing, marks, clear) talks
in turns (wait for the agent to finish, speak 1 s, expect an answer), hangs up after a random 0.5x-1.5x of
`--call-seconds`, and dials again. Meanwhile faults hit random Live connections, on average one every
`--fault-every` seconds: a goAway (timeLeft 2 s, then a close 1011 if the bridge is still there, as the
service does) or an abrupt drop (TCP abort, no close frame). The lean Live server issues a resumption handle
after each turn and resumes a connection to the state its handle stands for, like the service, so a
reconnection resumes (the report counts those) and loses whatever the bridge does not send again.

A call counts as dropped if the server closed it, if it could not be dialled, or if the agent stayed silent
for three utterances in a row; otherwise it completed. Reconnects come from the server's /metrics. RSS is
sampled once all slots are up (start), every 30 s, and before the last calls hang up (end); the first half
of the run is warm-up, and the second half may grow by at most 5 % (noise); judged on runs of 5 minutes or
more, since warm-up takes minutes.
Exit status: 0 when no call dropped, RSS held over the second half and the server exited 0 after SIGTERM,
1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from lean_live import LeanLive, Timeline, _Conversation
from procstat import rss_bytes

from phonebridge.testing.speech import synth_speech
from phonebridge.testing.twilio_caller import CallRejected, TwilioCaller

HERE = Path(__file__).resolve().parent
PUBLIC_URL = "https://soak.example.com"
AUTH_TOKEN = "soak-auth-token"
ACCOUNT_SID = "AC" + "5" * 32
ANSWER_TIMEOUT_S = 15.0  # after an utterance: the agent answers within this, or it counts as unanswered
SILENT_LIMIT = 3  # unanswered utterances in a row that make a call dropped
THINK_S = 0.3
RSS_NOISE = 0.05  # RSS growth over the second half of the run that still counts as noise
RSS_MIN_MINUTES = 5.0  # at 100 calls RSS fills the allocator's pools for 3-4 minutes before it is flat


class ChaosLive(LeanLive):
    """LeanLive that keeps its open sockets, so that faults can be injected into them."""

    def __init__(self) -> None:
        super().__init__(answer_s=1.5, tool_every=3)
        self.open: dict[int, tuple[web.WebSocketResponse, web.Request]] = {}
        self.connections_made = 0

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        # LeanLive's handler, minus the per-connection records it keeps for the latency bench (they would
        # grow for the whole soak in this process).
        ws = web.WebSocketResponse(max_msg_size=0, autoping=True)
        await ws.prepare(request)
        self.connections_made += 1
        conversation = _Conversation(ws, Timeline(), self._speech, self._tool_every, self.handles, self.loudness)
        self.open[id(ws)] = (ws, request)
        try:
            await conversation.run()
        finally:
            conversation.stop()
            self.open.pop(id(ws), None)
        return ws

    async def fault(self, rng: random.Random, counts: Counter[str]) -> None:
        """A goAway (then a close after timeLeft, if the client is still here) or an abrupt drop."""
        if not self.open:
            return
        ws, request = self.open[rng.choice(list(self.open))]
        if ws.closed or request.transport is None:
            return
        if rng.random() < 0.5:
            counts["drop"] += 1
            request.transport.abort()
            return
        counts["go_away"] += 1
        try:
            await ws.send_bytes(b'{"goAway":{"timeLeft":"2s"}}')
            await asyncio.sleep(2.0)
            if not ws.closed:
                await ws.close(code=1011, message=b"Deadline expired before operation could complete.")
        except (ConnectionError, RuntimeError):
            return


@dataclass
class Tally:
    completed: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    turns: int = 0
    unanswered: int = 0
    rss: list[tuple[float, int]] = field(default_factory=list)


@dataclass
class Run:
    server_url: str
    deadline: float
    call_seconds: float
    utterance: bytes
    tally: Tally
    rng: random.Random
    first_up: asyncio.Event = field(default_factory=asyncio.Event)
    up_slots: int = 0


async def one_call(run: Run) -> None:
    """Dial, talk in turns for a random while, hang up; the outcome goes into the tally."""
    caller = TwilioCaller(run.server_url, public_url=PUBLIC_URL, auth_token=AUTH_TOKEN, account_sid=ACCOUNT_SID,
                          speed=1.0)
    ends = min(run.deadline, time.monotonic() + run.call_seconds * run.rng.uniform(0.5, 1.5))
    try:
        await asyncio.wait_for(caller.dial(), 15)
        await caller.wait_for(lambda c: c.media_bytes_received > 0, ANSWER_TIMEOUT_S)  # the greeting
    except (CallRejected, TimeoutError, OSError, aiohttp.ClientError) as exc:
        run.tally.dropped[f"dial: {type(exc).__name__}"] += 1
        await caller.close()
        return
    silent = 0
    while caller.up and time.monotonic() < ends and silent < SILENT_LIMIT:
        silent = silent + 1 if not await one_turn(caller, run) else 0
    if caller.closed_by_server or not caller.up:
        run.tally.dropped[f"closed by server ({caller.close_code})"] += 1
    elif silent >= SILENT_LIMIT:
        run.tally.dropped["agent silent"] += 1
    else:
        run.tally.completed += 1
    await caller.hangup()


async def one_turn(caller: TwilioCaller, run: Run) -> bool:
    """Wait for the agent to finish, speak, and return whether it answered."""
    await until_agent_done(caller)
    seen = caller.media_bytes_received
    await caller.say(run.utterance)
    run.tally.turns += 1
    try:
        await caller.wait_for(lambda c: c.media_bytes_received > seen or not c.up, ANSWER_TIMEOUT_S)
    except TimeoutError:
        run.tally.unanswered += 1
        return False
    return caller.up


async def until_agent_done(caller: TwilioCaller) -> None:
    """Playback idle for a whole think time: the agent's audio arrives paced at real time, so the playback
    buffer runs empty between chunks and idle alone would make every turn a barge-in."""
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    while caller.up and time.monotonic() < deadline:
        try:
            await caller.wait_for(lambda c: c.playback_idle, max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            return
        before = caller.media_bytes_received
        await asyncio.sleep(THINK_S)  # the caller's own think time; new audio means the agent went on
        if caller.media_bytes_received == before:
            return


async def slot(run: Run, index: int, slots: int) -> None:
    await asyncio.sleep(index * 0.05)  # stagger the first dials
    first = True
    while time.monotonic() < run.deadline:
        call = asyncio.ensure_future(one_call(run))
        if first:
            first = False
            run.up_slots += 1
            if run.up_slots == slots:
                run.first_up.set()
        await call


async def chaos(live: ChaosLive, run: Run, every_s: float) -> None:
    tasks: set[asyncio.Task[None]] = set()
    while (left := run.deadline - time.monotonic()) > 0:
        wait = run.rng.expovariate(1.0 / every_s)
        await asyncio.sleep(min(wait, left))  # never outlive the run, however rare the faults
        if wait > left:
            break
        task = asyncio.ensure_future(live.fault(run.rng, run.tally.faults))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks, return_exceptions=True)


async def sample_rss(pid: int, run: Run, period_s: float = 30.0) -> None:
    while time.monotonic() < run.deadline - 1.0:
        run.tally.rss.append((time.monotonic(), rss_bytes(pid)))
        await asyncio.sleep(min(period_s, max(0.1, run.deadline - 1.0 - time.monotonic())))
    run.tally.rss.append((time.monotonic(), rss_bytes(pid)))


# -- the server under test ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    proc: asyncio.subprocess.Process
    url: str
    tail: list[str] = field(default_factory=list)
    errors: int = 0
    heap_trims: int = 0

    async def read_log(self, serving: asyncio.Event) -> None:
        """Drain the server's log for the whole run (a full pipe would stall it), keeping the last lines."""
        assert self.proc.stderr is not None
        while raw := await self.proc.stderr.readline():
            line = raw.decode(errors="replace").rstrip()
            if "phonebridge serving" in line:
                serving.set()
            if '"level": "error"' in line or "Traceback" in line:
                self.errors += 1
            if "heap trimmed" in line:
                self.heap_trims += 1
            self.tail = [*self.tail[-49:], line]
        serving.set()


async def start_server(live: ChaosLive) -> tuple[Server, asyncio.Task[None]]:
    port = free_port()
    env = {**os.environ, "GOOGLE_GEMINI_BASE_URL": live.base_url, "SSL_CERT_FILE": live.ca_file,
           "GEMINI_API_KEY": "soak-key", "PHONEBRIDGE_PUBLIC_URL": PUBLIC_URL, "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
           "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "PHONEBRIDGE_DRAIN_TIMEOUT_S": "10", "PHONEBRIDGE_LOG_LEVEL": "INFO",
           "PHONEBRIDGE_MAX_CALLS": "1000"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "phonebridge.cli", "serve", "--agent", str(HERE / "agent.py"), "--workers", "1",
        "--host", "127.0.0.1", "--port", str(port), env=env, stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    server = Server(proc, f"http://127.0.0.1:{port}")
    serving = asyncio.Event()
    reader = asyncio.create_task(server.read_log(serving))
    await asyncio.wait_for(serving.wait(), 30)
    if proc.returncode is not None:
        raise SystemExit("the server did not start:\n" + "\n".join(server.tail))
    return server, reader


async def metric_totals(url: str, name: str) -> dict[str, float]:
    """{label value: count} of one Prometheus counter of the server's /metrics."""
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as response:
        text = await response.text()
    pattern = re.compile(rf'^{name}_total\{{\w+="([^"]*)"\}} ([0-9.e+]+)$', re.MULTILINE)
    return {label: float(value) for label, value in pattern.findall(text)}


# -- the run --------------------------------------------------------------------------------------------


async def soak(args: argparse.Namespace) -> int:
    live = ChaosLive()
    await live.start()
    server, reader = await start_server(live)
    tally = Tally()
    utterance = synth_speech("where is my order, please", 8000, seconds=1.0)
    run = Run(server.url, time.monotonic() + args.minutes * 60 + args.calls * 0.05, args.call_seconds, utterance,
              tally, random.Random(args.seed))
    started = time.monotonic()
    try:
        slots = [asyncio.create_task(slot(run, i, args.calls)) for i in range(args.calls)]
        await asyncio.wait_for(run.first_up.wait(), 60 + args.calls * 0.2)
        rss_task = asyncio.create_task(sample_rss(server.proc.pid, run))
        chaos_task = asyncio.create_task(chaos(live, run, args.fault_every))
        await asyncio.gather(*slots)
        await asyncio.gather(rss_task, chaos_task)
        reconnects = await metric_totals(server.url, "phonebridge_live_reconnects")
        outcomes = await metric_totals(server.url, "phonebridge_calls")
    finally:
        if server.proc.returncode is None:
            server.proc.send_signal(signal.SIGTERM)
        exit_code = await asyncio.wait_for(server.proc.wait(), 60)
        await reader
        await live.stop()
    report(args, tally, reconnects, outcomes, exit_code, server, time.monotonic() - started, live)
    rss_held = len(tally.rss) < 2 or rss_verdict(args.minutes, *steady_growth(tally.rss)) != "FAIL"
    return 0 if not tally.dropped and exit_code == 0 and rss_held else 1


def steady_growth(samples: list[tuple[float, int]]) -> tuple[int, int]:
    """RSS at the run's half-way point and its growth from there to the end. The first half is warm-up: the
    allocator's pools and the interpreter's caches fill while the call mix reaches its steady state."""
    middle = (samples[0][0] + samples[-1][0]) / 2
    half = min(samples, key=lambda sample: abs(sample[0] - middle))[1]
    return half, samples[-1][1] - half


def rss_verdict(minutes: float, half: int, growth: int) -> str:
    if minutes < RSS_MIN_MINUTES:
        return f"n/a (judged on runs of {RSS_MIN_MINUTES:g} min or more: warm-up takes minutes)"
    return "PASS" if growth <= RSS_NOISE * half else "FAIL"


def report(args: argparse.Namespace, tally: Tally, reconnects: dict[str, float], outcomes: dict[str, float],
           exit_code: int, server: Server, wall_s: float, live: ChaosLive) -> None:
    mib = 1024 * 1024
    rss = [value for _, value in tally.rss]
    print(f"soak: {args.calls} concurrent calls for {args.minutes:g} min ({wall_s:.0f} s wall), seed {args.seed}")
    print(f"  calls completed      {tally.completed}")
    print(f"  calls dropped        {sum(tally.dropped.values())}  (target 0) {dict(tally.dropped) or ''}")
    print(f"  caller turns         {tally.turns} ({tally.unanswered} unanswered, re-asked)")
    print(f"  faults injected      {dict(tally.faults)}; Live connections {live.connections_made}, "
          f"{live.handles.resumed} resumed with a handle, {live.handles.unknown} with an unknown one")
    print(f"  reconnects           {sum(reconnects.values()):.0f} {({k: int(v) for k, v in reconnects.items()})}")
    print(f"  server call outcomes {({k: int(v) for k, v in outcomes.items()})}")
    if rss:
        print(f"  server RSS           start {rss[0] / mib:.1f} MiB, end {rss[-1] / mib:.1f} MiB, "
              f"peak {max(rss) / mib:.1f} MiB, growth {(rss[-1] - rss[0]) / mib:+.1f} MiB over {len(rss)} samples")
        half, growth = steady_growth(tally.rss)
        verdict = rss_verdict(args.minutes, half, growth)
        print(f"  RSS, second half     {half / mib:.1f} -> {rss[-1] / mib:.1f} MiB ({growth / mib:+.1f} MiB; target: "
              f"no growth beyond noise, <= {RSS_NOISE:.0%}) {verdict}")
        print("  RSS samples (MiB)    " + " ".join(f"{value / mib:.1f}" for value in rss))
    print(f"  server exit status   {exit_code} after SIGTERM; error log lines {server.errors}; "
          f"heap trims {server.heap_trims}")
    if exit_code != 0 or server.errors:
        print("  server log tail:\n    " + "\n    ".join(server.tail[-20:]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100, help="concurrent calls (default 100)")
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    parser.add_argument("--call-seconds", type=float, default=60.0, help="mean length of one call (default 60)")
    parser.add_argument("--fault-every", type=float, default=2.0,
                        help="mean seconds between injected faults across all connections (default 2)")
    parser.add_argument("--seed", type=int, default=1)
    return asyncio.run(soak(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
