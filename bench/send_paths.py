"""Per-frame CPU of the hot path's sends, each option against the one it would replace (issue 17).

    python bench/send_paths.py

The far ends run in a forked process, so this thread's CPU time (`time.thread_time_ns`) is the sender's
alone; uvloop when installed, as `serve`. Prints the best and median of batches of 200 frames, us.
- Live side: websockets' `send` vs phonebridge.live.frames.send_text, plain TCP and TLS (the SDK's socket);
  and a tool answer by the SDK's `send_tool_response` vs phonebridge.live.outbound.send_tool_response_now.
- Twilio side (aiohttp, the server end as the bridge is): `async for message in ws` vs `await ws.receive()`,
  and `send_str` vs `send_frame` of the encoded text vs the writer's own synchronous frame write.
- Metrics: prometheus_client Histogram.observe vs phonebridge.server.frame_metrics.FrameSeries.observe.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import multiprocessing
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry, Histogram  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.asyncio.server import serve  # noqa: E402

import phonebridge.live.frames as live_frames  # noqa: E402
from phonebridge.server.frame_metrics import FrameHistogram  # noqa: E402
from phonebridge.server.metrics import FRAME_BUCKETS  # noqa: E402
from google import genai  # noqa: E402
from google.genai.live import AsyncSession  # noqa: E402

import phonebridge.live.outbound as outbound  # noqa: E402
from phonebridge.call.tool_types import ToolResult  # noqa: E402
from phonebridge.live.link import audio_message  # noqa: E402
from phonebridge.testing.tls import LocalTLS  # noqa: E402
from loopback import serve_loopback  # noqa: E402

PCM = bytes(640)
ANSWER = [ToolResult("fc-1234", "lookup_order", {"order": {"id": 7, "status": "shipped", "items": [{"sku": "A-1"}]}})]
BATCH, BATCHES = 200, 60


def _sink(port_box: multiprocessing.Queue[int], tls: LocalTLS | None) -> None:
    async def handler(ws: object) -> None:
        async for _ in ws:  # type: ignore[attr-defined]
            pass

    async def main() -> None:
        ssl = tls.server_context() if tls is not None else None
        async with serve(handler, "127.0.0.1", 0, ssl=ssl, compression=None, max_queue=None) as server:
            port_box.put(server.sockets[0].getsockname()[1])
            await asyncio.Future()

    try:
        import uvloop  # what `serve` runs on when installed
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


async def _batches(step: Callable[[], Awaitable[None]]) -> list[float]:
    out = []
    for _ in range(BATCHES):
        start = time.thread_time_ns()
        for _ in range(BATCH):
            await step()
        out.append((time.thread_time_ns() - start) / BATCH / 1000)
        await asyncio.sleep(0.002)  # let the far end read
    return out


def _line(name: str, us: list[float]) -> None:
    print(f"  {name:<44} best {min(us):6.2f}  median {statistics.median(us):6.2f} us")


async def live_side(tls: LocalTLS | None) -> None:
    ports: multiprocessing.Queue[int] = multiprocessing.Queue()
    sink = multiprocessing.get_context("fork").Process(target=_sink, args=(ports, tls), daemon=True)
    sink.start()
    port = [ports.get(timeout=10)]
    scheme = "wss" if tls is not None else "ws"
    ssl = tls.client_context() if tls is not None else None
    async with connect(f"{scheme}://127.0.0.1:{port[0]}", ssl=ssl, compression=None) as ws:
        async def by_send() -> None:
            await ws.send(audio_message(PCM))

        async def direct() -> None:
            if not live_frames.send_text(ws, live_frames.audio_payload(PCM)):
                await ws.send(audio_message(PCM))

        session = AsyncSession(api_client=genai.Client(api_key="bench")._api_client, websocket=ws)

        async def answer_by_sdk() -> None:  # what the pump awaited before: FunctionResponse, then the SDK's send
            await outbound.send_tool_response(session, ANSWER, None)

        async def answer_direct() -> None:
            if not outbound.send_tool_response_now(session, ANSWER, None):
                await outbound.send_tool_response(session, ANSWER, None)

        assert live_frames.usable(ws)
        results: dict[str, list[float]] = {"send": [], "direct": [], "answer_sdk": [], "answer_direct": []}
        for _ in range(3):  # alternate, so load from elsewhere hits both alike
            results["send"] += await _batches(by_send)
            results["direct"] += await _batches(direct)
            results["answer_sdk"] += await _batches(answer_by_sdk)
            results["answer_direct"] += await _batches(answer_direct)
    sink.terminate()
    sink.join()
    print(f"Live side, {'TLS' if tls else 'plain TCP'} loopback, one 640-byte frame's message:")
    _line("websockets send(audio_message(pcm))", results["send"])
    _line("live_frames.send_text(audio_payload(pcm))", results["direct"])
    print("  one tool answer (a task hop saved besides, not counted here):")
    _line("session.send_tool_response (SDK path)", results["answer_sdk"])
    _line("outbound.send_tool_response_now", results["answer_direct"])


async def metrics_side() -> None:
    client = Histogram("x", "x", ["d"], buckets=FRAME_BUCKETS, registry=CollectorRegistry()).labels(d="a")
    ours = FrameHistogram("y", "y", "d", ("a",), FRAME_BUCKETS, CollectorRegistry()).labels("a")

    async def observe_client() -> None:
        for _ in range(4):
            client.observe(0.00004)

    async def observe_ours() -> None:
        for _ in range(4):
            ours.observe(0.00004)
        ours.fold() if len(ours._pending) >= 800 else None  # the fold's cost counted, at scrape-like intervals

    a, b = await _batches(observe_client), await _batches(observe_ours)
    print("Metrics, the four observations of one frame each way:")
    _line("prometheus_client Histogram.observe x4", a)
    _line("FrameSeries.observe x4 (+ its fold)", b)


TWILIO_FRAME = '{"event": "media", "streamSid": "MZ0", "media": {"payload": "' + "A" * 216 + '"}}'


def _twilio_peer(port: int, frames: int) -> None:
    import aiohttp

    async def main() -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(f"http://127.0.0.1:{port}/") as ws:
            for _ in range(frames):
                await ws.send_str(TWILIO_FRAME)
                await asyncio.sleep(0) if _ % 50 else await asyncio.sleep(0.001)
            async for _message in ws:  # then drain what the server sends until it closes
                pass

    asyncio.run(main())


async def twilio_side() -> None:
    from aiohttp import WSMsgType, web

    frames = BATCH * BATCHES
    results: dict[str, list[float]] = {}

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=None, compress=False)
        await ws.prepare(request)
        mode = request.app["mode"]
        got, start, out = 0, time.thread_time_ns(), results.setdefault(mode, [])
        if mode == "async for":
            async for message in ws:
                if message.type is not WSMsgType.TEXT:
                    break
                got += 1
                if got % BATCH == 0:
                    out.append((time.thread_time_ns() - start) / BATCH / 1000)
                    start = time.thread_time_ns()
                if got == frames:
                    break
        else:
            while True:
                message = await ws.receive()
                if message.type is not WSMsgType.TEXT:
                    break
                got += 1
                if got % BATCH == 0:
                    out.append((time.thread_time_ns() - start) / BATCH / 1000)
                    start = time.thread_time_ns()
                if got == frames:
                    break
        writer = ws._writer  # noqa: SLF001 - the option being measured
        assert writer is not None
        sends = {
            "send_str": lambda: ws.send_str(TWILIO_FRAME),
            "send_frame(encoded)": lambda: ws.send_frame(TWILIO_FRAME.encode(), WSMsgType.TEXT),
        }
        for name, send in sends.items():
            for _ in range(BATCHES // 2):
                start = time.thread_time_ns()
                for _ in range(BATCH):
                    await send()
                results.setdefault(name, []).append((time.thread_time_ns() - start) / BATCH / 1000)
                await asyncio.sleep(0.002)
        for _ in range(BATCHES // 2):
            start = time.thread_time_ns()
            for _ in range(BATCH):
                writer._write_websocket_frame(TWILIO_FRAME.encode(), WSMsgType.TEXT, 0)  # noqa: SLF001
            results.setdefault("writer._write_websocket_frame (sync)", []).append(
                (time.thread_time_ns() - start) / BATCH / 1000)
            await asyncio.sleep(0.002)
        await ws.close()
        return ws

    for mode in ("async for", "receive()", "async for", "receive()"):
        app = web.Application()
        app["mode"] = mode
        app.router.add_get("/", handler)
        runner, port = await serve_loopback(app)
        peer = multiprocessing.get_context("fork").Process(target=_twilio_peer, args=(port, frames), daemon=True)
        peer.start()
        while peer.is_alive():
            await asyncio.sleep(0.05)
        await runner.cleanup()
    print("Twilio side (aiohttp server end, plain TCP loopback), one media frame:")
    for name, us in results.items():
        _line(name if "(" in name or name.startswith("send") else f"receive by {name}", us)


async def main() -> None:
    await twilio_side()
    await metrics_side()
    await live_side(None)
    await live_side(LocalTLS())


if __name__ == "__main__":
    try:
        import uvloop  # what `serve` runs on when installed
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
