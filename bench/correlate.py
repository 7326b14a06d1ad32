"""Pure functions that turn the load generator's timestamps into the bridge's added latencies (no I/O).

All times are time.monotonic() seconds taken in the load generator, on both sides of the bridge.
- Inbound: the caller's k-th media frame (stamped as it is handed to its socket) is the bridge's k-th
  realtime audio message (stamped when the Live server read it): the inbound transcoder turns each 160-byte
  frame into exactly one 640-byte message, in order.
- Outbound: the Live server sends whole 40 ms chunks (1920 bytes at 24 kHz); each becomes exactly two
  160-byte Twilio frames. A completed turn ends with one short tail frame (the resampler's flush), an
  interrupted turn ends without one. So turn i's chunk j is the caller's 2j-th and (2j+1)-th full frames of
  that turn, counting full frames in order and skipping the short tails.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

FULL_FRAME = 160


def percentile(values: Sequence[float], q: float) -> float:
    """Exact nearest-rank percentile (q in 0..100); nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    """count, p50, p90, p99, p99.9 and max, in the values' unit."""
    return {
        "count": float(len(values)), "p50": percentile(values, 50), "p90": percentile(values, 90),
        "p99": percentile(values, 99), "p999": percentile(values, 99.9), "max": max(values, default=math.nan),
    }


def in_window(t: float, window: tuple[float, float]) -> bool:
    return window[0] <= t < window[1]


def inbound_latencies(sent: Sequence[float], received: Sequence[float], window: tuple[float, float]) -> list[float]:
    """Pair the k-th frame sent with the k-th audio message received; keep pairs sent inside `window`."""
    return [r - s for s, r in zip(sent, received) if in_window(s, window)]


def outbound_latencies(
    turns: Sequence[Sequence[float]], frames: Sequence[tuple[float, int]], window: tuple[float, float]
) -> tuple[list[float], list[float], int]:
    """Per chunk: its second frame's arrival minus the chunk's send time; per turn: the first frame's arrival
    minus the first chunk's send time. Also the number of chunks whose frames never arrived (call ended)."""
    full = [t for t, size in frames if size == FULL_FRAME]
    per_chunk: list[float] = []
    first: list[float] = []
    position = 0
    missing = 0
    for chunks in turns:
        for j, sent in enumerate(chunks):
            if position + 1 >= len(full):
                missing += 1
                continue
            if in_window(sent, window):
                per_chunk.append(full[position + 1] - sent)
                if j == 0:
                    first.append(full[position] - sent)
            position += 2
    return per_chunk, first, missing


def pair_next(
    starts: Sequence[float], ends: Sequence[float], window: tuple[float, float], max_gap: float = 0.5
) -> list[float]:
    """For each start inside `window`, the delay to the first end at or after it (ends and starts sorted).
    A start with no end within `max_gap` had no reaction (an `interrupted` when nothing was playing sends no
    clear): it is skipped and leaves that end to the start it belongs to."""
    out: list[float] = []
    k = 0
    for start in starts:
        while k < len(ends) and ends[k] < start:
            k += 1
        if k == len(ends):
            break
        if ends[k] - start > max_gap:
            continue
        if in_window(start, window):
            out.append(ends[k] - start)
        k += 1
    return out
