"""Sans-I/O: the viewer's audio arithmetic: mu-law runs on the line's clock -> min/max envelopes, peaks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from phonebridge.audio import ulaw_decode

RATE = 8000  # Twilio's mu-law: one byte a sample, both ways
MAX_BUCKETS = 12_000  # envelope points per track: enough for any screen, bounded for any call length
MIN_BUCKET_S = 0.005


@dataclass(frozen=True)
class Envelope:
    """Min/max of the track's samples per bucket, scaled to -127..127 (0 where the track is silent)."""

    bucket_s: float
    lows: tuple[int, ...]
    highs: tuple[int, ...]


def envelope(runs: tuple[tuple[float, bytes], ...], duration: float) -> Envelope:
    """Min/max per bucket over the whole call: at most MAX_BUCKETS points, whatever its length."""
    bucket_s = max(MIN_BUCKET_S, duration / MAX_BUCKETS)
    count = max(1, math.ceil(duration / bucket_s))
    lows, highs = np.zeros(count, dtype=np.int32), np.zeros(count, dtype=np.int32)
    for start, ulaw in runs:
        if not ulaw:
            continue
        pcm = np.frombuffer(ulaw_decode(ulaw), dtype="<i2").astype(np.int32)
        index = ((start + np.arange(len(pcm)) / RATE) / bucket_s).astype(np.int64).clip(0, count - 1)
        np.minimum.at(lows, index, pcm * 127 // 32768)
        np.maximum.at(highs, index, pcm * 127 // 32767)
    return Envelope(bucket_s, tuple(int(v) for v in lows), tuple(int(v) for v in highs))


def peak(ulaw: bytes) -> int:
    return int(np.abs(np.frombuffer(ulaw_decode(ulaw), dtype="<i2").astype(np.int32)).max())
