"""The hold sound: frame sizes, a seamless loop, gentle loudness, no clicks, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from phonebridge.audio import ulaw_decode
from phonebridge.call.hold import HoldSound
from phonebridge.testing.speech import rms_dbfs

LOOP_FRAMES = 100  # two seconds of 20 ms frames


def frames(hold: HoldSound, count: int) -> list[bytes]:
    return [hold.next_frame() for _ in range(count)]


def decoded(chunks: list[bytes]) -> np.ndarray:
    return np.frombuffer(ulaw_decode(b"".join(chunks)), dtype="<i2").astype(np.float64)


@pytest.mark.parametrize(("rate", "size"), [(8000, 160), (16000, 320)])
def test_every_frame_is_20ms_of_mu_law(rate: int, size: int) -> None:
    assert {len(f) for f in frames(HoldSound(rate), 250)} == {size}


def test_a_bad_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="whole 20 ms frames"):
        HoldSound(8001)


def test_the_loop_repeats_every_two_seconds_and_varies_within() -> None:
    played = frames(HoldSound(), 3 * LOOP_FRAMES)
    assert played[:LOOP_FRAMES] == played[LOOP_FRAMES : 2 * LOOP_FRAMES] == played[2 * LOOP_FRAMES :]
    assert len(set(played[:LOOP_FRAMES])) == LOOP_FRAMES


def test_loudness_is_gentle_and_never_dead_air() -> None:
    loop = frames(HoldSound(), LOOP_FRAMES)
    assert rms_dbfs(ulaw_decode(b"".join(loop))) == pytest.approx(-30.0, abs=1.5)
    levels = [rms_dbfs(ulaw_decode(f)) for f in loop]
    assert max(levels) <= -18.0  # a soft chime, never loud
    assert -62.0 <= min(levels) <= -48.0  # the quietest moment is comfort noise, not silence
    peak = np.abs(decoded(loop)).max()
    assert 20 * np.log10(peak / 32768) <= -12.0


def test_two_chime_notes_per_loop() -> None:
    levels = np.array([rms_dbfs(ulaw_decode(f)) for f in frames(HoldSound(), LOOP_FRAMES)])
    onsets = np.flatnonzero(np.diff(levels) > 6.0)  # a note entering lifts its frame's level at once
    assert len(onsets) == 2


def test_no_jump_at_frame_or_loop_boundaries() -> None:
    signal = decoded(frames(HoldSound(), 2 * LOOP_FRAMES))
    steps = np.abs(np.diff(signal))
    boundary = np.arange(159, len(steps), 160)  # step from a frame's last sample to the next frame's first
    interior = np.ones(len(steps), dtype=bool)
    interior[boundary] = False
    assert steps[boundary].max() <= steps[interior].max()
    # The loop seam sits in the comfort noise: no bigger than the noise's own steps around it.
    seam = LOOP_FRAMES * 160 - 1
    assert steps[seam] <= steps[seam - 160 : seam].max()
    assert steps[seam] <= 100.0


def test_notes_start_and_end_without_clicks() -> None:
    # The chime's notes have nothing above 3 kHz; a click would splash energy there.
    signal = decoded(frames(HoldSound(), LOOP_FRAMES))
    spectrum = np.fft.rfft(signal)
    spectrum[np.fft.rfftfreq(len(signal), 1 / 8000) < 3000] = 0
    high = np.fft.irfft(spectrum, len(signal)).reshape(LOOP_FRAMES, 160)
    worst = 20 * np.log10(np.sqrt(np.mean(high**2, axis=1)).max() / 32768)
    assert worst <= -62.0


def test_deterministic_and_reset_starts_over() -> None:
    first = HoldSound()
    played = frames(first, 37)
    assert frames(HoldSound(), 37) == played
    first.reset()
    assert frames(first, 37) == played
