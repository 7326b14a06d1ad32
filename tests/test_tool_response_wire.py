"""The direct tool answer (phonebridge.live.frames.tool_response_message, outbound.send_tool_response_now) is, byte
for byte, what the SDK's `send_tool_response` sends, and is recorded as the SDK's path records it; for inputs it
does not rebuild exactly, and whenever websockets' `send` would wait or raise, the SDK's path sends instead.

The SDK's side is captured without touching its internals: a fake websocket given to its own AsyncSession (what
its `send_tool_response` hands `ws.send`), the far end of a real socket, and the LiveEmulator's parse."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import enum
import glob
import logging
import math
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from google import genai
from google.genai import types
from google.genai.live import AsyncSession
from websockets.asyncio.client import connect

import phonebridge.live.frames as live_frames
import phonebridge.live.outbound as outbound
from phonebridge.agent.definition import Agent
from phonebridge.agent.tool_response import to_response
import phonebridge.call.effects as fx
from phonebridge.call.actions import CallActions
from phonebridge.call.tool_types import ToolResult
from phonebridge.cassette.record import load_cassette
from phonebridge.live.events import ModelEvent, ToolCalls
from phonebridge.live.link import LiveLink
from phonebridge.testing.harness import BridgeHarness
from phonebridge.testing.live_emulator import LiveEmulator
from phonebridge.testing.live_script import CallTools, Say, Script, ToolCallSpec, WaitForText
from tests.test_live_frames import RawCapture, unmasked_frames


class FakeWebsocket:
    """Stands in for the SDK's socket: keeps what its AsyncSession passes to `send`."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, message: str) -> None:
        self.sent.append(message)


def sdk_session(ws: Any) -> AsyncSession:
    return AsyncSession(api_client=genai.Client(api_key="test")._api_client, websocket=ws)


async def by_sdk(results: list[ToolResult]) -> bytes:
    """What the SDK's send_tool_response writes for these results, as the UTF-8 websockets puts on the wire."""
    ws = FakeWebsocket()
    await sdk_session(ws).send_tool_response(
        function_responses=[types.FunctionResponse(id=r.id, name=r.name, response=r.response) for r in results])
    [message] = ws.sent
    return message.encode()


def sdk_record(results: list[ToolResult]) -> dict[str, Any]:
    """What the SDK's path has the recorder keep (outbound.send_tool_response's tap)."""
    taps: list[tuple[str, Any]] = []

    class Swallow:
        async def send_tool_response(self, **kwargs: Any) -> None:
            pass

    asyncio.run(outbound.send_tool_response(Swallow(), results, lambda kind, data: taps.append((kind, data))))
    [(kind, data)] = taps
    assert kind == "model_out"
    return data


def direct_record(results: list[ToolResult]) -> dict[str, Any]:
    items = live_frames.function_responses(results)
    assert items is not None
    return {"tool_response": {"function_responses": items}}


ODD_IDS = ['fc-"quoted"\\slash', "fc-é-日本-😀", "</script>\n\t\x00", "", " "]
REPRESENTATIVE: list[list[ToolResult]] = [
    [ToolResult("fc-1", "lookup", {"result": "done"})],
    [ToolResult("fc-1", "lookup", {})],
    [ToolResult("fc-1", "lookup", {"order": {"id": 7, "items": [{"sku": "A-1", "qty": 2, "price": 9.99}],
                                             "notes": None, "gift": False, "tags": []}, "deep": {"a": {"b": {}}}})],
    [ToolResult("fc-1", "lookup", {"text": "Grüße, 日本語, emoji 😀, quote \" backslash \\ newline \n tab \t nul \x00",
                                   "lone surrogate": "\ud800", "clé": "valeur", "": "empty key"})],
    [ToolResult("fc-1", "lookup", {"floats": [0.1, -0.0, 1e300, 5e-324, 1.5e-7, 123456789.123456789, 2.0 ** 53],
                                   "ints": [0, -1, 2 ** 64, -(10 ** 40)], "bools": [True, False], "null": None})],
    [ToolResult(f"fc-{i}", f"tool_{i}", {"result": i}) for i in range(5)],
    [ToolResult(call_id, "odd", {"id": call_id}) for call_id in ODD_IDS],
    [ToolResult("fc-1", "lookup", to_response({"when": datetime.date(2026, 1, 2), "nan": math.nan, "t": (1, 2)}))],
    [ToolResult("fc-1", "lookup", to_response(["a", 1, None]))],
    [ToolResult("fc-1", "lookup", {"error": "lookup failed with an internal error."})],
]


