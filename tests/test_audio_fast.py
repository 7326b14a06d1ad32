"""The resampler's clip: numpy's clip ufunc where numpy keeps it, np.maximum/np.minimum where it does not.
Both must give the same samples, and both must saturate exactly like clipping the rounded outputs."""

from __future__ import annotations

import numpy as np
import pytest

import phonebridge.audio as audio
from phonebridge.audio import Resampler

RATES = [(8000, 16000), (24000, 8000), (16000, 8000), (8000, 24000)]


def _loud(rate: int, seconds: float = 0.5) -> bytes:
    """Full-scale square-ish noise: the filter's overshoot drives outputs past int16 both ways."""
    rng = np.random.default_rng(rate)
    x = np.where(rng.random(int(rate * seconds)) < 0.5, -32768, 32767).astype("<i2")
    return x.tobytes()


def _streamed(src: int, dst: int, pcm: bytes) -> bytes:
    resampler, frame = Resampler(src, dst), 2 * src // 50
    return b"".join(resampler.process(pcm[i : i + frame]) for i in range(0, len(pcm), frame)) + resampler.flush()


@pytest.mark.parametrize(("src", "dst"), RATES)
def test_the_fallback_clip_gives_the_ufuncs_samples(src: int, dst: int, monkeypatch: pytest.MonkeyPatch) -> None:
    pcm = _loud(src)
    with_ufunc = _streamed(src, dst, pcm)
    monkeypatch.setattr(audio, "_clip", None)
    assert _streamed(src, dst, pcm) == with_ufunc


@pytest.mark.parametrize(("src", "dst"), RATES)
def test_loud_input_saturates_instead_of_wrapping(src: int, dst: int) -> None:
    out = np.frombuffer(_streamed(src, dst, _loud(src)), dtype="<i2")
    # Wrapped samples would flip sign at the crest; saturated ones sit at the rails.
    assert out.max() == 32767 and out.min() == -32768
    wide = Resampler(src, dst)
    frame = 2 * src // 50
    pcm = _loud(src)
    words = b"".join(wide._wide(pcm[i : i + frame]) for i in range(0, len(pcm), frame)) + wide._flush(True)
    high = (np.frombuffer(words, dtype="<i4") >> 16).astype("<i2")
    assert high.tobytes() == out.tobytes()  # the outbound (wide) path saturates to the very same samples


def test_numpy_still_has_the_clip_ufunc_here() -> None:
    # Not a requirement of the code (it falls back), but if numpy moves it the fast path silently goes:
    # this says so, rather than the benchmark one day.
    assert audio._clip is not None
