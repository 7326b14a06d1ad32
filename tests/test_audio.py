"""The audio core: codec exactness, the resampler's quality bars, streaming behaviour, the transcoders.

Quality is measured on the output spectrum: one second of steady-state output, Kaiser-windowed (beta 14,
sidelobes near -100 dB), with every test tone on an exact 1 Hz bin so amplitudes read without scalloping.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from phonebridge.audio import InboundTranscoder, OutboundTranscoder, Resampler, ulaw_decode, ulaw_encode
from phonebridge.audio import _LOW_WORD, _ROUND, _polyphase
from phonebridge.testing.speech import rms_dbfs, synth_speech

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

ALL_PCM = np.arange(-32768, 32768, dtype="<i2").tobytes()
ALL_CODES = bytes(range(256))
RATIOS = [(8000, 16000), (24000, 8000), (16000, 8000), (24000, 16000), (44100, 8000), (8000, 8000)]
TONE_AMPLITUDE = 16384.0  # -6 dBFS
SKIP_S = 0.05  # start-up: longer than any filter here


# --- helpers -------------------------------------------------------------------------------------------------


def pcm(samples: np.ndarray) -> bytes:
    return np.asarray(samples).astype("<i2").tobytes()


def samples_of(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float64)


def tone(freq: float, rate: int, seconds: float = 1.0 + 2 * SKIP_S) -> bytes:
    n = np.arange(int(rate * seconds))
    return pcm(np.round(TONE_AMPLITUDE * np.sin(2 * np.pi * freq * n / rate)))


def spectrum(output: np.ndarray, rate: int) -> np.ndarray:
    """Sinusoid amplitude per 1 Hz bin of one second of steady-state output."""
    start = int(SKIP_S * rate)
    segment = output[start : start + rate]
    assert len(segment) == rate
    window = np.kaiser(rate, 14.0)
    return 2 * np.abs(np.fft.rfft(segment * window)) / window.sum()


def db(amplitude: float) -> float:
    return 20 * np.log10(max(amplitude, 1e-12) / TONE_AMPLITUDE)


def resample_all(src: int, dst: int, data: bytes) -> bytes:
    resampler = Resampler(src, dst)
    return resampler.process(data) + resampler.flush()


def resample_framed(src: int, dst: int, data: bytes) -> np.ndarray:
    """The streaming API as the bridge drives it: 20 ms frames, then flush()."""
    resampler = Resampler(src, dst)
    frame = 2 * src // 50
    pieces = [resampler.process(data[i : i + frame]) for i in range(0, len(data), frame)]
    return samples_of(b"".join(pieces) + resampler.flush())


def reference_resample(src: int, dst: int, data: bytes) -> bytes:
    """The textbook computation of the same filter, written plainly: every block's window of the zero-padded
    input times the polyphase matrix, then numpy's rounding and clipping. What the fast path must equal."""
    f = _polyphase(src, dst)
    x = np.concatenate([np.zeros(f.taps - 1), samples_of(data), np.zeros(f.delay // f.up + 2 * f.window)])
    wanted = -(-(len(data) // 2 * f.up + f.delay) // f.down)  # ceil: the outputs process() + flush() return
    blocks = -(-wanted // f.up)
    windows = np.stack([x[q * f.down : q * f.down + f.window] for q in range(blocks)])
    out = (windows @ f.matrix).reshape(-1)[:wanted]
    return np.clip(np.rint(out), -32768, 32767).astype("<i2").tobytes()


# --- G.711 mu-law --------------------------------------------------------------------------------------------


def g711_encode_reference(x: np.ndarray) -> np.ndarray:
    """The G.711 algorithm as in Sun's g711.c (14-bit form, as audioop does it), written independently."""
    v = x.astype(np.int32) >> 2
    mask = np.where(v < 0, 0x7F, 0xFF)
    v = np.minimum(np.abs(v), 8159) + 0x21
    seg = np.searchsorted(np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]), v)
    code = np.where(seg >= 8, 0x7F, (np.minimum(seg, 7) << 4) | ((v >> (np.minimum(seg, 7) + 1)) & 0xF))
    return (code ^ mask).astype(np.uint8)


def g711_decode_reference(codes: np.ndarray) -> np.ndarray:
    u = ~codes.astype(np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype("<i2")


def test_ulaw_encode_is_bit_exact_on_all_65536_inputs() -> None:
    encoded = ulaw_encode(ALL_PCM)
    assert encoded == audioop.lin2ulaw(ALL_PCM, 2)
    assert encoded == g711_encode_reference(np.frombuffer(ALL_PCM, dtype="<i2")).tobytes()


def test_ulaw_decode_is_bit_exact_on_all_256_codes() -> None:
    decoded = ulaw_decode(ALL_CODES)
    assert decoded == audioop.ulaw2lin(ALL_CODES, 2)
    assert decoded == g711_decode_reference(np.frombuffer(ALL_CODES, dtype=np.uint8)).tobytes()


def test_ulaw_literal_values() -> None:
    assert ulaw_encode(pcm(np.array([0, 32767, -32768, 8, -8]))) == bytes([0xFF, 0x80, 0x00, 0xFE, 0x7E])
    assert samples_of(ulaw_decode(bytes([0xFF, 0x7F, 0x80, 0x00]))).tolist() == [0, 0, 32124, -32124]
    assert ulaw_decode(ulaw_encode(ALL_PCM[:0])) == b""


def test_ulaw_encode_refuses_half_a_sample() -> None:
    with pytest.raises(ValueError, match="even number of bytes"):
        ulaw_encode(b"\x00\x01\x02")


# --- the quality bars ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("src", "dst"), [(8000, 16000), (24000, 8000), (16000, 8000), (24000, 16000)])
def test_passband_ripple_is_within_a_tenth_of_a_db_from_300_to_3400_hz(src: int, dst: int) -> None:
    gains = []
    for freq in range(300, 3401, 100):
        amplitudes = spectrum(samples_of(resample_all(src, dst, tone(freq, src))), dst)
        gains.append(db(amplitudes[freq]))
    assert max(gains) - min(gains) <= 0.1
    assert max(abs(g) for g in gains) <= 0.1  # flat around unity, not just flat


@pytest.mark.parametrize("freq", [4600, 5000, 6000, 7900, 8000, 9700, 11999])
def test_24k_to_8k_rejects_aliases_by_80_db(freq: int) -> None:
    amplitudes = spectrum(samples_of(resample_all(24000, 8000, tone(freq, 24000))), 8000)
    assert db(float(amplitudes.max())) <= -80.0


def test_a_5khz_tone_leaves_no_3khz_alias() -> None:
    amplitudes = spectrum(samples_of(resample_all(24000, 8000, tone(5000, 24000))), 8000)
    assert db(float(amplitudes[3000])) <= -80.0


@pytest.mark.parametrize("freq", [300, 1000, 2500, 3400])
def test_8k_to_16k_leaves_no_image_above_4khz(freq: int) -> None:
    amplitudes = spectrum(samples_of(resample_all(8000, 16000, tone(freq, 8000))), 16000)
    assert db(float(amplitudes[freq])) == pytest.approx(0.0, abs=0.05)
    assert db(float(amplitudes[4000:].max())) <= -80.0


@pytest.mark.parametrize(("src", "dst"), RATIOS)
def test_fixed_delay_is_at_most_3ms(src: int, dst: int) -> None:
    assert 0.0 <= Resampler(src, dst).delay_ms <= 3.0


@pytest.mark.parametrize(("src", "dst"), [(8000, 16000), (24000, 8000), (16000, 8000)])
def test_measured_delay_equals_delay_ms(src: int, dst: int) -> None:
    # An impulse comes out as the filter's symmetric response: its centre of mass is the delay.
    impulse_at = 30
    signal = np.zeros(src // 10)
    signal[impulse_at] = 20000
    out = samples_of(Resampler(src, dst).process(pcm(signal)))
    centre_s = float((np.arange(len(out)) * out).sum() / out.sum()) / dst
    measured_ms = 1000 * (centre_s - impulse_at / src)
    assert measured_ms == pytest.approx(Resampler(src, dst).delay_ms, abs=0.01)
    assert measured_ms <= 3.0


# --- the quality bars, through the streaming API in 20 ms frames (issue 17) ----------------------------------
# The bars above hold for one-shot calls; these feed steady tones frame by frame as the bridge does, and measure
# what comes out: flatness at several frequencies, rejection, and the delay read from the tones' phase.

STREAMED = [(8000, 16000), (24000, 8000)]


@pytest.mark.parametrize(("src", "dst"), STREAMED)
def test_streamed_tones_are_flat_within_a_tenth_of_a_db_from_300_to_3400_hz(src: int, dst: int) -> None:
    gains = {f: db(float(spectrum(resample_framed(src, dst, tone(f, src)), dst)[f])) for f in (300, 500, 1000,
             1700, 2300, 2900, 3100, 3300, 3400)}
    assert max(gains.values()) - min(gains.values()) <= 0.1, gains
    assert max(abs(g) for g in gains.values()) <= 0.1, gains


@pytest.mark.parametrize("freq", [4600, 5300, 7000, 8000, 10100, 11900])
def test_streamed_24k_to_8k_aliases_are_80_db_down(freq: int) -> None:
    amplitudes = spectrum(resample_framed(24000, 8000, tone(freq, 24000)), 8000)
    assert db(float(amplitudes.max())) <= -80.0


@pytest.mark.parametrize("freq", [300, 1900, 3400])
def test_streamed_8k_to_16k_images_are_80_db_down(freq: int) -> None:
    amplitudes = spectrum(resample_framed(8000, 16000, tone(freq, 8000)), 16000)
    assert db(float(amplitudes[4000:].max())) <= -80.0


@pytest.mark.parametrize(("src", "dst"), STREAMED)
def test_streamed_tones_lag_by_the_same_delay_at_most_3ms(src: int, dst: int) -> None:
    # Linear phase: every tone comes out delayed by the same time, read from its phase against the input's.
    # A 300 Hz period (3.3 ms) is longer than any delay we allow, so its phase gives the delay itself; higher
    # tones' phases repeat every period, so each takes the lag nearest to that first estimate.
    window, start = np.kaiser(dst, 14.0), int(SKIP_S * dst)
    t = (start + np.arange(dst)) / dst
    delays = []
    for freq in (300, 700, 1500, 2500, 3400):
        out = np.fft.rfft(resample_framed(src, dst, tone(freq, src))[start : start + dst] * window)[freq]
        ideal = np.fft.rfft(np.sin(2 * np.pi * freq * t) * window)[freq]
        lag_ms = 1000 * ((np.angle(ideal) - np.angle(out)) % (2 * np.pi)) / (2 * np.pi * freq)
        period_ms = 1000 / freq
        delays.append(lag_ms + period_ms * round(((delays or [lag_ms])[0] - lag_ms) / period_ms))
    assert max(delays) - min(delays) <= 0.01, delays
    assert delays[0] == pytest.approx(Resampler(src, dst).delay_ms, abs=0.01)
    assert max(delays) <= 3.0


# --- the fast path (issue 17): the same bytes as the plain computation -----------------------------------------


@pytest.mark.parametrize(("src", "dst"), RATIOS)
def test_streaming_equals_the_plain_numpy_computation_including_clipping(src: int, dst: int) -> None:
    rng = np.random.default_rng(src + dst)
    speech = samples_of(synth_speech("loud enough to clip", src, seconds=0.6))
    loud = np.clip(speech * 12 + rng.normal(0, 40, len(speech)), -32768, 32767)  # overshoots past full scale
    data = pcm(np.round(loud))
    expected = reference_resample(src, dst, data)
    assert resample_all(src, dst, data) == expected
    assert pcm(resample_framed(src, dst, data)) == expected
    resampler = Resampler(src, dst)
    cuts = np.sort(rng.integers(0, len(data), size=30))
    pieces = [resampler.process(data[a:b]) for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    assert b"".join(pieces) + resampler.flush() == expected


def test_the_rounding_constant_rounds_like_rint_and_leaves_the_integer_in_the_low_word() -> None:
    # Ties (x.5) go to even, as numpy.rint does; negatives come out in two's complement.
    values = np.array([0.0, -0.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999999, -32768.4, 32767.5, 40000.7,
                       -70000.2, 1234.5 + 2.0**-30, -1234.5 - 2.0**-30])
    rounded = values + _ROUND
    low_words = rounded.view(np.int32)[_LOW_WORD::2]
    assert low_words.tolist() == np.rint(values).astype(np.int64).tolist()


def test_the_transcoders_equal_their_parts() -> None:
    # The transcoders skip the PCM16 step (lin2ulaw reads the wide samples): the bytes must not change.
    speech = samples_of(synth_speech("the model answers loudly", 24000, seconds=0.5))
    loud = pcm(np.clip(np.round(speech * 10), -32768, 32767))
    outbound, resampler = OutboundTranscoder(), Resampler(24000, 8000)
    for i in range(0, len(loud), 960):
        assert outbound.process(loud[i : i + 960]) == ulaw_encode(resampler.process(loud[i : i + 960]))
    assert outbound.flush() == ulaw_encode(resampler.flush())
    ulaw = ulaw_encode(pcm(np.clip(np.round(speech[::3] * 10), -32768, 32767)))
    inbound, resampler = InboundTranscoder(), Resampler(8000, 16000)
    for i in range(0, len(ulaw), 160):
        assert inbound.process(ulaw[i : i + 160]) == resampler.process(ulaw_decode(ulaw[i : i + 160]))


def test_a_calls_transcoders_hold_little_memory() -> None:
    # Every call has a pair; before issue 17 their numpy buffers took 630 KiB (277 KiB resident) a call.
    pair = (InboundTranscoder(), OutboundTranscoder())
    held = sum(
        value.nbytes
        for transcoder in pair
        for value in vars(transcoder._resampler).values()
        if isinstance(value, np.ndarray) and value.base is None
    )
    assert held <= 128 * 1024


# --- streaming -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("src", "dst", "frame", "expected"), [(8000, 16000, 160, 320), (24000, 8000, 480, 160)])
def test_every_frame_returns_all_its_output_from_the_first(src: int, dst: int, frame: int, expected: int) -> None:
    resampler = Resampler(src, dst)
    speech = synth_speech("hold the line please", src, seconds=1.0)
    lengths = {len(resampler.process(speech[i : i + 2 * frame])) // 2 for i in range(0, len(speech), 2 * frame)}
    assert lengths == {expected}


@pytest.mark.parametrize(("src", "dst"), RATIOS)
def test_output_count_follows_input_exactly_whatever_the_chunks(src: int, dst: int) -> None:
    rng = np.random.default_rng(7)
    resampler = Resampler(src, dst)
    fed = made = 0
    for size in rng.integers(0, 700, size=60):
        fed += int(size)
        made += len(resampler.process(bytes(2 * int(size)))) // 2
        assert made == -(-fed * dst // src)  # ceil: an output leaves as soon as its newest input arrived


@pytest.mark.parametrize(("src", "dst"), RATIOS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_chunking_equals_one_shot(src: int, dst: int, seed: int) -> None:
    speech = synth_speech("streaming equals one shot", src, seconds=2.5)
    one_shot = resample_all(src, dst, speech)
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.integers(0, len(speech), size=40))  # odd byte offsets and empty chunks included
    resampler = Resampler(src, dst)
    pieces = [resampler.process(speech[a:b]) for a, b in zip([0, *cuts], [*cuts, len(speech)], strict=True)]
    assert b"".join(pieces) + resampler.flush() == one_shot


def test_one_byte_at_a_time_equals_one_shot() -> None:
    speech = synth_speech("byte", 24000, seconds=0.05)
    resampler = Resampler(24000, 8000)
    streamed = b"".join(resampler.process(speech[i : i + 1]) for i in range(len(speech)))
    assert streamed + resampler.flush() == resample_all(24000, 8000, speech)


def test_a_large_input_in_one_call_equals_frames() -> None:
    speech = synth_speech("a whole wav file at once", 44100, seconds=1.0)
    resampler = Resampler(44100, 8000)
    framed = b"".join(resampler.process(speech[i : i + 1764]) for i in range(0, len(speech), 1764))
    assert resample_all(44100, 8000, speech) == framed + resampler.flush()


@pytest.mark.parametrize(("src", "dst"), RATIOS)
def test_flush_returns_the_delayed_tail_and_equals_trailing_silence(src: int, dst: int) -> None:
    speech = synth_speech("the end", src, seconds=0.3)
    resampler = Resampler(src, dst)
    body = resampler.process(speech)
    tail = resampler.flush()
    n = len(speech) // 2
    delay_out = resampler.delay_ms * dst / 1000  # the delay in output samples
    assert (len(body) + len(tail)) // 2 == -(-(n * dst + round(delay_out * src)) // src)
    padded = Resampler(src, dst).process(speech + bytes(2 * src // 100))
    assert body + tail == padded[: len(body) + len(tail)]


def test_flush_resets_and_a_lone_half_sample_is_dropped() -> None:
    resampler = Resampler(8000, 16000)
    resampler.process(synth_speech("before", 8000, seconds=0.1) + b"\x7f")
    resampler.flush()
    after = synth_speech("after", 8000, seconds=0.1)
    assert resampler.process(after) == Resampler(8000, 16000).process(after)


def test_reset_forgets_everything() -> None:
    resampler = Resampler(24000, 8000)
    resampler.process(synth_speech("cut turn", 24000, seconds=0.2) + b"\x01")
    resampler.reset()
    fresh = synth_speech("next turn", 24000, seconds=0.2)
    assert resampler.process(fresh) == Resampler(24000, 8000).process(fresh)


# --- sample values: unity gain, rounding, clipping -----------------------------------------------------------


@pytest.mark.parametrize(("src", "dst"), RATIOS)
@pytest.mark.parametrize("level", [1234, -1, 32767, -32768])
def test_a_constant_comes_out_exactly(src: int, dst: int, level: int) -> None:
    out = samples_of(Resampler(src, dst).process(pcm(np.full(src // 50, level))))
    settled = out[int(0.006 * dst) :]  # after the filter has filled
    assert settled.min() == settled.max() == level


def test_rounding_is_symmetric_about_zero() -> None:
    # Rounding to nearest maps -x to exactly -y; flooring would not.
    speech = samples_of(synth_speech("round", 24000, seconds=0.2))
    speech = np.clip(speech, -32767, 32767)
    plus = samples_of(Resampler(24000, 8000).process(pcm(speech)))
    minus = samples_of(Resampler(24000, 8000).process(pcm(-speech)))
    assert np.array_equal(minus, -plus)
    assert np.count_nonzero(plus) > len(plus) // 2


def test_full_scale_square_wave_clips_instead_of_wrapping() -> None:
    n = np.arange(4800)
    square = np.where((n // 20) % 2 == 0, 32767, -32768)  # 600 Hz: its harmonics overshoot full scale
    out = samples_of(Resampler(24000, 8000).process(pcm(square)))
    assert out.max() == 32767 and out.min() == -32768
    # Wrapping would turn an overshoot into a sign flip in the middle of a plateau.
    delay = round(Resampler(24000, 8000).delay_ms * 24)
    for j in range(40, len(out) - 10):
        centre = 3 * j - delay
        if centre % 20 == 10:  # mid-plateau
            assert np.sign(out[j]) == np.sign(square[centre])


# --- the bridge's transcoders --------------------------------------------------------------------------------


def test_inbound_transcoder_makes_16k_pcm_in_step() -> None:
    ulaw = ulaw_encode(synth_speech("caller speaking", 8000, seconds=0.4))
    transcoder = InboundTranscoder()
    frames = [transcoder.process(ulaw[i : i + 160]) for i in range(0, len(ulaw), 160)]
    assert {len(f) for f in frames} == {640}
    assert b"".join(frames) == Resampler(8000, 16000).process(ulaw_decode(ulaw))


def test_outbound_transcoder_any_chunking_and_loudness() -> None:
    speech = synth_speech("the model answers", 24000, level_dbfs=-18.0, seconds=0.5)
    one_shot = OutboundTranscoder()
    whole = one_shot.process(speech) + one_shot.flush()
    assert len(whole) == -(-(len(speech) // 2 + 40) // 3)  # one byte per 8 kHz sample, plus the tail
    transcoder = OutboundTranscoder()
    pieces = [transcoder.process(speech[i : i + 777]) for i in range(0, len(speech), 777)]  # odd sizes
    assert b"".join(pieces) + transcoder.flush() == whole
    assert rms_dbfs(ulaw_decode(whole)) == pytest.approx(-18.0, abs=0.5)


def test_outbound_reset_after_barge_in_leaks_nothing_of_the_cut_turn() -> None:
    transcoder = OutboundTranscoder()
    transcoder.process(synth_speech("a long answer the caller interrupts", 24000, seconds=0.3) + b"\x55")
    transcoder.reset()
    next_turn = synth_speech("sure, go ahead", 24000, seconds=0.3)
    fresh = OutboundTranscoder()
    assert transcoder.process(next_turn) + transcoder.flush() == fresh.process(next_turn) + fresh.flush()


@pytest.mark.parametrize(("src", "dst"), [(0, 8000), (8000, -16000)])
def test_rates_must_be_positive(src: int, dst: int) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        Resampler(src, dst)
