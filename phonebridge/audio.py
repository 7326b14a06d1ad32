"""Sans-I/O: the audio core, G.711 mu-law and streaming resampling (no clock either).

All PCM here is 16-bit little-endian mono. Twilio speaks mu-law at 8 kHz, Gemini Live wants PCM16 at 16 kHz and
answers at 24 kHz, so every call runs 8k -> 16k inbound and 24k -> 8k outbound, every 20 ms.

Why a polyphase FIR of our own and not audioop.ratecv or soxr: ratecv (and soxr "QQ") do no anti-aliasing on
24k -> 8k, and soxr's better qualities hold 40-150 ms of audio back when fed 20 ms frames. This filter is
linear-phase with a fixed delay of about 1.7 ms (measured by bench/audio), rejects aliases and images by more
than 80 dB with a passband flat to 0.05 dB, and returns every output sample as soon as the input it depends
on has arrived. Its taps come from a near-minimax design (Lawson's reweighted least squares), a quarter
shorter than a Kaiser-windowed sinc of the same rejection; very long prototypes fall back to Kaiser.

Design, for a ratio dst/src = L/M in lowest terms: the prototype filter runs at src*L; its passband ends at
0.425 and its stopband starts at 0.575 of the lower of the two rates (3400 Hz and 4600 Hz around 8 kHz). So
the telephone band is kept flat, and the 4.0-4.6 kHz band, which folds onto 3.4-4.0 kHz, is attenuated only
partly: that is the price of the short delay.

Why the output is exact: coefficients are rounded to multiples of 2**-30 and input samples are integers, so
every product and every partial sum is exactly representable in a float64. The result does not depend on the
order BLAS sums in, which makes streaming in any chunk sizes give the very same samples as one call; the
rounding and clipping that follow are exact too (see _ROUND).
"""

from __future__ import annotations

import functools
import math
import sys
import warnings

import numpy as np
from numpy.lib.stride_tricks import as_strided

with warnings.catch_warnings():
    # Python 3.11/3.12 warn that audioop goes away in 3.13; there, the audioop-lts package provides it.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = ["InboundTranscoder", "OutboundTranscoder", "Resampler", "ulaw_decode", "ulaw_encode"]

_PASS_EDGE = 0.425  # of the lower rate: 3400 Hz at 8 kHz
_STOP_EDGE = 0.575  # of the lower rate: 4600 Hz at 8 kHz
_STOP_RIPPLE = 10 ** (-88 / 20)  # design target; the bar is 80 dB
_PASS_RIPPLE = 0.003  # +-0.026 dB; the bar is 0.1 dB peak to peak
_MINIMAX_MAX_TAPS = 121  # beyond, the design takes too long (44.1k -> 8k, 48k -> 8k): a Kaiser window instead
_LAWSON_ROUNDS = 40
_COEFFICIENT_BITS = 30  # products of int16 and these coefficients stay exact in float64
_ROW_BLOCKS, _ROW_OUTPUTS = 8, 16  # a row of the product: up to 8 blocks, 16 outputs (see _Polyphase)
_CHUNK = 4096  # input samples per internal step: bounds the work buffers, whatever the caller sends


def ulaw_encode(pcm16: bytes) -> bytes:
    """G.711 mu-law encode 16-bit little-endian PCM: one byte per sample, bit-exact with audioop.lin2ulaw."""
    if len(pcm16) % 2:
        raise ValueError(f"PCM16 needs an even number of bytes, got {len(pcm16)}")
    return audioop.lin2ulaw(pcm16, 2)


def ulaw_decode(ulaw: bytes) -> bytes:
    """G.711 mu-law decode to 16-bit little-endian PCM, bit-exact with audioop.ulaw2lin."""
    return audioop.ulaw2lin(ulaw, 2)


