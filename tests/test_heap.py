"""The heap trimmer: glibc's malloc_trim and mallinfo2 are found and callable here, and the trimmer runs the
trim on its period, in a worker thread, only when enough lies free, for as long as the application runs."""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest
from aiohttp import web

from phonebridge.server.heap import HeapTrimmer, heap_free_bytes, malloc_trim


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_malloc_trim_and_the_free_count_are_found_and_work() -> None:
    trim, free = malloc_trim(), heap_free_bytes()
    assert trim is not None and free is not None
    blocks = [bytearray(200_000) for _ in range(50)]  # above the mmap threshold's neighbours: heap churn
    del blocks[::2]
    assert free() > 0
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

    trimmer = HeapTrimmer(period_s=0.001, trim=fake_trim)
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

    trimmer = HeapTrimmer(period_s=0.001, trim=broken)
    await trimmer.start(web.Application())
    assert trimmer._task is not None
    async with asyncio.timeout(10):
        await trimmer._task  # it ends by itself after the failure
    assert trimmer.trims == 0
    assert [r.message for r in caplog.records if r.levelname == "ERROR"] == [
        "malloc_trim failed; RSS may creep, calls are unaffected"
    ]


async def test_a_period_of_zero_turns_trimming_off() -> None:
    trimmer = HeapTrimmer(period_s=0.0, trim=lambda: 1)
    await trimmer.start(web.Application())
    assert trimmer._task is None


async def test_the_trimmer_waits_until_enough_lies_free() -> None:
    free = [0, 10, 99, 100]
    trimmed = asyncio.Event()

    def fake_trim() -> int:
        trimmed.set()
        return 1

    def fake_free() -> int:
        return free.pop(0) if len(free) > 1 else free[0]

    trimmer = HeapTrimmer(period_s=0.001, min_free=100, trim=fake_trim, free_bytes=fake_free)
    app = web.Application()
    await trimmer.start(app)
    async with asyncio.timeout(10):
        await trimmed.wait()
    await trimmer.stop(app)
    assert free == [100]  # three looks below the bar, then the trim


def test_settle_heap_freezes_what_lives_now_and_makes_young_collections_rarer() -> None:
    """serve's heap once it is up (phonebridge.server.serving.settle_heap): what is alive then is frozen out
    of full collections, and the young generation waits for YOUNG_GC_THRESHOLD allocations; a young reference
    cycle is still freed by the collector on its own, without an explicit gc.collect()."""
    import gc
    import weakref

    from phonebridge.server.serving import YOUNG_GC_THRESHOLD, settle_heap

    before = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_threshold() == (YOUNG_GC_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 0
        freed: list[int] = []

        class Node:
            pass

        keep = []
        for i in range(3 * YOUNG_GC_THRESHOLD):
            node = Node()
            node.me = node  # type: ignore[attr-defined]  # a cycle: refcounting alone never frees it
            keep.append(weakref.ref(node, lambda _, i=i: freed.append(i)))
            del node
        assert len(freed) >= YOUNG_GC_THRESHOLD, "the collector ran by itself and freed the young cycles"
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