@pytest.mark.parametrize("results", REPRESENTATIVE, ids=range(len(REPRESENTATIVE)))
async def test_the_direct_message_is_the_sdks_byte_for_byte(results: list[ToolResult]) -> None:
    assert live_frames.tool_response_message(results) == await by_sdk(results)


@pytest.mark.parametrize("results", REPRESENTATIVE, ids=range(len(REPRESENTATIVE)))
def test_the_direct_path_records_what_the_sdks_path_records(results: list[ToolResult]) -> None:
    assert direct_record(results) == sdk_record(results)


class Shouting(str):
    pass


class Level(enum.IntEnum):
    HIGH = 1


class Ratio(float):
    pass


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"x": value}
    return value


# What the direct message does not rebuild exactly: each goes the SDK's way, which converts, refuses or raises.
SDK_ONLY: dict[str, ToolResult] = {
    "no id": ToolResult(None, "lookup", {"result": 1}),  # the SDK refuses it (Developer API)
    "int id": ToolResult(7, "lookup", {}),
    "str-subclass id": ToolResult(Shouting("fc-1"), "lookup", {}),
    "no name": ToolResult("fc-1", None, {}),
    "mapping response": ToolResult("fc-1", "lookup", collections.OrderedDict(a=1)),
    "bytes": ToolResult("fc-1", "lookup", {"data": b"\x00\xff"}),  # the SDK sends base64
    "bytes in a list": ToolResult("fc-1", "lookup", {"data": [b"\x00"]}),
    "datetime": ToolResult("fc-1", "lookup", {"at": datetime.datetime(2026, 1, 2, 3, 4)}),  # the SDK: isoformat
    "tuple": ToolResult("fc-1", "lookup", {"pair": (1, 2)}),
    "set": ToolResult("fc-1", "lookup", {"set": {1}}),
    "int key": ToolResult("fc-1", "lookup", {1: "one"}),
    "nested int key": ToolResult("fc-1", "lookup", {"m": {1: "one"}}),
    "nan": ToolResult("fc-1", "lookup", {"x": math.nan}),  # the recorder's JSON dump says null
    "infinity": ToolResult("fc-1", "lookup", {"x": [-math.inf]}),
    "str subclass": ToolResult("fc-1", "lookup", {"x": Shouting("hi")}),
    "int enum": ToolResult("fc-1", "lookup", {"x": Level.HIGH}),
    "float subclass": ToolResult("fc-1", "lookup", {"x": Ratio(0.5)}),
    "too deep": ToolResult("fc-1", "lookup", _nested(live_frames.MAX_DIRECT_DEPTH + 1)),
    "int past str()'s digit limit": ToolResult("fc-1", "lookup", {"x": 10 ** 5000}),
}


@pytest.mark.parametrize("shape", sorted(SDK_ONLY))
def test_a_shape_the_direct_message_does_not_rebuild_takes_the_sdks_path(shape: str) -> None:
    results = [ToolResult("fc-0", "fine", {"ok": True}), SDK_ONLY[shape]]  # one odd result sends the message the SDK's way
    assert live_frames.tool_response_message(results) is None
    assert live_frames.tool_response_message(results[:1]) is not None


def test_the_depth_bound_is_where_it_says() -> None:
    deepest = [ToolResult("fc-1", "lookup", _nested(live_frames.MAX_DIRECT_DEPTH))]
    assert live_frames.tool_response_message(deepest) == asyncio.run(by_sdk(deepest))


