"""Benchmark and quality report of phonebridge's audio path, one command: `bench/audio`.

Prints microseconds per 20 ms frame for the two directions of a call (median of many timed batches), and
the resampler's measured alias/image rejection, passband ripple and delay, each against its target.
Quality is read from the output spectrum (one second, Kaiser window beta 14, tones on exact 1 Hz bins).
Exit status 1 if any line fails.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from phonebridge.audio import InboundTranscoder, OutboundTranscoder, Resampler, ulaw_encode
from phonebridge.testing.speech import synth_speech

AMPLITUDE = 16384.0  # test tones at -6 dBFS
SKIP_S = 0.05  # start-up skipped before measuring
US_TARGET = 10.0  # "single-digit microseconds per 20 ms frame"


def per_frame_us(work: Callable[[bytes], bytes], frames: list[bytes], repeats: int = 40) -> float:
    """Median over `repeats` batches of the mean time per frame, in microseconds."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for frame in frames:
            work(frame)
        samples.append((time.perf_counter_ns() - start) / len(frames) / 1000)
    return statistics.median(samples)


def tone(freq: float, rate: int) -> bytes:
    n = np.arange(int(rate * (1 + 2 * SKIP_S)))
    return np.round(AMPLITUDE * np.sin(2 * np.pi * freq * n / rate)).astype("<i2").tobytes()


def amplitudes(src: int, dst: int, signal: bytes) -> np.ndarray:
    resampler = Resampler(src, dst)
    out = np.frombuffer(resampler.process(signal) + resampler.flush(), dtype="<i2").astype(np.float64)
    start = int(SKIP_S * dst)
    window = np.kaiser(dst, 14.0)
    return 2 * np.abs(np.fft.rfft(out[start : start + dst] * window)) / window.sum()


def db(amplitude: float) -> float:
    return 20 * np.log10(max(amplitude, 1e-12) / AMPLITUDE)


def ripple_db(src: int, dst: int) -> float:
    gains = [db(amplitudes(src, dst, tone(f, src))[f]) for f in range(300, 3401, 50)]
    return max(gains) - min(gains)


def alias_db(src: int, dst: int) -> float:
    """Worst alias in the output of a tone swept over the stopband (downsampling)."""
    stop = int(0.575 * dst)
    return max(db(float(amplitudes(src, dst, tone(f, src)).max())) for f in range(stop, src // 2, 97))


def image_db(src: int, dst: int) -> float:
    """Worst image above src/2 in the output of a tone swept over the passband (upsampling)."""
    return max(db(float(amplitudes(src, dst, tone(f, src))[src // 2 :].max())) for f in range(300, 3401, 100))


def measured_delay_ms(src: int, dst: int) -> float:
    """Centre of mass of an impulse's response (symmetric for a linear-phase filter) minus the impulse time."""
    signal = np.zeros(src // 10)
    signal[30] = 20000
    out = np.frombuffer(Resampler(src, dst).process(signal.astype("<i2").tobytes()), dtype="<i2").astype(float)
    return 1000 * ((np.arange(len(out)) * out).sum() / out.sum() / dst - 30 / src)


def main() -> int:
    caller = synth_speech("the caller says something", 8000, seconds=2.0)
    inbound_frames = [ulaw_encode(frame) for frame in _frames(caller, 320)]
    outbound_frames = _frames(synth_speech("the model answers", 24000, seconds=2.0), 960)
    inbound_us = per_frame_us(InboundTranscoder().process, inbound_frames)
    outbound_us = per_frame_us(OutboundTranscoder().process, outbound_frames)
    rows = [
        ("in  us/frame (ulaw decode + 8k->16k)", inbound_us, "<", US_TARGET),
        ("out us/frame (24k->8k + ulaw encode)", outbound_us, "<", US_TARGET),
        ("out alias rejection, 24k->8k (dB)", alias_db(24000, 8000), "<=", -80.0),
        ("in  image rejection, 8k->16k (dB)", image_db(8000, 16000), "<=", -80.0),
        ("out passband ripple 300-3400 Hz (dB)", ripple_db(24000, 8000), "<=", 0.1),
        ("in  passband ripple 300-3400 Hz (dB)", ripple_db(8000, 16000), "<=", 0.1),
        ("out delay, measured (ms)", measured_delay_ms(24000, 8000), "<=", 3.0),
        ("in  delay, measured (ms)", measured_delay_ms(8000, 16000), "<=", 3.0),
    ]
    failed = 0
    print(f"{'measure':40} {'value':>9}  {'target':>9}  result")
    for name, value, op, target in rows:
        ok = value < target if op == "<" else value <= target
        failed += not ok
        print(f"{name:40} {value:9.3f}  {op + ' ' + format(target, 'g'):>9}  {'PASS' if ok else 'FAIL'}")
    return 1 if failed else 0


def _frames(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data) - size + 1, size)]


if __name__ == "__main__":
    sys.exit(main())
