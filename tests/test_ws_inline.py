"""phonebridge.server.ws_inline over real loopback sockets: a MediaSocket offers text frames to its handler only
while its reader waits on an empty queue, so every frame is handled once and in the order it was sent, taken
or not; a handler that raises is logged and the socket falls back to aiohttp's queue; without the aiohttp
internals it knows, it is a plain WebSocketResponse. And Call.receive_media, what the pump's handler asks of
the core: our stream's media, or None with nothing changed."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import aiohttp.web_ws
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import phonebridge.server.ws_inline as ws_inline
from phonebridge.call.core import Call
from phonebridge.server.ws_inline import MediaSocket
from phonebridge.twilio.stream_guard import StreamGuard
from tests.test_call_core import CALL, STREAM, media, start

STOCK_QUEUE = aiohttp.web_ws.WebSocketDataQueue


class Server:
    """One MediaSocket per connection; `handled` lists (path, text) in the order frames were dealt with."""

    def __init__(self, take: Callable[[str], bool], slow_reader: bool = False) -> None:
        self.take, self.slow_reader = take, slow_reader
        self.handled: list[tuple[str, str]] = []
        self.offering: bool | None = None
        self.closed = asyncio.Event()

    def _offered(self, text: str) -> bool:
        if not self.take(text):
            return False
        self.handled.append(("offer", text))
        return True

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = MediaSocket(autoping=True)
        await ws.prepare(request)
        self.offering = ws.offer_texts(self._offered)
        async for message in ws:
            self.handled.append(("receive", message.data))
            if self.slow_reader:  # a reader busy with its frame: the frames behind it must queue
                for _ in range(3):
                    await asyncio.sleep(0)
        ws.offer_texts(None)
        self.closed.set()
        return ws


async def exchange(server: Server, texts: list[str], *, chunked: bool = False,
                   between: Callable[[aiohttp.ClientWebSocketResponse], Awaitable[Any]] | None = None) -> None:
    app = web.Application()
    app.router.add_get("/ws", server.handle)
    async with TestServer(app) as test_server, aiohttp.ClientSession() as client:
        async with client.ws_connect(test_server.make_url("/ws")) as ws:
            for i, text in enumerate(texts):
                await ws.send_str(text)
                if chunked and i % 3 == 2:
                    await asyncio.sleep(0.001)  # some frames alone, some several to a read
            if between is not None:
                await between(ws)
        await asyncio.wait_for(server.closed.wait(), 5)


def takes_even(text: str) -> bool:
    return int(text) % 2 == 0


@pytest.mark.parametrize("slow_reader", [False, True])
@pytest.mark.parametrize("chunked", [False, True])
async def test_every_frame_is_handled_once_in_the_order_it_was_sent(slow_reader: bool, chunked: bool) -> None:
    server = Server(takes_even, slow_reader)
    texts = [str(i) for i in range(300)]
    await exchange(server, texts, chunked=chunked)
    assert server.offering is True
    assert [text for _, text in server.handled] == texts
    assert {path for path, _ in server.handled} == {"offer", "receive"}
    assert all(int(text) % 2 == 0 for path, text in server.handled if path == "offer")


async def test_a_frame_behind_a_queued_one_is_not_offered() -> None:
    """The reader is busy (slow) with odd frames: an even one arriving meanwhile waits behind them in the queue."""
    server = Server(takes_even, slow_reader=True)
    texts = [str(i) for i in range(1, 200)]
    await exchange(server, texts)
    received = [int(text) for path, text in server.handled if path == "receive"]
    assert any(n % 2 == 0 for n in received), "no even frame ever queued: the test proves nothing"


async def test_a_handler_that_raises_is_logged_and_the_queue_takes_over(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    def broken(text: str) -> bool:
        calls.append(text)
        raise RuntimeError("a bug in the handler")

    server = Server(broken)
    texts = [str(i) for i in range(20)]
    with caplog.at_level(logging.ERROR, logger="phonebridge.server.ws_inline"):
        await exchange(server, texts)
    assert calls == ["0"]  # never offered again
    assert server.handled == [("receive", text) for text in texts]  # nothing lost, nothing twice
    assert "the media frame handler failed" in caplog.text


async def test_pings_and_binary_frames_stay_aiohttps() -> None:
    server = Server(lambda text: True)

    async def ping_then_binary(ws: aiohttp.ClientWebSocketResponse) -> None:
        await ws.ping(b"are you there")
        await ws.send_bytes(b"\x00\x01")
        await ws.send_str("after")

    await exchange(server, ["a", "b"], between=ping_then_binary)
    assert [data for _, data in server.handled] == ["a", "b", b"\x00\x01", "after"]
    assert ("receive", b"\x00\x01") in server.handled  # never offered: the reader gets it as aiohttp gives it


async def test_offering_stops_when_told() -> None:
    server = Server(lambda text: True)

    async def handle_once(request: web.Request) -> web.WebSocketResponse:
        ws = MediaSocket()
        await ws.prepare(request)
        server.offering = ws.offer_texts(None)
        async for message in ws:
            server.handled.append(("receive", message.data))
        server.closed.set()
        return ws

    server.handle = handle_once  # type: ignore[method-assign]
    await exchange(server, ["x", "y"])
    assert server.offering is True and server.handled == [("receive", "x"), ("receive", "y")]


async def test_without_the_known_internals_it_is_a_plain_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ws_inline, "_KNOWN", False)
    server = Server(lambda text: True)
    await exchange(server, ["x", "y"])
    assert server.offering is False
    assert server.handled == [("receive", "x"), ("receive", "y")]


async def test_aiohttps_own_queue_is_back_after_the_upgrade() -> None:
    server = Server(lambda text: True)
    await exchange(server, ["x"])
    assert aiohttp.web_ws.WebSocketDataQueue is STOCK_QUEUE
    plain_app = web.Application()

    async def plain(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        assert type(ws._reader) is STOCK_QUEUE
        await ws.close()
        return ws

    plain_app.router.add_get("/", plain)
    async with TestServer(plain_app) as test_server, aiohttp.ClientSession() as client:
        async with client.ws_connect(test_server.make_url("/")) as ws:
            await ws.receive()


# -- Call.receive_media: what the pump's handler takes ----------------------------------------------------

def opened_call() -> Call:
    call = Call(StreamGuard(), 0.0)
    call.receive_twilio(start(), 0.0)
    call.effects()
    return call


def test_receive_media_takes_our_streams_media_and_counts_it() -> None:
    call = opened_call()
    taken = call.receive_media(media(2), 0.5)
    assert taken is not None and taken.stream_sid == STREAM
    assert call.stats.frames_in == 1 and call.stats.lost_frames == 0
    assert call.receive_media(media(5), 0.52) is not None
    assert call.stats.lost_frames == 2  # 3 and 4 never came


@pytest.mark.parametrize("text", [
    json.dumps({"event": "mark", "sequenceNumber": "2", "streamSid": STREAM, "mark": {"name": "m1"}}),
    json.dumps({"event": "media", "sequenceNumber": "2", "streamSid": "MZ" + "9" * 32,
                "media": {"track": "inbound", "chunk": "1", "timestamp": "20", "payload": "/w=="}}),
    "{not json", "[]", json.dumps({"event": "stop", "sequenceNumber": "2", "streamSid": STREAM,
                                   "stop": {"accountSid": "AC", "callSid": CALL}}),
])
def test_receive_media_leaves_everything_else_untouched(text: str) -> None:
    call = opened_call()
    before = (call.stats.frames_in, call.stats.malformed, call.stats.ignored, call.stats.lost_frames)
    assert call.receive_media(text, 0.5) is None
    assert (call.stats.frames_in, call.stats.malformed, call.stats.ignored, call.stats.lost_frames) == before
    assert not call.effects() and not call.twilio_to_send() and not call.model_to_send()


def test_receive_media_before_start_is_left_to_receive_twilio() -> None:
    call = Call(StreamGuard(), 0.0)
    assert call.receive_media(media(1), 0.1) is None
    assert call.stats.ignored == 0
    call.receive_twilio(media(1), 0.1)
    assert call.stats.ignored == 1  # receive_twilio says why it is not taken


# -- a whole call: the model hears the same audio with the read-callback path or without it -----------------

SPOKEN = bytes((i * 7919 + (i >> 3) * 104729) % 256 for i in range(2 * 8000))  # 1 s at 8 kHz, 50 frames


async def _heard_by_the_model(monkeypatch: pytest.MonkeyPatch, inline: bool) -> tuple[bytes, int]:
    from phonebridge.agent.definition import Agent
    from phonebridge.testing.harness import BridgeHarness
    from phonebridge.testing.live_script import Say, Script, WaitForText

    taken = [0]
    if not inline:
        monkeypatch.setattr(ws_inline, "_KNOWN", False)
    else:
        original = ws_inline._OfferingQueue._taken

        def counting(self: Any, handler: Any, text: str) -> bool:
            took = original(self, handler, text)
            taken[0] += took
            return took

        monkeypatch.setattr(ws_inline._OfferingQueue, "_taken", counting)
    agent = Agent(instructions="You are a test agent.", greeting="Greet the caller.")
    async with BridgeHarness(agent, Script([WaitForText(), Say("Hello.")]), speed=20) as h:
        async with h.caller(continuous=False) as caller:
            await h.emulator.wait_for(lambda: bool(h.emulator.conversations))
            await caller.say(SPOKEN, rate=8000)
            connection = h.emulator.conversations[0].connections[-1]
            await h.emulator.wait_for(lambda: len(connection.audio_in()) >= 50 * 640)
            heard = connection.audio_in()
    monkeypatch.undo()
    return heard, taken[0]


async def test_the_model_hears_the_same_audio_taken_in_the_callback_or_queued(monkeypatch: pytest.MonkeyPatch) -> None:
    queued, _ = await _heard_by_the_model(monkeypatch, inline=False)
    inline, taken = await _heard_by_the_model(monkeypatch, inline=True)
    assert len(queued) == 50 * 640 and inline == queued
    assert taken > 0  # the read-callback path carried frames of it
