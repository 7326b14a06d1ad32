"""phonebridge.server.ws_frames: a batch of Twilio frames is, byte for byte, what aiohttp's own `send_str` writes
for each, in one `transport.write`; and TwilioSocket.send_all steps aside to `send_str` whenever that might
compress, wait or raise."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp._websocket.writer import WebSocketWriter
from aiohttp.base_protocol import BaseProtocol
from aiohttp.test_utils import TestServer

import phonebridge.server.ws_frames as ws_frames
from phonebridge.agent.definition import Agent
from phonebridge.call.opened import TwilioSocket
from phonebridge.testing.harness import BridgeHarness
from phonebridge.testing.live_script import Hear, Say, Script, WaitForCaller, WaitForText
from tests.bridge_helpers import agent_audio_as_heard

LENGTHS = [0, 125, 126, 65535, 65536]
UNICODE = "caf\u00e9 \u20ac \U0001f4de \u00fc" * 9  # 2-, 3- and 4-byte UTF-8: the length is the bytes'


class CaptureTransport(asyncio.Transport):
    """Keeps every `write` as it came; closing (or raising) when told to."""

    def __init__(self, protocol: BaseProtocol | None = None, pause_after_write: bool = False) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closing = False
        self.fail: BaseException | None = None
        self._protocol, self._pause_after_write = protocol, pause_after_write

    def write(self, data: Any) -> None:
        if self.fail is not None:
            raise self.fail
        self.writes.append(bytes(data))
        if self._pause_after_write and self._protocol is not None and not self._protocol._paused:
            self._protocol.pause_writing()  # over the high-water mark, as a real transport says it

    def is_closing(self) -> bool:
        return self.closing

    @property
    def wire(self) -> bytes:
        return b"".join(self.writes)


class Recorded:
    def __init__(self) -> None:
        self.records: list[tuple[str, Any]] = []

    def record(self, kind: str, data: Any) -> None:
        self.records.append((kind, data))


def response(compress: int = 0, limit: int = 2**16, pause_after_write: bool = False) -> web.WebSocketResponse:
    """A WebSocketResponse whose writer is aiohttp's real WebSocketWriter, on a transport that keeps the bytes."""
    protocol = BaseProtocol(asyncio.get_running_loop())
    transport = CaptureTransport(protocol, pause_after_write)
    protocol.transport = transport
    ws = web.WebSocketResponse()
    ws._writer = WebSocketWriter(protocol, transport, compress=compress, limit=limit)
    return ws


def transport_of(ws: web.WebSocketResponse) -> CaptureTransport:
    assert ws._writer is not None
    transport = ws._writer.transport
    assert isinstance(transport, CaptureTransport)
    return transport


async def by_send_str(texts: list[str], **kwargs: Any) -> web.WebSocketResponse:
    ws = response(**kwargs)
    for text in texts:
        await ws.send_str(text)
    return ws


async def by_send_all(texts: list[str], **kwargs: Any) -> web.WebSocketResponse:
    ws = response(**kwargs)
    await TwilioSocket(ws).send_all(texts)
    return ws


BATCHES = [*([["a" * n] for n in LENGTHS]), ["a" * n for n in LENGTHS], [UNICODE, "", UNICODE * 300],
           ['{"event":"media"}', '{"event":"media"}', '{"event":"mark"}']]


@pytest.mark.parametrize("texts", BATCHES, ids=lambda texts: "+".join(str(len(t.encode())) for t in texts))
async def test_one_write_is_send_strs_bytes_and_count_byte_for_byte(texts: list[str]) -> None:
    theirs, ours = await by_send_str(texts), await by_send_all(texts)
    assert transport_of(ours).wire == transport_of(theirs).wire
    assert len(transport_of(ours).writes) == 1
    assert ours._writer is not None and theirs._writer is not None
    assert ours._writer._output_size == theirs._writer._output_size  # aiohttp's flow control sees the same count