@pytest.mark.parametrize("deflate", [False, True])
async def test_on_a_real_socket_the_frames_are_the_sdks_unmasked(deflate: bool) -> None:
    results = REPRESENTATIVE[2] + REPRESENTATIVE[6]

    async def wire(direct: bool) -> list[tuple[int, bytes]]:
        capture = RawCapture(deflate)
        async with capture as url:
            async with connect(url, compression="deflate" if deflate else None) as ws:
                session = sdk_session(ws)
                for _ in range(2):  # twice: the compressor's state carries over between messages
                    if direct:
                        assert outbound.send_tool_response_now(session, results, None) is True
                    else:
                        await outbound.send_tool_response(session, results, None)
            await asyncio.wait_for(capture.done[0].wait(), 5)
        return unmasked_frames(bytes(capture.captured[0]))

    by_sdk_frames, direct_frames = await wire(False), await wire(True)
    assert direct_frames == by_sdk_frames
    assert len(by_sdk_frames) == 3 and all(head & 0x0F == 0x1 for head, _ in by_sdk_frames[:2])


async def test_on_a_real_socket_an_odd_shape_writes_and_records_nothing() -> None:
    capture = RawCapture(False)
    taps: list[Any] = []
    async with capture as url:
        async with connect(url, compression=None) as ws:
            session = sdk_session(ws)
            for shape in sorted(SDK_ONLY):
                assert outbound.send_tool_response_now(session, [SDK_ONLY[shape]], lambda *a: taps.append(a)) is None
            assert outbound.send_tool_response_now(session, REPRESENTATIVE[0], None) is True
        await asyncio.wait_for(capture.done[0].wait(), 5)
    assert taps == []
    frames = unmasked_frames(bytes(capture.captured[0]))
    assert [payload for head, payload in frames if head & 0x0F == 0x1] == [await by_sdk(REPRESENTATIVE[0])]


# -- the link against the emulator --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def linked(script: Script, **kwargs: Any) -> AsyncIterator[tuple[LiveEmulator, LiveLink, asyncio.Queue[Any]]]:
    """A LiveLink on the emulator; the queue gets each ToolCalls event."""
    calls: asyncio.Queue[ToolCalls] = asyncio.Queue()

    async def sink(event: ModelEvent) -> None:
        if isinstance(event, ToolCalls):
            calls.put_nowait(event)

    async with LiveEmulator(script, speed=math.inf) as emu:
        client = genai.Client(api_key="test", http_options=emu.http_options())
        link = LiveLink(client, Agent(instructions="Test."), [], sink,
                        logger=logging.LoggerAdapter(logging.getLogger("test"), {}), **kwargs)
        runner = asyncio.create_task(link.run())
        try:
            await asyncio.wait_for(link.ready.wait(), 10)
            yield emu, link, calls
        finally:
            await link.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(runner, 10)


def answers(event: ToolCalls, response: dict[str, Any]) -> list[ToolResult]:
    return [ToolResult(call.id, call.name, response) for call in event.calls]


RESPONSE = {"order": {"id": 7, "status": "shipped", "eta": "Grüße 😀"}, "items": [1.5, None, True]}


async def test_a_direct_answer_reaches_the_emulator_and_is_recorded_as_the_sdks() -> None:
    script = Script([CallTools((ToolCallSpec("lookup", {"n": 1}, id="fc-a"),), timeout_s=5),
                     CallTools((ToolCallSpec("lookup", {"n": 2}, id="fc-b"),), timeout_s=5)])
    taps: list[tuple[str, Any]] = []
    async with linked(script, tap=lambda kind, data: taps.append((kind, data))) as (emu, link, calls):
        first = await asyncio.wait_for(calls.get(), 5)
        assert link.try_send_tool_response(answers(first, RESPONSE), link.epoch) is True
        second = await asyncio.wait_for(calls.get(), 5)
        assert await link.send_tool_response(answers(second, RESPONSE), link.epoch)  # the SDK's path, for comparison
        conv = emu.conversations[0]
        await emu.wait_for(lambda: len(conv.tool_responses) == 2)
    assert [(r.id, r.name, r.response) for r in conv.tool_responses] == [
        ("fc-a", "lookup", RESPONSE), ("fc-b", "lookup", RESPONSE)]
    direct, sdk = [r.message for c in conv.connections for r in c.received if r.kind == "tool_response"]
    assert direct["toolResponse"]["functionResponses"][0].pop("id") == "fc-a"
    assert sdk["toolResponse"]["functionResponses"][0].pop("id") == "fc-b"
    assert direct == sdk
    recorded = [data["tool_response"]["function_responses"] for kind, data in taps if "tool_response" in data]
    assert recorded == [[{"id": "fc-a", "name": "lookup", "response": RESPONSE}],
                        [{"id": "fc-b", "name": "lookup", "response": RESPONSE}]]
    emu.check()


