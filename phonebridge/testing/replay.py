"""Replay a cassette through the current code: the whole bridge on loopback (BridgeHarness), the recorded
Twilio inbound events through a TwilioCaller, the recorded Live server messages through a LiveEmulator.

Release rule: events go in their recorded order. A recorded server message is released once the bridge has
sent, on this model connection, at least as many non-audio messages (texts, tool responses) and as much
caller audio as it had at that point of the recording; a recorded Twilio event once the bridge has sent
Twilio at least as many frames as it had then. Recorded inbound marks are skipped: the caller's own
playback buffer echoes the replay's marks. What the bridge does is recorded again and compared
(phonebridge.cassette.replay).

    async def test_my_agent_still_handles_the_refund_call():
        await assert_replays("tests/cassettes/refund.jsonl", agent=my_agent)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import enum
import math
import os
import tempfile
from collections import deque
from pathlib import Path
from typing import Any, Callable

from google.genai import types

from phonebridge.agent.definition import Agent
from phonebridge.audio import ulaw_decode
from phonebridge.errors import ToolError
from phonebridge.cassette.record import Cassette, Record, decode_bytes, load_cassette
from phonebridge.cassette.replay import ReplayResult, check_replayable, compare, conduct_of
from phonebridge.agent.schema import HandlerSignature
from phonebridge.testing.harness import BridgeHarness
from phonebridge.testing.live_emulator import Connection, LiveEmulator
from phonebridge.testing.live_script import Script
from phonebridge.testing.live_state import ConnectionGone
from phonebridge.testing.live_wire import decode_client_bytes
from phonebridge.testing.twilio_caller import TwilioCaller
from phonebridge.agent.tools import ToolRegistry, ToolSpec

__all__ = ["assert_replays", "replay_cassette", "with_recorded_tools"]

STALLED_TIMEOUT_S = 0.5  # once one step stalled the replay has diverged: finish quickly
BUILTIN_TOOLS = ("end_call", "transfer_call")


async def replay_cassette(
    path: str | os.PathLike[str],
    agent: Agent | None = None,
    *,
    recorded_tools: bool = False,
    speed: float = math.inf,
    step_timeout_s: float = 10.0,
) -> ReplayResult:
    """Replay one cassette; `agent` None replays with an agent rebuilt from the recording and its tool results."""
    cassette = load_cassette(path)
    check_replayable(cassette)  # before anything runs: a bad record is a CassetteError naming its line
    if agent is None:
        agent = agent_from_cassette(cassette)
    elif recorded_tools:
        agent = with_recorded_tools(agent, cassette)
    expected = conduct_of(cassette)
    result = ReplayResult(str(path), expected=expected)
    if not cassette.complete:
        result.notes.append("the cassette has no end line: the recording was cut short")
    emulator = LiveEmulator(Script([], name="replay"), speed=math.inf, unknown_tool_response_close=None)
    with tempfile.TemporaryDirectory(prefix="phonebridge-replay-") as out:
        async with BridgeHarness(agent, emulator=emulator, speed=speed, record_dir=out) as harness:
            caller = harness.caller(call_sid=str(cassette.header.get("call_sid") or "") or None)
            await caller.dial()
            driver = _Driver(cassette, emulator, caller, speed, step_timeout_s, result.notes)
            await driver.run()
            await harness.wait_idle(step_timeout_s)
        actual = conduct_of(load_cassette(next(Path(out).glob("*.jsonl"))))
    result.actual = actual
    result.divergences = compare(expected, actual)
    return result


async def assert_replays(path: str | os.PathLike[str], agent: Agent | None = None, **options: Any) -> ReplayResult:
    """replay_cassette, raising AssertionError with the readable diff when the replay diverges."""
    result = await replay_cassette(path, agent, **options)
    if not result.ok:
        raise AssertionError(result.diff)
    return result


class _Driver:
    """Feeds one recorded call to the bridge, each event once the bridge has caught up with the recording."""

    def __init__(self, cassette: Cassette, emulator: LiveEmulator, caller: TwilioCaller, speed: float,
                 timeout_s: float, notes: list[str]) -> None:
        self._cassette, self._emu, self._caller = cassette, emulator, caller
        self._speed, self._timeout, self._notes = speed, timeout_s, notes
        self._conn: Connection | None = None
        self._seen = _Received()
        self._want_audio = self._want_other = self._want_twilio = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        for record in self._cassette.records:
            if math.isfinite(self._speed):
                await asyncio.sleep(max(0.0, started + record.t / self._speed - loop.time()))
            await self._step(record)
        if self._caller.up:  # the recording ended without the caller's stop: the bridge ended the call
            with contextlib.suppress(TimeoutError):
                await self._caller.closed(self._timeout)
            if self._caller.up:
                self._notes.append("the bridge did not end the call as it did in the recording")
                await self._caller.hangup()

    async def _step(self, record: Record) -> None:
        data = record.data if isinstance(record.data, dict) else {}
        if record.kind == "model_connect":
            await self._next_connection(record)
        elif record.kind == "model_out":
            body = data.get("realtime_input") or {}
            if "audio" in body:
                self._want_audio += len(decode_bytes(str(body["audio"].get("data", ""))))
            else:
                self._want_other += 1
        elif record.kind == "twilio_out":
            self._want_twilio += 1
        elif record.kind == "model_in":
            await self._release(record, data)
        elif record.kind == "twilio_in":
            await self._twilio_in(record, data)

    async def _next_connection(self, record: Record) -> None:
        try:
            self._conn = await self._emu.next_connection(self._timeout)
        except TimeoutError:
            self._stall(record, "a new model connection")
            self._conn = None
        self._seen = _Received()
        self._want_audio = self._want_other = 0

    async def _release(self, record: Record, data: dict[str, Any]) -> None:
        conn = self._conn
        if conn is None or not conn.open:
            return
        audio, other = self._want_audio, self._want_other
        if not await self._emu.wait_until(lambda: self._seen.caught_up(conn, audio, other), self._timeout):
            self._stall(record, f"{other} texts/tool responses and {audio} bytes of caller audio to the model "
                                f"(got {self._seen.other} and {self._seen.audio})")
        with contextlib.suppress(ConnectionGone):
            await conn.send_raw(server_message(data))

    async def _twilio_in(self, record: Record, data: dict[str, Any]) -> None:
        event = data.get("event")
        if event in ("connected", "start", "mark") or not self._caller.up:
            return  # dial() sent connected and start; marks are the caller's own echoes
        want = self._want_twilio
        try:
            await self._caller.wait_for(lambda c: len(c.events) >= want, self._timeout)
        except TimeoutError:
            self._stall(record, f"{want} frames to Twilio (got {len(self._caller.events)})")
        if event == "media":
            payload = decode_bytes(str(data.get("media", {}).get("payload", "")))
            await self._caller.say(ulaw_decode(payload))
        elif event == "dtmf":
            await self._caller.press(str(data.get("dtmf", {}).get("digit", "")))
        elif event == "stop":
            await self._caller.hangup()
        elif "raw" in data:
            await self._caller.send_raw(str(data["raw"]))
        else:
            await self._caller.send_raw(data)

    def _stall(self, record: Record, waited_for: str) -> None:
        self._notes.append(f"stalled at t={record.t:.3f} s ({record.kind}): the bridge never sent {waited_for}")
        self._timeout = STALLED_TIMEOUT_S


class _Received:
    """What the bridge has sent on one emulator connection, counted incrementally (re-checked on every event)."""

    def __init__(self) -> None:
        self.index = self.audio = self.other = 0

    def caught_up(self, conn: Connection, audio: int, other: int) -> bool:
        for item in conn.received[self.index :]:
            if item.kind == "audio":
                data = item.message["realtimeInput"]["audio"].get("data", "")
                self.audio += len(decode_client_bytes(str(data)))
            elif item.kind in ("text", "tool_response"):
                self.other += 1
        self.index = len(conn.received)
        return self.audio >= audio and self.other >= other


def server_message(data: dict[str, Any]) -> dict[str, Any]:
    """A recorded LiveServerMessage (snake_case JSON) as the service sends it: camelCase, standard base64."""
    message = types.LiveServerMessage.model_validate(data)
    wire: dict[str, Any] = _wire(message.model_dump(mode="python", by_alias=True, exclude_none=True))
    return wire


def _wire(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _wire(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_wire(item) for item in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, enum.Enum):
        return value.value
    return value


# -- tool handlers that answer from the recording ----------------------------------------------------------


def with_recorded_tools(agent: Agent, cassette: Cassette) -> Agent:
    """A copy of `agent` whose own tools answer with the recorded results, call by call (built-ins stay real:
    end_call and transfer_call end the call, which the replay must see)."""
    answers = _recorded_answers(cassette, handler_ran_only=True)
    registry = ToolRegistry()
    for spec in agent.tools:
        registry.add(dataclasses.replace(
            spec, fn=_answer_from(answers, spec.name), is_async=True, context_param=None,
        ))
    return dataclasses.replace(agent, tools=registry)


def agent_from_cassette(cassette: Cassette) -> Agent:
    """An agent as the recording saw it: instructions, greeting, declared tools answering with recorded results."""
    connects = cassette.of_kind("model_connect")
    config = connects[0].data.get("config", {}) if connects else {}
    parts = (config.get("system_instruction") or {}).get("parts") or []
    instructions = " ".join(str(p.get("text", "")) for p in parts).strip() or "A replayed agent."
    declarations = [d for tool in config.get("tools") or [] for d in tool.get("function_declarations") or []]
    names = {str(d.get("name")) for d in declarations}
    agent = Agent(
        instructions=instructions, greeting=_recorded_greeting(cassette), end_call="end_call" in names,
        transfer_to="+15005550006" if "transfer_call" in names else None,
    )
    answers = _recorded_answers(cassette)
    for declared in declarations:
        name = str(declared.get("name"))
        if name in BUILTIN_TOOLS:
            continue
        declaration = types.FunctionDeclaration.model_validate(declared)
        agent.tools.add(ToolSpec(
            name=name, description=declaration.description or "", fn=_answer_from(answers, name), is_async=True,
            timeout_s=None, context_param=None, declaration=declaration,
            signature=_AnyArguments(declaration.description or "", (), None),
        ))
    return agent


@dataclasses.dataclass(frozen=True)
class _AnyArguments(HandlerSignature):
    """The recorded tool took these arguments once: pass them through as they come."""

    def bind(self, args: Any) -> dict[str, Any]:
        return dict(args or {})


def _recorded_greeting(cassette: Cassette) -> str | None:
    """The first text the bridge sent the model, unless a keypress (also sent as text) came first."""
    for record in cassette.records:
        if record.kind == "twilio_in" and isinstance(record.data, dict) and record.data.get("event") == "dtmf":
            return None
        if record.kind == "model_out" and "text" in (record.data.get("realtime_input") or {}):
            return str(record.data["realtime_input"]["text"])
    return None


def _recorded_answers(cassette: Cassette, *, handler_ran_only: bool = False) -> dict[str, deque[dict[str, Any]]]:
    """Recorded results by tool name, in call order. With real argument checks, calls refused before the
    handler ran (unknown tool, invalid arguments) are refused again in the replay: they take no answer."""
    answers: dict[str, deque[dict[str, Any]]] = {}
    for record in cassette.of_kind("tool"):
        if handler_ran_only and record.data.get("status") in ("invalid", "unknown"):
            continue
        answers.setdefault(str(record.data.get("name")), deque()).append(record.data)
    return answers


def _answer_from(answers: dict[str, deque[dict[str, Any]]], name: str) -> Callable[..., Any]:
    async def recorded(**_: Any) -> Any:
        queue = answers.get(name)
        if not queue:
            raise ToolError(f"the recording has no more results for {name}")
        answer = queue.popleft()
        if answer.get("status") == "cancelled":
            await asyncio.Event().wait()  # the model cancelled it in the recording: it will again
        response = answer.get("response") or {}
        if answer.get("status") == "error":
            raise ToolError(str(response.get("error", "")))
        return response

    recorded.__name__ = name
    return recorded
