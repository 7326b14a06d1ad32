"""Passband gain of the resamplers, measured the ways issue 17 could have measured it: `bench/passband`.

The issue reported 1.2 dB of ripple over 300-3400 Hz "measured with steady tones through the streaming API"
(8k -> 16k: -0.84 dB at 300 Hz, -1.2 dB at 3400 Hz; 24k -> 8k: 0.85 dB). This prints, for tones every 50 Hz
from 300 to 3400 Hz fed in 20 ms frames, the gain each method reads, its extremes and its spread (the ripple):

- rms: steady-state RMS of the output over one second starting 50 ms in (far past the 1.7 ms delay) against
  the input's RMS: what the filter does. Every tone is a whole number of periods in that second.
- mu-law: the same through the transcoders the bridge uses (InboundTranscoder, OutboundTranscoder), mu-law
  included, output RMS against the PCM input's; tones 1/7 Hz off the 50 Hz grid, and on it (see mulaw_gain_db).
- first frame: the RMS of the first 20 ms frame out against the first frame in: the filter's delay and its
  start from silence are in it.
- sample peak: the largest output sample against the amplitude: at 8 kHz a 2000 Hz tone has 4 samples a period,
  none of them need be near its crest.
- hann N: the largest bin of an N-point Hann-windowed FFT of the steady output: tones between bins lose up to
  1.42 dB (scalloping). Exact 1 Hz bins (bench/audio, tests/test_audio) read the same as rms.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np

from phonebridge.audio import InboundTranscoder, OutboundTranscoder, Resampler, ulaw_decode, ulaw_encode

AMPLITUDE = 16384.0  # -6 dBFS
SKIP_S = 0.05
FREQS = tuple(range(300, 3401, 50))
OFF_GRID_HZ = 1 / 7


def tone(
    freq: float, rate: int, amplitude: float = AMPLITUDE, seconds: float = 1.0 + 2 * SKIP_S, lag_s: float = 0.0
) -> np.ndarray:
    n = np.arange(int(rate * seconds))
    return np.round(amplitude * np.sin(2 * np.pi * freq * (n / rate - lag_s)))


def _pcm(x: np.ndarray) -> bytes:
    return x.astype("<i2").tobytes()


def _samples(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float64)


def streamed(src: int, dst: int, x: np.ndarray, mulaw: bool = False) -> np.ndarray:
    """The output of `x` fed in 20 ms frames: through a Resampler, or (mulaw) through the bridge's transcoder
    for that direction, its mu-law side encoded (inbound input) or decoded (outbound output) here."""
    data, frame = _pcm(x), 2 * src // 50
    if not mulaw:
        resampler = Resampler(src, dst)
        return _samples(b"".join(resampler.process(data[i : i + frame]) for i in range(0, len(data), frame)))
    if (src, dst) == (8000, 16000):
        inbound, ulaw = InboundTranscoder(), ulaw_encode(data)
        return _samples(b"".join(inbound.process(ulaw[i : i + frame // 2]) for i in range(0, len(ulaw), frame // 2)))
    outbound = OutboundTranscoder()
    return _samples(ulaw_decode(b"".join(outbound.process(data[i : i + frame]) for i in range(0, len(data), frame))))


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x.astype(np.float64)))))


def _steady(x: np.ndarray, rate: int) -> np.ndarray:
    start = int(SKIP_S * rate)
    return x[start : start + rate]


def rms_gain_db(src: int, dst: int, freq: int, amplitude: float = AMPLITUDE) -> float:
    x = tone(freq, src, amplitude)
    return float(20 * np.log10(rms(_steady(streamed(src, dst, x), dst)) / rms(_steady(x, src))))


def mulaw_gain_db(src: int, dst: int, freq: int, amplitude: float = AMPLITUDE, offset_hz: float = OFF_GRID_HZ) -> float:
    """The transcoder's steady RMS gain, mu-law included, for a tone `offset_hz` above `freq`, over two seconds.

    Why off the grid: a tone on a multiple of 50 Hz repeats every 160 samples at 8 kHz, so mu-law's error repeats
    too instead of averaging out, and what it does to the RMS depends on the phase at which the samples fall (up
    to 0.26 dB at -6 dBFS, G.711's doing, not the filter's: offset_hz=0 shows it). 1/7 Hz off, the pattern never
    repeats within the measurement, the error is noise 38 dB down, and it adds a near-constant 0.001-0.1 dB."""
    seconds = 2.0
    x = tone(freq + offset_hz, src, amplitude, seconds=seconds + 2 * SKIP_S)
    y = streamed(src, dst, x, mulaw=True)
    start_in, start_out = int(SKIP_S * src), int(SKIP_S * dst)
    kept_in, kept_out = x[start_in : start_in + int(seconds * src)], y[start_out : start_out + int(seconds * dst)]
    return float(20 * np.log10(rms(kept_out) / rms(kept_in)))


def mulaw_on_grid_gain_db(src: int, dst: int, freq: int) -> float:
    return mulaw_gain_db(src, dst, freq, offset_hz=0.0)


def first_frame_gain_db(src: int, dst: int, freq: int) -> float:
    x = tone(freq, src)
    return float(20 * np.log10(rms(streamed(src, dst, x)[: dst // 50]) / rms(x[: src // 50])))


def peak_gain_db(src: int, dst: int, freq: int) -> float:
    return float(20 * np.log10(np.abs(_steady(streamed(src, dst, tone(freq, src)), dst)).max() / AMPLITUDE))


def hann_gain_db(points: int) -> Callable[[int, int, int], float]:
    def gain(src: int, dst: int, freq: int) -> float:
        window = np.hanning(points)
        segment = _steady(streamed(src, dst, tone(freq, src)), dst)[:points]
        return float(20 * np.log10(2 * np.abs(np.fft.rfft(segment * window)).max() / window.sum() / AMPLITUDE))

    return gain


def ripple(gains: list[float]) -> float:
    return max(gains) - min(gains)


METHODS: dict[str, Callable[[int, int, int], float]] = {
    "rms (the filter)": rms_gain_db,
    "mu-law transcoder, tones 1/7 Hz off": mulaw_gain_db,
    "mu-law transcoder, tones on 50 Hz grid": mulaw_on_grid_gain_db,
    "first 20 ms frame rms": first_frame_gain_db,
    "sample peak": peak_gain_db,
    "hann 256-point fft peak bin": hann_gain_db(256),
    "hann 512-point fft peak bin": hann_gain_db(512),
}


def main() -> int:
    print(f"{'method (tones every 50 Hz, 300-3400)':38} {'way':9} {'min':>7} {'max':>7} {'@300':>7} {'@3400':>7} {'ripple':>7}")
    for name, method in METHODS.items():
        for way, src, dst in (("8k->16k", 8000, 16000), ("24k->8k", 24000, 8000)):
            gains = [method(src, dst, f) for f in FREQS]
            print(f"{name:38} {way:9} {min(gains):+7.3f} {max(gains):+7.3f} {gains[0]:+7.3f} {gains[-1]:+7.3f}"
                  f" {ripple(gains):7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
