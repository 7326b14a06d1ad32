"""Speech-like audio made by code: no downloads, deterministic, any sample rate.

The emulators speak with it and the simulated callers talk with it. It is not intelligible speech, but it
has what the bridge and the model's voice activity detection react to: a voiced pitch contour with
harmonics, vowel formants, syllable envelopes around 4-5 Hz, unvoiced noise bursts and pauses between
words. The same text always gives the same samples, so recorded calls replay bit for bit.

`speak()` says words a person can understand where the machine can synthesise them (espeak-ng, when it is
installed) and falls back to that babble otherwise; `phonebridge demo`'s caller talks with it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import zlib

import numpy as np

# (F1, F2, F3) in Hz of a few vowels; syllables cycle through them by the text's letters.
_VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (530, 1840, 2480), (300, 870, 2240), (640, 1190, 2390))
_SYLLABLE_S = 0.19
_WORD_GAP_S = 0.07


def synth_speech(
    text: str,
    rate: int = 24000,
    *,
    pitch_hz: float = 140.0,
    level_dbfs: float = -18.0,
    seconds: float | None = None,
) -> bytes:
    """Return 16-bit little-endian mono PCM of speech-like audio for `text` at `rate` Hz.

    Its length follows the text (about five syllables a second) unless `seconds` is given.
    """
    rng = np.random.default_rng(zlib.crc32(f"{text}|{pitch_hz}".encode()))
    words = text.split() or ["hm"]
    pieces: list[np.ndarray] = []
    for index, word in enumerate(words):
        syllables = max(1, round(len(word) / 3))
        for s in range(syllables):
            vowel = _VOWELS[(ord(word[min(s * 3, len(word) - 1)]) + index) % len(_VOWELS)]
            pieces.append(_syllable(rate, pitch_hz * rng.uniform(0.9, 1.12), vowel, rng))
        pieces.append(np.zeros(int(_WORD_GAP_S * rate)))
    signal = np.concatenate(pieces)
    if seconds is not None:
        wanted = int(seconds * rate)
        reps = -(-wanted // len(signal))
        signal = np.tile(signal, reps)[:wanted]
    peak = float(np.sqrt(np.mean(signal**2))) or 1.0
    signal *= 10 ** (level_dbfs / 20) * 32767 / peak
    pcm: bytes = np.clip(signal, -32768, 32767).astype("<i2").tobytes()
    return pcm


def _syllable(rate: int, f0: float, formants: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    n = int(_SYLLABLE_S * rate * rng.uniform(0.8, 1.25))
    t = np.arange(n) / rate
    contour = f0 * (1 + 0.08 * np.sin(2 * np.pi * 1.7 * t + rng.uniform(0, 6.28)) - 0.1 * t / _SYLLABLE_S)
    phase = 2 * np.pi * np.cumsum(contour) / rate
    top = min(rate * 0.45, 7000.0)
    voiced = np.zeros(n)
    for k in range(1, int(top / (f0 * 1.2)) + 1):
        freq = k * f0
        gain = sum(1.0 / (1.0 + ((freq - f) / (60 + f * 0.06)) ** 2) for f in formants) / k**0.5
        voiced += gain * np.sin(k * phase)
    envelope = np.sin(np.pi * np.arange(n) / n) ** 1.5
    onset = min(n, int(0.03 * rate))
    noise = np.zeros(n)
    noise[:onset] = rng.standard_normal(onset) * np.linspace(0.4, 0.0, onset)
    return voiced * envelope + noise


def silence(seconds: float, rate: int = 8000) -> bytes:
    """Digital silence as 16-bit PCM."""
    return bytes(2 * int(seconds * rate))


def rms_dbfs(pcm16: bytes) -> float:
    """Loudness of 16-bit PCM in dB relative to full scale (-inf for silence)."""
    samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float64)
    if samples.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(samples**2)))
    return 20 * np.log10(rms / 32768) if rms > 0 else float("-inf")


# -- words a listener can understand, where the machine can synthesise them -------------------------------

ESPEAK = "espeak-ng"
BABBLE = "babble"
_PAUSE_CAP_S = 0.15  # the emulators end a caller's turn after 300 ms of quiet; espeak pauses ~340 ms at a "."


def speech_engine() -> str:
    """`espeak-ng` when it is on PATH (intelligible words), else `babble` (this module's formant babble)."""
    return ESPEAK if shutil.which(ESPEAK) else BABBLE


def speak(text: str, rate: int = 8000, *, engine: str | None = None, level_dbfs: float = -18.0) -> bytes:
    """16-bit mono PCM of `text` at `rate` Hz, in words through espeak-ng where it is installed.

    Pauses inside the text are shortened so one `say` is one caller turn to a voice activity detector.
    If espeak-ng is asked for but fails, the babble stands in (a demo must not die for its voice).
    """
    engine = engine or speech_engine()
    if engine == ESPEAK:
        pcm = _espeak(text, rate)
        if pcm:
            return _cap_pauses(_normalise(pcm, level_dbfs), rate)
    return synth_speech(text, rate, level_dbfs=level_dbfs)


def _espeak(text: str, rate: int) -> bytes:
    from phonebridge.testing.wav import (
        read_wav,  # wav imports phonebridge.audio; keep this module light
    )

    with tempfile.TemporaryDirectory(prefix="phonebridge-speech-") as tmp:
        path = os.path.join(tmp, "say.wav")
        try:
            # A file, not --stdout: a piped WAV header carries no length.
            subprocess.run([ESPEAK, "-v", "en-us", "-s", "165", "-w", path, "--", text], check=True,
                           capture_output=True, timeout=20, stdin=subprocess.DEVNULL)
            return read_wav(path, rate)
        except (OSError, subprocess.SubprocessError, EOFError, ValueError) as exc:
            logging.getLogger(__name__).warning("espeak-ng failed (%s); using the built-in babble", exc)
            return b""


def _normalise(pcm16: bytes, level_dbfs: float) -> bytes:
    signal = np.frombuffer(pcm16, dtype="<i2").astype(np.float64)
    rms = float(np.sqrt(np.mean(signal**2))) or 1.0
    signal *= 10 ** (level_dbfs / 20) * 32767 / rms
    return np.clip(signal, -32768, 32767).astype("<i2").tobytes()


def _cap_pauses(pcm16: bytes, rate: int) -> bytes:
    """Trim leading and trailing quiet, and shorten quiet runs longer than _PAUSE_CAP_S (10 ms windows)."""
    samples = np.frombuffer(pcm16, dtype="<i2")
    win = max(1, rate // 100)
    frames = samples[: len(samples) // win * win].reshape(-1, win).astype(np.float64)
    if not len(frames):
        return pcm16
    quiet = np.sqrt(np.mean(frames**2, axis=1)) < 32768 * 10 ** (-45 / 20)
    keep, run, cap = [], 0, int(_PAUSE_CAP_S * 100)
    for index, is_quiet in enumerate(quiet):
        run = run + 1 if is_quiet else 0
        if run <= cap:
            keep.append(index)
    loud = np.flatnonzero(~quiet)
    if not len(loud):
        return pcm16
    kept = [i for i in keep if loud[0] <= i <= loud[-1]]
    return frames[kept].astype("<i2").tobytes()
