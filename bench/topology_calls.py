"""Callers for bench/topology: real-time TwilioCallers through the TLS proxy, each call's outcome, and the
longest silence its caller heard. The arithmetic (outcome, gaps) is pure and tested without a network."""

from __future__ import annotations

import asyncio
import math
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import aiohttp

from phonebridge.testing.live_script import Say, Script, WaitForCaller, WaitForText
from phonebridge.testing.twilio_caller import CallRejected, TwilioCaller
from topology_procs import ACCOUNT_SID, AUTH_TOKEN, Nginx

GREETING_S = 0.8
ANSWER_S = 0.8
QUESTION = "When do you close tonight?"
HEARD_SLACK_S = 0.06  # the resampler's flush may leave a turn a few ms short of its Say's length
RATE = 8000


def call_script(turns: int) -> Script:
    """The model's side of every call: a greeting, then one answer per caller utterance."""
    steps: list[object] = [WaitForText(), Say("Hello, thanks for calling.", seconds=GREETING_S)]
    for _ in range(turns):
        steps += [WaitForCaller(), Say("We close at ten tonight.", seconds=ANSWER_S)]
    return Script(steps)  # type: ignore[arg-type]


@dataclass
class CallRecord:
    index: int
    started: float  # time.time() when dialled
    outcome: str = "pending"  # completed | dropped | refused | error
    detail: str = ""
    twiml: str = ""
    greeted: asyncio.Event = field(default_factory=asyncio.Event)
    longest_gap_s: float = 0.0
    gap_at_s: float = 0.0  # where on the call's timeline the longest gap ended
    ended: float = 0.0


def intervals(pieces: list[tuple[float, bytes]], speech_only: bool = False) -> list[tuple[float, float]]:
    """Merged (start, end) seconds of timeline pieces of 8 kHz mu-law; `speech_only` skips silent frames."""
    merged: list[tuple[float, float]] = []
    for start, chunk in sorted(pieces):
        if speech_only and chunk.count(0xFF) == len(chunk):
            continue
        end = start + len(chunk) / RATE
        if merged and start <= merged[-1][1] + 1e-3:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def longest_gap(heard: list[tuple[float, bytes]], sent: list[tuple[float, bytes]]) -> tuple[float, float]:
    """The longest silence the caller heard between the agent's first and last audio, not counting while the
    caller spoke: dead air mid-turn, or waiting for the reply after they stopped talking."""
    played, spoken = intervals(heard), intervals(sent, speech_only=True)
    gap, at = 0.0, 0.0
    for (_, end), (nxt, _) in zip(played, played[1:]):
        quiet_from = max([end] + [s_end for s_start, s_end in spoken if end <= s_end <= nxt])
        if nxt - quiet_from > gap:
            gap, at = nxt - quiet_from, nxt
    return gap, at


def has_fallback_after_connect(twiml: str) -> bool:
    """What Twilio runs when the stream ends without a hang-up: verbs after <Connect>."""
    verbs = [child.tag for child in ET.fromstring(twiml)]
    return "Connect" in verbs and any(v in ("Say", "Dial", "Play") for v in verbs[verbs.index("Connect") + 1 :])


