"""The audio core's runtime as it was before issue 17 (phonebridge/audio.py at 4f70cc5), for bench/audio only.

bench/audio times it beside the current one in the same process and checks that both give the very same bytes,
so "before" and "after" are measured on the same machine in the same minute. The filter design is shared
(phonebridge.audio._polyphase): issue 17 changed how a frame is computed, not the coefficients.
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.lib.stride_tricks import as_strided

from phonebridge.audio import _polyphase

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

_CHUNK = 4096

__all__ = ["InboundTranscoder", "OutboundTranscoder", "Resampler"]


class Resampler:
    """Streaming PCM16 resampler from `src_rate` to `dst_rate` with carried state.

    `process()` returns every output sample its input allows: after n input samples in total, exactly
    ceil(n * dst_rate / src_rate) samples have come out (160 samples at 8 kHz in -> 320 at 16 kHz out).
    The output lags the input by the fixed `delay_ms`; `flush()` returns that tail at the end of a stream.
    Any byte count works: an odd trailing byte waits for its other half.
    """

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        self.src_rate = src_rate
        self.dst_rate = dst_rate
        self._filter = _polyphase(src_rate, dst_rate)
        f = self._filter
        # Room for a few steps: data moves back to the start only when a step would not fit (see _step).
        self._buffer = np.zeros(f.taps + 4 * _CHUNK + 3 * f.down)
        blocks = (len(self._buffer) - f.window) // f.down + 1
        # One strided view of every block's window; a step only slices it (no per-frame allocation).
        self._windows = as_strided(self._buffer, shape=(blocks, f.window), strides=(8 * f.down, 8))
        self._out = np.empty((blocks, f.up))
        self._out_flat = self._out.reshape(-1)  # the same memory, outputs in time order
        self._samples = np.empty(blocks * f.up, dtype="<i2")
        self.reset()

    @property
    def delay_ms(self) -> float:
        """The fixed algorithmic delay, in milliseconds, between an input sample and its output."""
        return self._filter.delay_ms

    def reset(self) -> None:
        """Forget all carried audio: the next `process()` starts a new stream from silence."""
        self._buffer[:] = 0.0
        self._row = 0  # the current block: its window starts at self._row * down in the buffer
        self._fill = self._filter.taps - 1  # the window's history: silence before the stream
        self._emitted = 0  # outputs of the current block already returned
        self._half = b""

    def process(self, pcm16: bytes) -> bytes:
        """Resample the next piece of the stream; returns all the output it allows, as PCM16 bytes."""
        if self._half:
            pcm16 = self._half + pcm16
        self._half = pcm16[len(pcm16) - len(pcm16) % 2 :]
        samples = np.frombuffer(pcm16, dtype="<i2", count=len(pcm16) // 2)
        if len(samples) <= _CHUNK:
            return self._step(samples)
        return b"".join(self._step(samples[i : i + _CHUNK]) for i in range(0, len(samples), _CHUNK))

    def flush(self) -> bytes:
        """End the stream: return the output still owed (the last `delay_ms` of audio) and reset."""
        f = self._filter
        padding = np.zeros(-(-f.delay // f.up) + f.down, dtype="<i2")
        tail = self._step(padding, owed=f.delay)
        self.reset()
        return tail

    def _step(self, samples: np.ndarray, owed: int | None = None) -> bytes:
        """Append input and return the outputs it completes.

        With `owed` (flush), `samples` is silence padding: output stops `owed` prototype samples (the delay)
        after the last real input instead.
        """
        f = self._filter
        buffer, row, fill = self._buffer, self._row, self._fill
        if fill + len(samples) + 2 * f.down > len(buffer):
            start = row * f.down
            buffer[: fill - start] = buffer[start:fill]
            row, fill = 0, fill - start
        end = fill + len(samples)
        buffer[fill:end] = samples
        # Inputs at or after the current block's start, then the outputs they make available (a ceiling).
        arrived = (end if owed is None else fill) - row * f.down - (f.taps - 1)
        available = -((-arrived * f.up - (owed or 0)) // f.down)
        blocks = -(-available // f.up)
        np.dot(self._windows[row : row + blocks], f.matrix, out=self._out[:blocks])
        flat = self._out_flat[self._emitted : available]
        np.rint(flat, out=flat)
        np.minimum(flat, 32767.0, out=flat)
        np.maximum(flat, -32768.0, out=flat)
        pcm = self._samples[: len(flat)]
        np.copyto(pcm, flat, casting="unsafe")
        done, self._emitted = divmod(available, f.up)
        self._row, self._fill = row + done, end  # input before the next block's window is no longer needed
        return pcm.tobytes()


class InboundTranscoder:
    """Caller to model: mu-law 8 kHz from Twilio -> PCM16 16 kHz for Gemini Live."""

    def __init__(self) -> None:
        self._resampler = Resampler(8000, 16000)

    def process(self, ulaw8k: bytes) -> bytes:
        """Two output samples (four bytes) per mu-law byte, in step with the input."""
        return self._resampler.process(audioop.ulaw2lin(ulaw8k, 2))

    def reset(self) -> None:
        """Forget carried audio (a new stream, or a reconnected model)."""
        self._resampler.reset()


class OutboundTranscoder:
    """Model to caller: PCM16 24 kHz from Gemini Live -> mu-law 8 kHz for Twilio."""

    def __init__(self) -> None:
        self._resampler = Resampler(24000, 8000)

    def process(self, pcm24k: bytes) -> bytes:
        """Mu-law bytes for every 8 kHz sample this input allows; any byte count, odd ones included."""
        return audioop.lin2ulaw(self._resampler.process(pcm24k), 2)

    def flush(self) -> bytes:
        """End of the model's turn: the last few milliseconds still inside the filter, then a fresh start."""
        return audioop.lin2ulaw(self._resampler.flush(), 2)

    def reset(self) -> None:
        """Drop all carried audio, e.g. after a barge-in, so nothing of the cut turn leaks into the next."""
        self._resampler.reset()