def test_the_header_forms_are_the_protocols() -> None:
    assert ws_frames.text_frames([b""]) == b"\x81\x00"
    assert ws_frames.text_frames([b"x" * 125])[:2] == b"\x81\x7d"
    assert ws_frames.text_frames([b"x" * 126])[:4] == b"\x81\x7e\x00\x7e"
    assert ws_frames.text_frames([b"x" * 65535])[:4] == b"\x81\x7e\xff\xff"
    assert ws_frames.text_frames([b"x" * 65536])[:10] == b"\x81\x7f" + (65536).to_bytes(8, "big")
    assert ws_frames.text_frames([]) == b""


async def test_the_byte_count_passes_the_limit_as_send_strs_does_frame_by_frame() -> None:
    texts = ["a" * 70, "b" * 70, "c" * 70, "d" * 70, "e" * 10]  # the limit is passed twice, then 12 bytes more
    theirs, ours = await by_send_str(texts, limit=100), await by_send_all(texts, limit=100)
    assert ours._writer is not None and theirs._writer is not None
    assert ours._writer._output_size == theirs._writer._output_size == 12
    assert transport_of(ours).wire == transport_of(theirs).wire


async def test_a_paused_peer_past_the_limit_makes_the_batch_wait_as_send_str_would() -> None:
    ws = response(limit=100, pause_after_write=True)
    protocol = ws._writer.protocol if ws._writer is not None else None
    assert protocol is not None
    sending = asyncio.ensure_future(TwilioSocket(ws).send_all(["a" * 70, "b" * 70]))
    await asyncio.sleep(0)  # one step: the task runs to its first real wait
    assert not sending.done() and protocol._drain_waiter is not None  # waiting in aiohttp's own drain
    assert len(transport_of(ws).writes) == 1
    protocol.resume_writing()
    await sending
    # Under the limit, a paused protocol does not make send_str wait, nor the batch.
    ws = response(pause_after_write=True)
    await TwilioSocket(ws).send_all(["a" * 70, "b" * 70])


class OtherProtocol(BaseProtocol):
    """An aiohttp whose protocol lacks one of the internals ws_frames relies on (send_str itself still works)."""

    __slots__ = ()

    @property
    def _drain_helper(self) -> Any:
        raise AttributeError("_drain_helper")


async def test_a_writer_of_another_shape_is_not_used() -> None:
    class OtherWriter(WebSocketWriter):  # another aiohttp version: its class is checked afresh
        pass

    ws = web.WebSocketResponse()
    assert ws_frames.writer_for(ws) is None  # not prepared
    ws._writer = OtherWriter(BaseProtocol(asyncio.get_running_loop()), CaptureTransport())
    del ws._writer._output_size
    assert ws_frames.writer_for(ws) is None
    ws._writer = object()  # type: ignore[assignment]
    assert ws_frames.writer_for(ws) is None


@pytest.mark.parametrize("setup", ["compressed", "paused", "writer_closing", "transport_closing", "internals_missing"])
async def test_it_falls_back_to_send_str_frame_by_frame(setup: str) -> None:
    texts = ["a" * 200, UNICODE, '{"event":"mark"}']

    def prepare(ws: web.WebSocketResponse) -> None:
        writer = ws._writer
        assert writer is not None
        if setup == "paused":
            writer.protocol.pause_writing()
        elif setup == "writer_closing":
            writer._closing = True  # what writer.close() leaves
        elif setup == "transport_closing":
            transport_of(ws).closing = True
        elif setup == "internals_missing":
            writer.protocol.__class__ = OtherProtocol

    compress = 15 if setup == "compressed" else 0
    theirs, ours = response(compress=compress), response(compress=compress)
    prepare(theirs)
    prepare(ours)
    assert ws_frames.writer_for(ours) is None
    for text in texts:
        try:
            await theirs.send_str(text)
        except ConnectionResetError:  # what TwilioSocket.send lets pass
            pass
    await TwilioSocket(ours).send_all(texts)
    assert transport_of(ours).writes == transport_of(theirs).writes  # the same writes, one a frame
    assert len(transport_of(ours).writes) == (0 if "closing" in setup else 3)