async def test_the_direct_path_steps_aside_for_backpressure_and_the_sdks_path_then_sends() -> None:
    script = Script([CallTools((ToolCallSpec("lookup", id="fc-a"),), timeout_s=5)])
    taps: list[tuple[str, Any]] = []
    async with linked(script, tap=lambda kind, data: taps.append((kind, data))) as (emu, link, calls):
        results = answers(await asyncio.wait_for(calls.get(), 5), {"result": "ok"})
        socket = link._session._ws
        socket.pause_writing()  # the transport's backpressure: websockets' send would wait in drain()
        assert link.try_send_tool_response(results, link.epoch) is None
        assert not [data for _, data in taps if "tool_response" in data]  # nothing sent, nothing recorded
        waiting = asyncio.create_task(link.send_tool_response(results, link.epoch))
        await emu.wait_for(lambda: bool(socket.drain_waiters))  # the SDK's send waits for the transport
        assert not waiting.done()
        socket.resume_writing()
        assert await asyncio.wait_for(waiting, 5)
        conv = emu.conversations[0]
        await emu.wait_for(lambda: len(conv.tool_responses) == 1)
    assert [(r.id, r.response) for r in conv.tool_responses] == [("fc-a", {"result": "ok"})]
    assert len([data for _, data in taps if "tool_response" in data]) == 1
    emu.check()


async def test_a_failed_direct_write_is_recorded_logged_and_not_sent(caplog: pytest.LogCaptureFixture) -> None:
    script = Script([CallTools((ToolCallSpec("lookup", id="fc-a"),), timeout_s=5)])
    taps: list[tuple[str, Any]] = []
    async with linked(script, tap=lambda kind, data: taps.append((kind, data))) as (emu, link, calls):
        results = answers(await asyncio.wait_for(calls.get(), 5), {"result": "ok"})
        socket = link._session._ws

        def broken_pipe() -> None:
            raise BrokenPipeError("the peer went away")

        socket.send_data = broken_pipe  # the socket's write fails, as a dead TCP connection's does
        with caplog.at_level(logging.WARNING, logger="test"):
            assert link.try_send_tool_response(results, link.epoch) is False
        assert socket.transport.is_closing()  # aborted, as websockets' own send does on a failed write
    assert [data["tool_response"] for _, data in taps if "tool_response" in data] == [
        {"function_responses": [{"id": "fc-a", "name": "lookup", "response": {"result": "ok"}}]}]
    assert "tool response lost with its connection" in caplog.text


async def test_a_shape_the_sdk_converts_is_sent_by_the_sdk_as_it_converts_it() -> None:
    script = Script([CallTools((ToolCallSpec("lookup", id="fc-a"),), timeout_s=5)])
    async with linked(script) as (emu, link, calls):
        results = answers(await asyncio.wait_for(calls.get(), 5), {"data": b"\x00\xff"})
        assert link.try_send_tool_response(results, link.epoch) is None
        assert await link.send_tool_response(results, link.epoch)
        conv = emu.conversations[0]
        await emu.wait_for(lambda: len(conv.tool_responses) == 1)
    assert conv.tool_responses[0].response == {"data": "AP8="}  # the SDK's base64


async def test_the_link_rules_are_those_of_the_sdks_path() -> None:
    async with linked(Script([WaitForText(timeout_s=5)])) as (emu, link, calls):
        results = [ToolResult("fc-a", "lookup", {})]
        assert link.try_send_tool_response(results, link.epoch + 1) is False  # another connection asked
        assert link.try_send_tool_response([], link.epoch) is False
    async with linked(Script([WaitForText(timeout_s=5)]), fast_audio=False) as (emu, link, calls):
        assert link.try_send_tool_response(results, link.epoch) is None  # the direct paths are off
    assert link.try_send_tool_response(results, None) is False  # closed: no connection


# -- the bridge: answered from the callback, no task, the SDK's path when the link declines ------------------


