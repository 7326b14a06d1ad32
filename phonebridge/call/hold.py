"""The hold sound: what a caller hears while a business handler runs long, instead of dead air.

Made by code, no files: a soft two-note chime ("ding-dong", E5 then C5) every two seconds over very low
comfort noise, about -30 dBFS overall. Every note rises and falls through smooth envelopes and the loop
starts and ends in the noise alone, so neither a note nor the loop's seam ever clicks. The noise is shaped
in the frequency domain over exactly one loop, so it is periodic too and the seam is inaudible.
"""

from __future__ import annotations

import numpy as np

from phonebridge.audio import ulaw_encode

__all__ = ["HoldSound"]

_LOOP_S = 2.0
_FRAME_S = 0.02
_LEVEL_DBFS = -30.0  # the whole loop's loudness
_NOISE_DBFS = -55.0  # comfort noise: the line sounds alive, not hissy
# (start s, frequency Hz, length s): the second note enters while the first still rings, like a door chime.
_NOTES = ((0.06, 659.26, 1.2), (0.5, 523.25, 1.35))
_ATTACK_S = 0.012
_DECAY_S = 0.35  # time constant of the exponential ring-out
_RELEASE_S = 0.25  # raised-cosine fade at the end of each note, so it reaches exactly zero
_SEED = 20240611  # any fixed value: the same hold sound on every call and every run


class HoldSound:
    """An endless, seamless hold sound in 20 ms frames of mu-law at `rate` Hz (160 bytes at 8 kHz)."""

    def __init__(self, rate: int = 8000) -> None:
        if rate <= 0 or rate % round(1 / _FRAME_S):
            raise ValueError(f"the rate must give whole 20 ms frames, got {rate} Hz")
        self.rate = rate
        self.frame_bytes = int(rate * _FRAME_S)  # mu-law: one byte per sample
        # One loop, precomputed, so that next_frame() is a slice.
        self._loop = ulaw_encode(_render(rate).astype("<i2").tobytes())
        self._position = 0

    def next_frame(self) -> bytes:
        """The next 20 ms of the hold sound, continuing exactly where the previous frame ended."""
        frame = self._loop[self._position : self._position + self.frame_bytes]
        self._position = (self._position + self.frame_bytes) % len(self._loop)
        return frame

    def reset(self) -> None:
        """Start again from the loop's beginning (the noise just before the first chime)."""
        self._position = 0


def _render(rate: int) -> np.ndarray:
    """One loop of the hold sound as float samples in int16 scale."""
    length = int(_LOOP_S * rate)
    chime = np.zeros(length)
    for start_s, freq, seconds in _NOTES:
        start = int(start_s * rate)
        chime[start : start + int(seconds * rate)] += _note(rate, freq, seconds)
    noise = _comfort_noise(rate, length) * 10 ** (_NOISE_DBFS / 20) * 32768
    chime_rms_wanted = np.sqrt(max(10 ** (_LEVEL_DBFS / 10) - 10 ** (_NOISE_DBFS / 10), 0.0)) * 32768
    chime *= chime_rms_wanted / np.sqrt(np.mean(chime**2))
    return np.round(chime + noise)


def _note(rate: int, freq: float, seconds: float) -> np.ndarray:
    """A soft bell-like tone (a quiet octave above the fundamental) under a click-free envelope."""
    t = np.arange(int(seconds * rate)) / rate
    tone = np.sin(2 * np.pi * freq * t) + 0.15 * np.sin(4 * np.pi * freq * t)
    envelope = np.exp(-t / _DECAY_S)
    attack = t < _ATTACK_S
    envelope[attack] *= 0.5 - 0.5 * np.cos(np.pi * t[attack] / _ATTACK_S)
    release = t > seconds - _RELEASE_S
    envelope[release] *= 0.5 + 0.5 * np.cos(np.pi * (t[release] - (seconds - _RELEASE_S)) / _RELEASE_S)
    return tone * envelope


def _comfort_noise(rate: int, length: int) -> np.ndarray:
    """Unit-RMS noise, darker than white (it rolls off above 1 kHz), periodic over `length` samples."""
    rng = np.random.default_rng(_SEED)
    freqs = np.fft.rfftfreq(length, 1 / rate)
    shape = 1 / np.sqrt(1 + (freqs / 1000.0) ** 4)
    shape[0] = 0.0  # no DC offset
    spectrum = shape * (rng.standard_normal(len(freqs)) + 1j * rng.standard_normal(len(freqs)))
    noise = np.fft.irfft(spectrum, length)
    unit: np.ndarray = noise / np.sqrt(np.mean(noise**2))
    return unit