class _Polyphase:
    """The filter for one rate pair, laid out for one matrix product per block of L outputs.

    Output j sits at prototype time j*M; it needs input up to index floor(j*M/L). Outputs come in blocks of L
    (one per phase) that consume M inputs; block q reads the window x[q*M - taps + 1 : q*M + M], and column r
    of `matrix` holds the taps for the block's r-th output at its offset in that window.

    The resampler computes rows of G = `group` blocks at a time: row Q reads x[Q*G*M - taps + 1 : (Q+1)*G*M],
    and `row_matrix` holds each block's columns shifted down by the block's offset in that window. Why: np.dot
    copies the overlapping windows into one matrix before it calls BLAS, and rows of 8 blocks copy 2,080 numbers
    per 20 ms frame instead of 13,280 (24k -> 8k); a 20 x 104 by 104 x 8 product also suits BLAS better than a
    160 x 83 by 83 x 1 one. np.dot alone, per frame, best of 200 batches on the 2-core development box: 3.4 us
    instead of 6.1 (24k -> 8k), 2.7 instead of 5.7 (8k -> 16k). Each output is the same sum
    of the same products (and of zeros), so it is the same number (see the module docstring).
    """

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        if src_rate <= 0 or dst_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {src_rate} -> {dst_rate}")
        common = math.gcd(src_rate, dst_rate)
        self.up = dst_rate // common
        self.down = src_rate // common
        prototype, self.delay = _prototype(src_rate, self.up, self.down)  # delay: in prototype samples
        # At least `down` taps per phase: then the next row's window never starts past the input we hold,
        # which Resampler._step relies on when it moves the input it keeps to the buffer's start.
        self.taps = max(-(-len(prototype) // self.up), self.down)
        padded = np.zeros(self.taps * self.up)
        padded[: len(prototype)] = prototype  # zeros on the oldest taps: the delay does not change
        self.window = self.taps + self.down - 1
        self.matrix = np.zeros((self.window, self.up))
        for r in range(self.up):
            phase, offset = (r * self.down) % self.up, (r * self.down) // self.up
            column = _unit_sum(padded[phase :: self.up])
            self.matrix[self.taps - 1 + offset - np.arange(self.taps), r] = column
        self.matrix.flags.writeable = False  # shared by every Resampler of this rate pair
        self.group = max(1, min(_ROW_BLOCKS, _ROW_OUTPUTS // self.up))  # a 20 ms frame's 160 blocks: whole rows
        self.row_inputs, self.row_outputs = self.group * self.down, self.group * self.up
        self.row_window = self.taps - 1 + self.row_inputs
        self.row_matrix = np.zeros((self.row_window, self.row_outputs))
        for g in range(self.group):
            rows, columns = slice(g * self.down, g * self.down + self.window), slice(g * self.up, (g + 1) * self.up)
            self.row_matrix[rows, columns] = self.matrix
        self.row_matrix.flags.writeable = False
        self.delay_ms = 1000.0 * self.delay / (src_rate * self.up)


@functools.lru_cache(maxsize=32)
def _polyphase(src_rate: int, dst_rate: int) -> _Polyphase:
    """The design for a rate pair, made once per process: it takes tens of milliseconds, calls are many."""
    return _Polyphase(src_rate, dst_rate)


def _prototype(src_rate: int, up: int, down: int) -> tuple[np.ndarray, int]:
    """The linear-phase lowpass at src_rate*up; returns it and its delay in prototype samples."""
    if up == down:
        return np.ones(1), 0
    rate = src_rate * up
    low = min(src_rate, src_rate * up // down)
    pass_edge, stop_edge = _PASS_EDGE * low / rate, _STOP_EDGE * low / rate  # cycles per sample
    # Bellanger's estimate of the minimax length, made odd so the delay is a whole number of samples.
    estimate = 2 / 3 * math.log10(1 / (10 * _PASS_RIPPLE * _STOP_RIPPLE)) / (stop_edge - pass_edge)
    length = (math.ceil(estimate) + 2) | 1  # two taps of margin: the estimate is not a guarantee
    if length <= _MINIMAX_MAX_TAPS:
        taps = _minimax_lowpass(length, pass_edge, stop_edge)
    else:
        taps = _kaiser_lowpass(pass_edge, stop_edge)
    return taps * up, (len(taps) - 1) // 2


def _minimax_lowpass(length: int, pass_edge: float, stop_edge: float) -> np.ndarray:
    """Near-equiripple lowpass by Lawson's iteratively reweighted least squares.

    Why not a Kaiser window: it forces the passband ripple down to the stopband's 1e-4, while 0.003 is
    plenty; spending that slack buys about a quarter fewer taps, hence less CPU and less delay.
    """
    half = (length - 1) // 2
    points = 8 * length
    in_pass = max(8, round(points * pass_edge / (0.5 - stop_edge + pass_edge)))
    freqs = np.concatenate([np.linspace(0, pass_edge, in_pass), np.linspace(stop_edge, 0.5, points - in_pass)])
    wanted = (freqs <= pass_edge).astype(np.float64)
    basis = np.cos(2 * np.pi * np.outer(freqs, np.arange(half + 1)))
    basis[:, 1:] *= 2  # h[0] + 2 * sum(h[k] cos(2 pi f k)): the response of a symmetric filter
    importance = np.where(wanted > 0, 1.0, _PASS_RIPPLE / _STOP_RIPPLE)
    weights = importance.copy()
    for _ in range(_LAWSON_ROUNDS):
        root = np.sqrt(weights)
        cosines = np.linalg.lstsq(basis * root[:, None], wanted * root, rcond=None)[0]
        error = importance * np.abs(basis @ cosines - wanted)
        weights = np.maximum(weights * error / np.mean(weights * error), 1e-12)
    return np.concatenate([cosines[:0:-1], cosines])


def _kaiser_lowpass(pass_edge: float, stop_edge: float) -> np.ndarray:
    """Kaiser-windowed sinc: longer than minimax, but designed at once whatever its length."""
    attenuation = -20 * math.log10(_STOP_RIPPLE)
    length = math.ceil((attenuation - 7.95) / (2.285 * 2 * math.pi * (stop_edge - pass_edge))) + 1 | 1
    cutoff = (pass_edge + stop_edge) / 2
    n = np.arange(length) - (length - 1) / 2
    taps: np.ndarray = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(length, 0.1102 * (attenuation - 8.7))
    return taps


def _unit_sum(phase: np.ndarray) -> np.ndarray:
    """Scale a phase to a sum of 1, then round to multiples of 2**-30 (see the module docstring).

    Each phase's gain at 0 Hz differs from 1 by up to the passband ripple: a loud constant input would come
    out some steps off, and the phases' mismatch would leave a faint tone at multiples of src_rate.
    """
    scale = float(1 << _COEFFICIENT_BITS)
    rounded: np.ndarray = np.round(phase / phase.sum() * scale) / scale
    return rounded


class Resampler:
    """Streaming PCM16 resampler from `src_rate` to `dst_rate` with carried state.

    `process()` returns every output sample its input allows: after n input samples in total, exactly
    ceil(n * dst_rate / src_rate) samples have come out (160 samples at 8 kHz in -> 320 at 16 kHz out).
    The output lags the input by the fixed `delay_ms`; `flush()` returns that tail at the end of a stream.
    Any byte count works: an odd trailing byte waits for its other half.

    Why it is laid out this way: a call runs this every 20 ms each way, and every numpy call costs about a
    microsecond whatever its size (as much as the rest of a frame's work), so a step makes three: the matrix
    product, the clipping and the rounding. The rest is done in C without numpy's dispatch: the input bytes go
    into an int16 buffer through a memoryview; the input still needed moves back to the buffer's start after
    every step (a memmove of about 200 bytes), so the windows and outputs of a frame sit where they did for the
    frame before and their views are reused (_Shape); the samples are read straight out of the rounded floats.
    """

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        self.src_rate = src_rate
        self.dst_rate = dst_rate
        self._filter = f = _polyphase(src_rate, dst_rate)
        # Held after a step: taps - 1 + fewer than `row_inputs` samples and an odd byte; then a chunk arrives.
        samples = f.taps + 2 * f.row_inputs + _CHUNK + 1
        self._buffer = np.zeros(samples, dtype="<i2")
        self._bytes = memoryview(self._buffer.data).cast("B")
        rows = (samples - f.row_window) // f.row_inputs + 1
        # Every row's window, all overlapping views of the buffer (np.dot copies them into one matrix).
        self._windows = as_strided(self._buffer, shape=(rows, f.row_window), strides=(2 * f.row_inputs, 2))
        self._values = np.empty(rows * f.row_outputs)  # the outputs of a step, in time order
        self._shape = _Shape(self._windows, self._values, 0, 0, f)
        self.reset()

    @property
    def delay_ms(self) -> float:
        """The fixed algorithmic delay, in milliseconds, between an input sample and its output."""
        return self._filter.delay_ms

    def reset(self) -> None:
        """Forget all carried audio: the next `process()` starts a new stream from silence."""
        history = 2 * (self._filter.taps - 1)
        self._bytes[:history] = bytes(history)  # the window's history: silence before the stream
        self._end = history  # bytes held; the current row's window starts at byte 0
        self._emitted = 0  # outputs of the current row already returned

    def process(self, pcm16: bytes) -> bytes:
        """Resample the next piece of the stream; returns all the output it allows, as PCM16 bytes."""
        if len(pcm16) <= 2 * _CHUNK:
            return self._step(pcm16)
        return self._steps(pcm16, False)

    def flush(self) -> bytes:
        """End the stream: return the output still owed (the last `delay_ms` of audio) and reset."""
        return self._flush(False)

    def _wide(self, pcm16: bytes) -> bytes:
        """process(), each sample in the high half of an int32: what audioop.lin2ulaw(_, 4) encodes. Why: for
        160 outputs (24k -> 8k) audioop's saturating mul costs less than numpy's clip; for 320 (8k -> 16k) more."""
        if len(pcm16) <= 2 * _CHUNK:
            return self._step(pcm16, None, True)
        return self._steps(pcm16, True)

    def _steps(self, pcm16: bytes, wide: bool) -> bytes:
        return b"".join(self._step(pcm16[i : i + 2 * _CHUNK], None, wide) for i in range(0, len(pcm16), 2 * _CHUNK))

    def _flush(self, wide: bool) -> bytes:
        """flush(); `wide` as in _wide()."""
        f = self._filter
        self._end &= ~1  # a lone half sample never completes: drop it
        tail = self._step(bytes(2 * (-(-f.delay // f.up) + f.down)), f.delay, wide)
        self.reset()
        return tail

    def _step(self, pcm16: bytes, owed: int | None = None, wide: bool = False) -> bytes:
        """Append input and return the outputs it completes, as PCM16 bytes (`wide`: as _wide() does).

        With `owed` (flush), `pcm16` is silence padding: output stops `owed` prototype samples (the delay)
        after the last real input instead. Outputs of an unfinished row are computed from whatever the
        buffer holds past the input (old samples, the odd byte): their taps there are zero.
        """
        f, start, data = self._filter, self._end, self._bytes
        end = start + len(pcm16)
        data[start:end] = pcm16
        # Inputs at or after the current row's start, then the outputs they make available (a ceiling).
        arrived = ((end if owed is None else start) >> 1) - (f.taps - 1)
        available = -((-arrived * f.up - (owed or 0)) // f.down)
        shape = self._shape
        if shape.stop != available or shape.first != self._emitted:
            shape = self._shape = _Shape(self._windows, self._values, self._emitted, available, f)
        _dot(shape.windows, f.row_matrix, shape.out)
        outputs = shape.emitted
        if not wide:  # clipped before the rounding (see _ROUND)
            if _clip is not None:
                _clip(outputs, -32768.0, 32767.0, outputs)
            else:
                np.minimum(np.maximum(outputs, -32768.0, out=outputs), 32767.0, out=outputs)
        _add(outputs, _ROUND, outputs)
        self._emitted, keep = shape.rest, shape.keep
        data[: end - keep] = data[keep:end]
        self._end = end - keep
        if wide:  # the rounded outputs' low words as int32, then saturated into the high halves (see _ROUND)
            return audioop.mul(shape.words.tobytes(), 4, 65536.0)
        return shape.samples.tobytes()  # the clipped outputs' low 16 bits: the samples themselves (see _ROUND)


# Adding 1.5 * 2**52 to a float64 of magnitude below 2**51 rounds it to an integer (ties to even, as numpy.rint
# does) and leaves that integer, in two's complement, in the float's low 32 bits (IEEE 754 binary64). Read as
# int32 they are the rounded samples; audioop.mul by 65536 moves them to the high half of an int32 with
# saturation, which clips to -32768..32767 exactly; audioop.lin2ulaw(_, 4) reads that high half, so it gives what
# it gives on the clipped int16 samples. Clipped to -32768..32767 before the rounding instead (the same as after:
# no number between 32767 and 32767.5, or -32768.5 and -32768, rounds past the bound), the floats' low 16 bits,
# read as int16, are the PCM16 samples themselves.
_ROUND = 1.5 * 2.0**52
_LOW_WORD = 0 if sys.byteorder == "little" else 1
_LOW_HALF = 0 if sys.byteorder == "little" else 3  # the low int16 of a float64
# numpy's clip ufunc: np.clip, and ndarray.clip, wrap it in Python checks that cost twice the ufunc itself on a
# 20 ms frame. Where numpy keeps it elsewhere, np.maximum and np.minimum do the same (tests/test_audio_fast.py).
_clip = getattr(getattr(getattr(np, "_core", None), "umath", None), "clip", None)
_dot, _add = np.dot, np.add  # module globals: one lookup each, not two


class _Shape:
    """The views one step's shape needs (its row count, first and last output), made once and reused while
    the shape repeats, which it does every frame of a call: numpy slicing costs as much as a small product."""

    __slots__ = ("emitted", "first", "keep", "out", "rest", "samples", "stop", "windows", "words")

    def __init__(self, windows: np.ndarray, values: np.ndarray, first: int, stop: int, f: _Polyphase):
        self.stop, self.first, width = stop, first, f.row_outputs
        rows = -(-stop // width)
        done, self.rest = divmod(stop, width)  # whole rows done, and the next row's outputs already returned
        self.keep = 2 * done * f.row_inputs  # bytes of input before the next row's window: no longer needed
        self.windows = windows[:rows]
        self.out = values[: rows * width].reshape(rows, width)  # np.dot's output: the rows' outputs in order
        self.emitted = values[first:stop]  # the outputs this step returns
        self.samples = values.view(np.int16)[4 * first + _LOW_HALF : 4 * stop : 4]
        self.words = values.view(np.int32)[2 * first + _LOW_WORD : 2 * stop : 2]


class InboundTranscoder:
    """Caller to model: mu-law 8 kHz from Twilio -> PCM16 16 kHz for Gemini Live."""

    def __init__(self) -> None:
        self._resampler = Resampler(8000, 16000)
        self._process = self._resampler.process  # bound once: the hot path calls it 50 times a second

    def process(self, ulaw8k: bytes) -> bytes:
        """Two output samples (four bytes) per mu-law byte, in step with the input."""
        return self._process(audioop.ulaw2lin(ulaw8k, 2))

    def reset(self) -> None:
        """Forget carried audio (a new stream, or a reconnected model)."""
        self._resampler.reset()


class OutboundTranscoder:
    """Model to caller: PCM16 24 kHz from Gemini Live -> mu-law 8 kHz for Twilio."""

    def __init__(self) -> None:
        self._resampler = Resampler(24000, 8000)
        self._wide = self._resampler._wide  # bound once: the hot path calls it 50 times a second

    def process(self, pcm24k: bytes) -> bytes:
        """Mu-law bytes for every 8 kHz sample this input allows; any byte count, odd ones included."""
        return audioop.lin2ulaw(self._wide(pcm24k), 4)

    def flush(self) -> bytes:
        """End of the model's turn: the last few milliseconds still inside the filter, then a fresh start."""
        return audioop.lin2ulaw(self._resampler._flush(True), 4)

    def reset(self) -> None:
        """Drop all carried audio, e.g. after a barge-in, so nothing of the cut turn leaks into the next."""
        self._resampler.reset()
