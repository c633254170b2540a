"""StreamResampler: chunking does not change the output, tones pass clean, out-of-band content is removed."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from bridge.codec.resample import StreamResampler, _design

PAIRS = [(8000, 16000), (24000, 8000), (16000, 8000), (8000, 24000), (16000, 24000), (24000, 16000)]
AMPLITUDE = 16000.0
WARMUP_S = 0.03  # longer than any filter's span, so the measured stretch sees a steady state


def tone(rate: int, freq: float, seconds: float = 0.5, amplitude: float = AMPLITUDE) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.rint(amplitude * np.sin(2 * np.pi * freq * t + 0.3)).astype(np.int16)


def chunked(r: StreamResampler, x: np.ndarray, sizes: list[int]) -> np.ndarray:
    out, i, k = [], 0, 0
    while i < len(x):
        n = sizes[k % len(sizes)]
        out.append(r.process(x[i : i + n]))
        i, k = i + n, k + 1
    return np.concatenate(out)


def steady(y: np.ndarray, rate: int) -> np.ndarray:
    return y[int(WARMUP_S * rate) :].astype(np.float64)


def fit_tone(y: np.ndarray, rate: int, freq: float) -> tuple[float, float, np.ndarray]:
    """Least-squares fit of a sinusoid at freq (plus DC): (amplitude, phase of sin, residual)."""
    t = np.arange(len(y)) / rate
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t), np.ones_like(t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    return float(np.hypot(coef[0], coef[1])), float(np.arctan2(coef[1], coef[0])), y - basis @ coef


def rms(y: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))


def db(ratio: float) -> float:
    return 20 * np.log10(ratio)


@pytest.mark.parametrize("in_rate,out_rate", PAIRS)
class TestStreaming:
    """State carries across chunks: any chunking gives the one-shot output."""

    def test_20ms_chunks_equal_one_shot(self, in_rate: int, out_rate: int) -> None:
        x = (np.random.default_rng(7).standard_normal(in_rate) * 6000).astype(np.int16)
        whole = StreamResampler(in_rate, out_rate).process(x)
        parts = chunked(StreamResampler(in_rate, out_rate), x, [in_rate // 50])
        assert len(whole) == len(parts) == out_rate  # one second in, one second out
        assert np.abs(whole.astype(np.int32) - parts).max() <= 1

    def test_odd_chunk_sizes_equal_one_shot(self, in_rate: int, out_rate: int) -> None:
        x = (np.random.default_rng(8).standard_normal(in_rate // 2) * 6000).astype(np.int16)
        whole = StreamResampler(in_rate, out_rate).process(x)
        parts = chunked(StreamResampler(in_rate, out_rate), x, [1, 0, 7, 161, 2, 479, 13, 3, 0, 320])
        assert len(parts) == len(whole)
        assert np.abs(whole.astype(np.int32) - parts).max() <= 1

    def test_matches_scipy_upfirdn_with_the_same_filter(self, in_rate: int, out_rate: int) -> None:
        d = _design(in_rate, out_rate)
        h = d.phases[:, ::-1].T.ravel()  # the prototype low-pass, back in tap order
        x = (np.random.default_rng(9).standard_normal(in_rate // 4) * 6000).astype(np.int16)
        ours = chunked(StreamResampler(in_rate, out_rate), x, [in_rate // 50])
        ref = np.clip(np.rint(signal.upfirdn(h, x.astype(np.float64), d.up, d.down)), -32768, 32767)
        assert np.abs(ours - ref[: len(ours)]).max() <= 1

    def test_output_lengths_per_20ms(self, in_rate: int, out_rate: int) -> None:
        r = StreamResampler(in_rate, out_rate)
        frames = [len(r.process(np.zeros(in_rate // 50, dtype=np.int16))) for _ in range(5)]
        assert frames == [out_rate // 50] * 5

    def test_reset_forgets_history(self, in_rate: int, out_rate: int) -> None:
        x = tone(in_rate, 440.0, 0.1)
        r = StreamResampler(in_rate, out_rate)
        first = r.process(x)
        r.process(tone(in_rate, 1000.0, 0.05))
        r.reset()
        np.testing.assert_array_equal(r.process(x), first)

    def test_full_scale_clips_instead_of_wrapping(self, in_rate: int, out_rate: int) -> None:
        r = StreamResampler(in_rate, out_rate)
        phase = np.sin(2 * np.pi * 300 * np.arange(in_rate // 10) / in_rate)
        square = np.where(phase >= 0, 32767, -32768).astype(np.int16)  # overshoots (Gibbs) past int16
        y = steady(r.process(square), out_rate)
        t = np.arange(len(y)) / out_rate + WARMUP_S - r.delay_ms / 1000  # output time, mapped to input time
        ref = np.sin(2 * np.pi * 300 * t)
        peaks = np.abs(ref) > 0.5  # away from the edges the output keeps the square's sign: no wrap-around
        assert np.all(np.sign(y[peaks]) == np.sign(ref[peaks]))
        assert y.max() == 32767 and y.min() == -32768


@pytest.mark.parametrize("in_rate,out_rate", PAIRS)
@pytest.mark.parametrize("freq", [300.0, 1000.0, 3000.0, 3400.0])
def test_passband_tone_snr_at_least_60db(in_rate: int, out_rate: int, freq: float) -> None:
    """A tone in the telephone band comes through at unit gain; everything else (images, aliases, noise) is
    >= 60 dB below it."""
    y = steady(chunked(StreamResampler(in_rate, out_rate), tone(in_rate, freq), [in_rate // 50]), out_rate)
    amplitude, _, residual = fit_tone(y, out_rate, freq)
    snr = db(amplitude / np.sqrt(2) / rms(residual))
    print(f"{in_rate}->{out_rate} {freq:.0f} Hz: SNR {snr:.1f} dB, gain {db(amplitude / AMPLITUDE):+.3f} dB")
    assert snr >= 60.0
    assert abs(db(amplitude / AMPLITUDE)) < 0.1


@pytest.mark.parametrize(
    "in_rate,freq",
    [
        (24000, 4100.0),
        (24000, 5000.0),
        (24000, 9000.0),
        (24000, 11000.0),
        (16000, 4100.0),
        (16000, 5000.0),
        (16000, 7000.0),
    ],
)
def test_downsampling_stopband_at_least_60db(in_rate: int, freq: float) -> None:
    """Content above 4 kHz must not alias into the 8 kHz output."""
    x = tone(in_rate, freq)
    y = steady(chunked(StreamResampler(in_rate, 8000), x, [in_rate // 50]), 8000)
    floor = 1 / np.sqrt(12)  # int16 rounding noise: an all-zero output is as quiet as int16 can tell
    attenuation = db(rms(x.astype(np.float64)) / max(rms(y), floor))
    print(f"{in_rate}->8000 {freq:.0f} Hz: {attenuation:.1f} dB down")
    assert attenuation >= 60.0


@pytest.mark.parametrize("out_rate", [16000, 24000])
@pytest.mark.parametrize("freq", [1000.0, 3000.0, 3400.0])
def test_upsampling_images_at_least_60db(out_rate: int, freq: float) -> None:
    """Zero-stuffing mirrors the 8 kHz band around 8 kHz multiples; those images (above 4 kHz) are removed."""
    y = steady(chunked(StreamResampler(8000, out_rate), tone(8000, freq), [160]), out_rate)
    mirrored = [k * 8000 + s * freq for k in range(1, out_rate // 8000) for s in (-1, 1)]
    images = [f for f in mirrored if f < out_rate / 2]
    for image in images:
        level, _, _ = fit_tone(y, out_rate, image)
        print(f"8000->{out_rate} {freq:.0f} Hz: image at {image:.0f} Hz {db(level / AMPLITUDE):.1f} dB")
        assert db(level / AMPLITUDE) <= -60.0


@pytest.mark.parametrize("in_rate,out_rate", PAIRS)
class TestDelay:
    """delay_ms is the delay the output really shows, to within one output sample."""

    def test_impulse(self, in_rate: int, out_rate: int) -> None:
        r = StreamResampler(in_rate, out_rate)
        x = np.zeros(in_rate // 10, dtype=np.int16)
        at = in_rate // 100  # 10 ms in
        x[at] = 20000
        y = chunked(r, x, [in_rate // 50])
        measured = int(np.argmax(y)) - at * out_rate / in_rate
        assert abs(measured - r.delay_ms * out_rate / 1000) <= 1

    def test_tone_phase(self, in_rate: int, out_rate: int) -> None:
        freq = 100.0  # period 10 ms, longer than the delay, so the phase lag is unambiguous
        r = StreamResampler(in_rate, out_rate)
        x = tone(in_rate, freq)
        y = chunked(r, x, [in_rate // 50])
        _, phase_in, _ = fit_tone(x.astype(np.float64), in_rate, freq)
        _, phase_out, _ = fit_tone(y.astype(np.float64), out_rate, freq)
        lag_s = ((phase_in - phase_out) % (2 * np.pi)) / (2 * np.pi * freq)
        assert abs(lag_s * out_rate - r.delay_ms * out_rate / 1000) <= 1

    def test_delay_is_a_few_ms(self, in_rate: int, out_rate: int) -> None:
        assert 0 < StreamResampler(in_rate, out_rate).delay_ms < 10


def test_rejects_bad_rates() -> None:
    with pytest.raises(ValueError):
        StreamResampler(0, 8000)
    with pytest.raises(ValueError):
        StreamResampler(8000, -16000)
