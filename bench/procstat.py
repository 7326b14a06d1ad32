"""CPU time and resident memory of a process, read from /proc (Linux), and a loop-lag probe.

CPU is utime+stime in seconds (clock ticks from os.sysconf), so a window's CPU share is
delta_cpu / delta_wall: 1.0 means one core fully busy.
"""

from __future__ import annotations

import asyncio
import os
import time


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        # The command name (field 2) may contain spaces: split after its closing parenthesis.
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident set size now (VmRSS)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class CpuWindow:
    """CPU share of some processes between `start()` and `stop()`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._pids = pids
        self._cpu0: dict[str, float] = {}
        self._t0 = 0.0
        self.share: dict[str, float] = {}

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._cpu0 = {name: cpu_seconds(pid) for name, pid in self._pids.items()}

    def stop(self) -> dict[str, float]:
        wall = max(1e-9, time.monotonic() - self._t0)
        self.share = {name: (cpu_seconds(pid) - self._cpu0[name]) / wall for name, pid in self._pids.items()}
        return self.share


async def probe_loop_lag(lags: list[float], stop: asyncio.Event, period_s: float = 0.01) -> None:
    """Append how late each `period_s` wake-up of this event loop is: a busy loop delays every timestamp
    this process takes, so its lag bounds how much of a measured latency is the load generator's own."""
    while not stop.is_set():
        due = time.monotonic() + period_s
        await asyncio.sleep(period_s)
        lags.append(max(0.0, time.monotonic() - due))