def _tool_agent() -> Agent:
    agent = Agent(instructions="You are a test agent.", greeting="Greet the caller.")

    @agent.tool
    async def lookup(key: str) -> dict[str, Any]:
        """Looks something up."""
        return {"key": key, "found": ["é", 1.25, None]}

    return agent


async def _bridge_call(record_dir: str) -> tuple[list[Any], dict[str, Any]]:
    script = Script([WaitForText(), CallTools((ToolCallSpec("lookup", {"key": "k"}, id="fc-1"),), timeout_s=5),
                     Say("Found it.")])
    async with BridgeHarness(_tool_agent(), script, record_dir=record_dir) as h:
        async with h.caller():
            await h.emulator.wait_for(lambda: bool(h.emulator.conversations))
            conv = h.emulator.conversations[0]
            await h.emulator.wait_for(lambda: conv.turns_spoken == 1)
        await h.wait_idle()
        h.emulator.check()
    [path] = glob.glob(f"{record_dir}/*.jsonl")
    [record] = [r.data for r in load_cassette(path).of_kind("model_out") if "tool_response" in r.data]
    return [(r.id, r.name, r.response) for r in conv.tool_responses], record


async def test_the_bridge_answers_from_the_callback_and_records_as_before(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    async def not_awaited(*args: Any, **kwargs: Any) -> bool:
        raise AssertionError("the SDK's path was taken")

    with monkeypatch.context() as patch:
        patch.setattr(LiveLink, "send_tool_response", not_awaited)
        direct = await _bridge_call(str(tmp_path / "direct"))
    # The link declines the direct path (backpressure, say): the pump awaits the SDK's path, as it always did.
    monkeypatch.setattr(LiveLink, "try_send_tool_response", lambda self, results, epoch=None: None)
    by_sdk_path = await _bridge_call(str(tmp_path / "sdk"))
    expected = [("fc-1", "lookup", {"key": "k", "found": ["é", 1.25, None]})]
    assert direct[0] == by_sdk_path[0] == expected
    assert direct[1] == by_sdk_path[1]  # the cassette's model_out record, whichever path sent it


class _Pump(CallActions):
    """Just the parts `_respond` touches, each writing down when it is called."""

    def __init__(self, direct: bool | None, sent: bool = True) -> None:
        self.order: list[str] = []
        pump = self

        class Link:
            def try_send_tool_response(self, results: Any, epoch: Any) -> bool | None:
                pump.order.append(f"try {epoch}")
                return direct

            async def send_tool_response(self, results: Any, epoch: Any) -> bool:
                pump.order.append(f"await {epoch}")
                return sent

        class Core:
            def tool_response_sent(self, number: int, ok: bool, now: float) -> None:
                pump.order.append(f"core {number} {ok}")

        class Reacts:
            def tool_response_sent(self, ids: list[str]) -> None:
                pump.order.append(f"reaction {ids}")

        self._live = SimpleNamespace(link=Link())  # type: ignore[assignment]
        self.call = Core()  # type: ignore[assignment]
        self._reactions = Reacts()  # type: ignore[assignment]

    def _run_effects(self) -> None:
        self.order.append("effects")


EFFECT = fx.SendToolResponse(3, 1, (ToolResult("fc-1", "lookup", {}),))


@pytest.mark.parametrize("sent", [True, False])
def test_respond_done_at_once_reports_to_the_core_then_runs_its_effects_and_returns_nothing(sent: bool) -> None:
    pump = _Pump(direct=sent)
    assert pump._respond(EFFECT) is None  # nothing for the pump to await or spawn
    reaction = ["reaction ['fc-1']"] if sent else []
    assert pump.order == ["try 1", *reaction, f"core 3 {sent}", "effects"]


async def test_respond_declined_hands_back_the_sdks_path_to_await() -> None:
    pump = _Pump(direct=None)
    later = pump._respond(EFFECT)
    assert later is not None and pump.order == ["try 1"]  # nothing reported until it is sent
    await later
    assert pump.order == ["try 1", "await 1", "reaction ['fc-1']", "core 3 True", "effects"]


def test_respond_without_a_model_link_reports_not_sent() -> None:
    pump = _Pump(direct=True)
    pump._live = None
    assert pump._respond(EFFECT) is None
    assert pump.order == ["core 3 False", "effects"]
