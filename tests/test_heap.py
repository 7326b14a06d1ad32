"""The heap trimmer: glibc's malloc_trim is found and callable here, and the trimmer runs it on its period
in a worker thread for as long as the application runs."""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest
from aiohttp import web

from phonebridge.heap import HeapTrimmer, malloc_trim


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_malloc_trim_is_found_and_returns_a_status() -> None:
    trim = malloc_trim()
    assert trim is not None
    blocks = [bytearray(200_000) for _ in range(50)]  # above the mmap threshold's neighbours: heap churn
    del blocks[::2]
    assert trim() in (0, 1)


async def test_the_trimmer_trims_off_the_event_loop_thread_until_stopped() -> None:
    calls: list[str] = []
    twice = asyncio.Event()
    loop = asyncio.get_running_loop()

    def fake_trim() -> int:
        calls.append(threading.current_thread().name)
        if len(calls) == 2:
            loop.call_soon_threadsafe(twice.set)
        return 1

    trimmer = HeapTrimmer(period_s=0.0, trim=fake_trim)
    app = web.Application()
    await trimmer.start(app)
    async with asyncio.timeout(10):
        await twice.wait()
    await trimmer.stop(app)
    stopped_at = len(calls)
    assert stopped_at >= 2 and trimmer.trims >= 1
    assert threading.main_thread().name not in calls  # the loop never waits for the C library
    await asyncio.sleep(0)
    assert len(calls) == stopped_at


async def test_a_failing_trim_is_logged_once_and_the_trimmer_stops(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> int:
        raise OSError("no heap here")

    trimmer = HeapTrimmer(period_s=0.0, trim=broken)
    await trimmer.start(web.Application())
    assert trimmer._task is not None
    async with asyncio.timeout(10):
        await trimmer._task  # it ends by itself after the failure
    assert trimmer.trims == 0
    assert [r.message for r in caplog.records if r.levelname == "ERROR"] == [
        "malloc_trim failed; RSS may creep, calls are unaffected"
    ]
