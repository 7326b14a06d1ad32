"""phonebridge.live.frames: the direct audio frame is, byte for byte unmasked, what websockets' own `send` writes, and it
steps aside (writes nothing, returns False) whenever `send` would wait or raise."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import struct
from collections.abc import Awaitable, Callable

import pytest
from google import genai
from websockets.asyncio.client import ClientConnection, connect
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory

import phonebridge.live.frames as live_frames
from phonebridge.agent.definition import Agent
from phonebridge.live.link import LiveLink, audio_message
from phonebridge.testing.live_emulator import LiveEmulator
from phonebridge.testing.live_script import Script, WaitForText

PCM = bytes(range(256)) * 5  # every byte value: '-' and '_' of the URL-safe alphabet appear


class RawCapture:
    """A loopback WebSocket server that completes the handshake with websockets' sans-I/O protocol, then keeps
    every byte the client writes: the wire itself, not a parse of it."""

    def __init__(self, deflate: bool) -> None:
        self.deflate = deflate
        self.captured: list[bytearray] = []
        self.done: list[asyncio.Event] = []

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        extensions = [ServerPerMessageDeflateFactory()] if self.deflate else None
        protocol = ServerProtocol(extensions=extensions)
        raw, done = bytearray(), asyncio.Event()
        self.captured.append(raw)
        self.done.append(done)
        request = None
        while not isinstance(request, Request):
            protocol.receive_data(await reader.read(65536))
            request = next(iter(protocol.events_received()), None)
        protocol.send_response(protocol.accept(request))
        writer.write(b"".join(protocol.data_to_send()))
        while not writer.is_closing() and (chunk := await reader.read(65536)):
            raw += chunk
            protocol.receive_data(chunk)  # so the close handshake completes as with any server
            for data in protocol.data_to_send():
                if data:
                    writer.write(data)
                else:  # the close handshake is done: the server closes TCP first
                    writer.close()
        done.set()
        if not writer.is_closing():
            writer.close()


def unmasked_frames(raw: bytes) -> list[tuple[int, bytes]]:
    """(first header byte: FIN, RSV bits, opcode; unmasked payload) of every client frame in `raw`."""
    frames, at = [], 0
    while at < len(raw):
        head, second = raw[at], raw[at + 1]
        assert second & 0x80, "a client frame is masked"
        length, at = second & 0x7F, at + 2
        if length == 126:
            (length,), at = struct.unpack("!H", raw[at:at + 2]), at + 2
        elif length == 127:
            (length,), at = struct.unpack("!Q", raw[at:at + 8]), at + 8
        mask, at = raw[at:at + 4], at + 4
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(raw[at:at + length]))
        frames.append((head, payload))
        at += length
    return frames


Step = Callable[[ClientConnection, bytes], Awaitable[None]]


async def by_send(ws: ClientConnection, pcm: bytes) -> None:
    await ws.send(audio_message(pcm))


async def direct(ws: ClientConnection, pcm: bytes) -> None:
    assert live_frames.usable(ws)
    assert live_frames.send_text(ws, live_frames.audio_payload(pcm))


async def _wire(deflate: bool, steps: list[Step]) -> list[tuple[int, bytes]]:
    capture = RawCapture(deflate)
    async with capture as url:
        async with connect(url, compression="deflate" if deflate else None) as ws:
            for i, step in enumerate(steps):
                await step(ws, PCM[i:] + PCM[:i])
                await ws.send('{"realtime_input": {"text": "between"}}')  # the SDK's own sends interleave
        await asyncio.wait_for(capture.done[0].wait(), 5)
    return unmasked_frames(bytes(capture.captured[0]))


@pytest.mark.parametrize("deflate", [False, True])
async def test_direct_frames_are_sends_frames_byte_for_byte_unmasked(deflate: bool) -> None:
    sent = await _wire(deflate, [by_send, by_send, by_send])
    written = await _wire(deflate, [direct, by_send, direct])  # one compressor stream across both paths
    assert written == sent
    assert len(sent) == 7  # six text frames, then the close
    assert all(head & 0x0F == 0x1 for head, _ in sent[:6])
    if not deflate:
        assert sent[0][1] == audio_message(PCM).encode()
    else:
        assert all(head & 0x40 for head, _ in sent[:6])  # RSV1: compressed, as negotiated


def test_the_payload_is_the_audio_message() -> None:
    assert live_frames.audio_payload(PCM) == audio_message(PCM).encode()
    assert live_frames.audio_payload(b"") == audio_message(b"").encode()


async def test_it_steps_aside_when_send_would_wait_or_raise() -> None:
    capture = RawCapture(False)
    async with capture as url:
        async with connect(url, compression=None) as ws:
            ws.pause_writing()  # the transport's backpressure signal: `send` would wait in drain()
            assert not live_frames.send_text(ws, b"{}")
            ws.resume_writing()
            assert live_frames.send_text(ws, b"{}")
        assert not live_frames.send_text(ws, b"{}")  # closed: `send` raises ConnectionClosed
        await asyncio.wait_for(capture.done[0].wait(), 5)
    frames = unmasked_frames(bytes(capture.captured[0]))
    assert [p for h, p in frames if h & 0x0F == 0x1] == [b"{}"]


def test_only_a_websockets_connection_is_usable() -> None:
    assert not live_frames.usable(object())
    assert not live_frames.usable(None)


async def test_the_link_sends_caller_audio_through_the_direct_path_to_the_emulator() -> None:
    async with LiveEmulator(Script([WaitForText(timeout_s=5)]), speed=math.inf) as emu:
        client = genai.Client(api_key="test", http_options=emu.http_options())

        async def sink(event: object) -> None:
            pass

        link = LiveLink(client, Agent(instructions="Test."), [], sink,
                        logger=logging.LoggerAdapter(logging.getLogger("test"), {}))
        runner = asyncio.create_task(link.run())
        try:
            await asyncio.wait_for(link.ready.wait(), 10)
            assert live_frames.usable(link._session._ws)  # the SDK's socket is the shape the direct path knows
            for i in range(5):
                await link.send_audio(PCM[i:] + PCM[:i])
            conn = emu.connections[0]
            await emu.wait_for(lambda: len([r for r in conn.received if r.kind == "audio"]) == 5)
            assert conn.audio_in() == b"".join(PCM[i:] + PCM[:i] for i in range(5))
        finally:
            await link.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(runner, 10)
