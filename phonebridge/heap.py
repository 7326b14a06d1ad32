"""Give the C heap's free pages back to the operating system, so RSS follows the memory calls really use.

glibc keeps what ended calls freed inside its heap. With calls of every size coming and going the heap
fragments, and RSS creeps up while live memory stays flat: in a 10-minute, 100-call soak malloc's in-use
bytes held at 114-129 MiB while its heap grew from 135 to 152 MiB. `malloc_trim(0)` hands the free pages
back (8-13 MiB each time at 100 calls) in 1-5 ms. It runs in a worker thread every TRIM_PERIOD_S so the
event loop does not wait for it (only an allocation that needs the heap's lock meanwhile does). Where the
C library has no malloc_trim (musl, macOS) there is nothing to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import sys
from collections.abc import Callable

from aiohttp import web

TRIM_PERIOD_S = 30.0

log = logging.getLogger("phonebridge.heap")


def malloc_trim() -> Callable[[], int] | None:
    """glibc's `malloc_trim(0)`, or None where the running C library has none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own C library
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: int(trim(0))


class HeapTrimmer:
    """Trims the heap every `period_s` while the application runs (aiohttp startup/cleanup hooks)."""

    def __init__(self, period_s: float = TRIM_PERIOD_S, trim: Callable[[], int] | None = None) -> None:
        self._period_s = period_s
        self._trim = trim if trim is not None else malloc_trim()
        self._task: asyncio.Task[None] | None = None
        self.trims = 0

    async def start(self, app: web.Application) -> None:
        if self._trim is not None:
            self._task = asyncio.create_task(self._run())

    async def stop(self, app: web.Application) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        assert self._trim is not None
        while True:
            await asyncio.sleep(self._period_s)
            try:
                released = await asyncio.to_thread(self._trim)
            except Exception:  # noqa: BLE001 - never worth more than a log line
                log.exception("malloc_trim failed; RSS may creep, calls are unaffected")
                return
            self.trims += 1
            log.debug("heap trimmed (%s)", "memory returned" if released else "nothing to return")
