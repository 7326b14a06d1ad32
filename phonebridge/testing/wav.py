"""Tiny WAV helpers for tests and demos: read any PCM WAV as mono 16-bit at the rate you need, write mono
or stereo 16-bit WAVs.

Only integer PCM WAVs (8/16/24/32-bit, any channel count) are read: that is what the standard library's
``wave`` module understands. Float and mu-law WAVs raise ``wave.Error``; convert them first.
"""

from __future__ import annotations

import wave
from os import PathLike

import numpy as np

from phonebridge.audio import Resampler

StrPath = str | PathLike[str]


def read_wav(path: StrPath, rate: int = 8000) -> bytes:
    """Return the file's audio as mono 16-bit little-endian PCM at ``rate`` Hz (channels averaged)."""
    with wave.open(str(path), "rb") as wav:
        channels, width, src_rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
        raw = wav.readframes(wav.getnframes())
    samples = _to_int16(raw, width).reshape(-1, channels)
    mono = samples.mean(axis=1) if channels > 1 else samples[:, 0]
    pcm = np.round(mono).astype("<i2").tobytes()
    return resample_pcm16(pcm, src_rate, rate)


def write_wav(path: StrPath, pcm16: bytes, rate: int = 8000, channels: int = 1) -> None:
    """Write 16-bit little-endian PCM (interleaved if ``channels`` > 1) as a WAV file."""
    if len(pcm16) % (2 * channels):
        raise ValueError("pcm16 must hold whole frames of 16-bit samples")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm16)


def write_stereo_wav(path: StrPath, left: bytes, right: bytes, rate: int = 8000) -> None:
    """Write two mono PCM16 tracks as one stereo WAV; the shorter one is padded with silence."""
    write_wav(path, interleave(left, right), rate, channels=2)


def interleave(left: bytes, right: bytes) -> bytes:
    """Two mono PCM16 tracks -> interleaved stereo PCM16, padding the shorter one with silence."""
    a = np.frombuffer(left, dtype="<i2")
    b = np.frombuffer(right, dtype="<i2")
    out = np.zeros((max(len(a), len(b)), 2), dtype="<i2")
    out[: len(a), 0] = a
    out[: len(b), 1] = b
    return out.tobytes()


def resample_pcm16(pcm16: bytes, src_rate: int, dst_rate: int) -> bytes:
    """Resample a whole mono PCM16 clip with phonebridge's own resampler: same length in time, no delay."""
    if src_rate == dst_rate:
        return pcm16
    resampler = Resampler(src_rate, dst_rate)
    out = resampler.process(pcm16) + resampler.flush()
    # A whole clip has no latency budget: drop the filter's fixed delay so the clip stays time-aligned and
    # exactly as long as it should be.
    skip = round(resampler.delay_ms * dst_rate / 1000)
    wanted = round(len(pcm16) // 2 * dst_rate / src_rate)
    return out[2 * skip : 2 * (skip + wanted)].ljust(2 * wanted, b"\0")


def _to_int16(raw: bytes, width: int) -> np.ndarray:
    if width == 1:  # 8-bit WAV samples are unsigned
        return (np.frombuffer(raw, dtype=np.uint8).astype(np.int16) - 128) << 8
    if width == 2:
        return np.frombuffer(raw, dtype="<i2")
    if width == 3:  # keep the two most significant bytes of each little-endian 24-bit sample
        return np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)[:, 1:].copy().view("<i2").ravel()
    if width == 4:
        return (np.frombuffer(raw, dtype="<i4") >> 16).astype(np.int16)
    raise wave.Error(f"unsupported sample width: {width} bytes")
