"""CPU per received Twilio frame: aiohttp's queue and task wake-up vs phonebridge.server.ws_inline (issue 17).

    python bench/receive_path.py

Frames go one at a time, as a call's do (each its own read; the next is sent once the last was handled), from
a client to a server on one event loop (uvloop when installed, as `serve`), over loopback TCP. Each row is
this thread's CPU per frame, client and server together: the client's share is the same in both rows, so
their difference is what the server's delivery of a frame costs more on aiohttp's queue (the future, the task
wake-up, `read`/`receive`/`__anext__`). Best and median of `--repeat` batches of `--frames` frames.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from phonebridge.server.ws_inline import MediaSocket  # noqa: E402
from loopback import serve_loopback  # noqa: E402

FRAME = ('{"event":"media","sequenceNumber":"5","media":{"track":"inbound","chunk":"4","timestamp":"80",'
         '"payload":"' + "/" * 212 + '"},"streamSid":"MZ' + "1" * 32 + '"}')


async def batches(inline: bool, frames: int, repeat: int) -> list[float]:
    handled = asyncio.Event()

    def take(text: str) -> bool:
        handled.set()
        return True

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws: web.WebSocketResponse = MediaSocket() if inline else web.WebSocketResponse()
        await ws.prepare(request)
        if inline:
            assert isinstance(ws, MediaSocket) and ws.offer_texts(take), "ws_inline unavailable here"
        async for _ in ws:
            handled.set()
        return ws

    app = web.Application()
    app.router.add_get("/", handle)
    runner, port = await serve_loopback(app)
    out: list[float] = []
    try:
        async with aiohttp.ClientSession() as session, session.ws_connect(f"http://127.0.0.1:{port}/") as ws:
            for batch in range(repeat + 1):  # the first batch warms up, untimed
                start = time.thread_time_ns()
                for _ in range(frames):
                    handled.clear()
                    await ws.send_str(FRAME)
                    await handled.wait()
                if batch:
                    out.append((time.thread_time_ns() - start) / frames / 1000)
    finally:
        await runner.cleanup()
    return out


async def main(frames: int, repeat: int) -> None:
    rows: dict[str, list[float]] = {"aiohttp's queue (async for)": [], "ws_inline (read callback)": []}
    for _ in range(3):  # interleaved: a noisy moment hits both
        for name, inline in zip(rows, (False, True)):
            rows[name] += await batches(inline, frames, repeat)
    for name, us in rows.items():
        print(f"  {name:<30} best {min(us):6.2f}  median {statistics.median(us):6.2f} us a frame (client + server)")
    saved = statistics.median(rows["aiohttp's queue (async for)"]) - statistics.median(rows["ws_inline (read callback)"])
    print(f"  the server saves {saved:.2f} us a frame, {saved * 50 / 1000:.3f} ms a call-second (50 frames)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    try:
        import uvloop  # what `serve` runs on when installed
    except ImportError:
        asyncio.run(main(args.frames, args.repeat))
    else:
        uvloop.run(main(args.frames, args.repeat))