async def test_records_are_sends_records_in_order_on_every_path() -> None:
    texts = ["a" * 200, UNICODE, '{"event":"mark"}']
    for setup in ("batched", "paused", "closed", "failing"):
        records = []
        for send_all in (False, True):
            ws = response()
            assert ws._writer is not None
            if setup == "paused":
                ws._writer.protocol.pause_writing()
            elif setup == "closed":
                ws._closed = True
            elif setup == "failing":
                transport_of(ws).fail = RuntimeError("write after write_eof")  # let pass, as by `send`
            sock = TwilioSocket(ws)
            sock.recorder = recorder = Recorded()  # type: ignore[assignment]
            if send_all:
                await sock.send_all(texts)
            else:
                for text in texts:
                    await sock.send(text)
            records.append(recorder.records)
        assert records[1] == records[0], setup
        assert records[0] == ([] if setup == "closed" else [("twilio_out", t) for t in texts]), setup


async def test_over_a_real_socket_the_peer_reads_the_same_texts_compressed_or_not() -> None:
    texts = ["a" * n for n in LENGTHS] + [UNICODE]
    written: list[int] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        written.append(0 if ws_frames.writer_for(ws) is None else 1)
        await TwilioSocket(ws).send_all(texts)
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        for compress in (0, 15):
            async with session.ws_connect(server.make_url("/"), compress=compress) as ws:
                got = [message.data async for message in ws]
            assert got == texts
    assert written == [1, 0]  # batched unless compression was negotiated


# -- end to end: the caller receives what it received frame by frame ----------------------------------------

async def _a_call(monkeypatch: pytest.MonkeyPatch, batched: bool) -> tuple[list[tuple[str, str]], int]:
    batches = []
    if not batched:
        monkeypatch.setattr(ws_frames, "writer_for", lambda ws: None)
    else:
        write_texts = ws_frames.write_texts

        async def counting(writer: WebSocketWriter, payloads: Any) -> None:
            batches.append(len(payloads))
            await write_texts(writer, payloads)

        monkeypatch.setattr(ws_frames, "write_texts", counting)
    script = Script([WaitForText(), Say("Hello, thanks for calling."), WaitForCaller(), Hear("Stop."),
                     Say("We close at ten tonight.")])
    agent = Agent(instructions="You are a test agent.", greeting="Greet the caller.")
    async with BridgeHarness(agent, script, speed=20) as h:
        async with h.caller() as caller:
            conv = await _spoken(h, 1)
            await caller.wait_for(lambda c: c.playback_idle and len(c.heard()) >= len(agent_audio_as_heard(conv)))
            await caller.say("Stop, please.")
            conv = await _spoken(h, 2)
            await caller.wait_for(lambda c: c.playback_idle and len(c.heard()) >= len(agent_audio_as_heard(conv)))
            sequence = [(e.message["event"], str(e.message.get("media", e.message.get("mark")))) for e in caller.events]
    monkeypatch.undo()
    return sequence, sum(n > 1 for n in batches)


async def _spoken(h: BridgeHarness, turns: int) -> Any:
    await h.emulator.wait_for(lambda: bool(h.emulator.conversations) and h.emulator.conversations[0].turns_spoken >= turns)
    return h.emulator.conversations[0].connections[-1]


async def test_the_caller_receives_the_same_media_and_marks_batched_or_frame_by_frame(monkeypatch) -> None:
    frame_by_frame, _ = await _a_call(monkeypatch, batched=False)
    batched, several = await _a_call(monkeypatch, batched=True)
    assert batched == frame_by_frame
    assert {event for event, _ in batched} == {"media", "mark"}
    print("EVENTS", len(batched), sum(e == "mark" for e, _ in batched), several)
    assert several > 0  # the batched path did carry several frames a write