async def place_call(nginx: Nginx, record: CallRecord, turns: int, timeout: float = 30.0) -> CallRecord:
    """One call through the proxy, signed over the public URL, paced in real time, talking `turns` times."""
    caller = TwilioCaller(nginx.url, public_url=nginx.url, auth_token=AUTH_TOKEN, account_sid=ACCOUNT_SID,
                          speed=1.0, ssl_context=nginx.tls.client)
    try:
        await caller.dial()
    except CallRejected as exc:
        polite = exc.status == 200 and "<Hangup" in exc.body
        return _end(record, "refused" if polite else "error", f"HTTP {exc.status}: {exc.reason}")
    except (aiohttp.ClientError, OSError) as exc:
        return _end(record, "error", f"dial: {exc!r}")
    record.twiml = caller.twiml
    try:
        expected = GREETING_S
        for turn in range(turns + 1):
            await caller.wait_for(lambda c, expected=expected: not c.up or (c.heard_seconds >= expected - HEARD_SLACK_S
                                                          and c.playback_idle), timeout)
            record.greeted.set()
            if not caller.up:
                return _end(record, "dropped", f"closed by the server (code {caller.close_code}) in turn {turn}")
            if turn < turns:
                await caller.say(QUESTION)
                expected += ANSWER_S
        return _end(record, "completed")
    except (aiohttp.ClientError, ConnectionError) as exc:  # the socket went away under a frame being sent
        return _end(record, "dropped", f"closed by the server while the caller spoke: {exc!r}")
    except TimeoutError as exc:
        return _end(record, "error", str(exc))
    finally:
        # The leg core's exact (start, bytes) records; heard_timeline() would blur them into rendered PCM.
        record.longest_gap_s, record.gap_at_s = longest_gap(caller._core.heard, caller._core.sent)
        record.greeted.set()
        await caller.hangup()


def _end(record: CallRecord, outcome: str, detail: str = "") -> CallRecord:
    record.outcome, record.detail, record.ended = outcome, detail, time.time()
    record.greeted.set()
    return record


class Load:
    """Calls placed through the proxy: a wave at once, or a steady trickle until stopped."""

    def __init__(self, nginx: Nginx, turns: int) -> None:
        self.nginx, self.turns = nginx, turns
        self.records: list[CallRecord] = []
        self._tasks: list[asyncio.Task[CallRecord]] = []
        self._stop = asyncio.Event()
        self._more = asyncio.Event()

    def dial(self) -> CallRecord:
        record = CallRecord(len(self.records), time.time())
        self.records.append(record)
        self._more.set()
        self._tasks.append(asyncio.create_task(place_call(self.nginx, record, self.turns)))
        return record

    async def wave(self, n: int) -> list[CallRecord]:
        """`n` calls at once; returns when every one has heard its greeting (or ended)."""
        records = [self.dial() for _ in range(n)]
        await asyncio.gather(*(r.greeted.wait() for r in records))
        return records

    async def trickle(self, interval_s: float) -> None:
        """A new call every `interval_s` until `stop_trickle()`: arrivals that do not wait for the deploy."""
        while not self._stop.is_set():
            self.dial()
            try:
                async with asyncio.timeout(interval_s):
                    await self._stop.wait()
            except TimeoutError:
                continue

    async def dialled(self, n: int) -> None:
        """Until `n` calls have been placed in all."""
        while len(self.records) < n:
            self._more.clear()
            await self._more.wait()

    def stop_trickle(self) -> None:
        self._stop.set()

    async def finish(self) -> list[CallRecord]:
        await asyncio.gather(*self._tasks)
        return self.records

    def counts(self) -> dict[str, float]:
        outcomes = [r.outcome for r in self.records]
        gaps = [r.longest_gap_s for r in self.records if r.outcome in ("completed", "dropped")]
        return {"started": len(outcomes), **{o: outcomes.count(o) for o in ("completed", "dropped", "refused", "error")},
                "longest_gap_s": round(max(gaps, default=math.nan), 3)}

    def details(self) -> dict[str, int]:
        """How many calls ended with each distinct detail (why they dropped, were refused or failed)."""
        found: dict[str, int] = {}
        for record in self.records:
            if record.detail:
                key = record.detail[:160]
                found[key] = found.get(key, 0) + 1
        return found

    def worst(self, n: int = 3) -> list[str]:
        """The calls with the longest gaps, for the report."""
        ranked = sorted(self.records, key=lambda r: r.longest_gap_s, reverse=True)[:n]
        return [f"call {r.index} (dialled at +{r.started - self.records[0].started:.1f} s): {r.longest_gap_s:.3f} s"
                f" ending at {r.gap_at_s:.2f} s into the call, {r.outcome}" for r in ranked]
