"""Stateful streaming polyphase resampler for PCM16 between rational rates (8 kHz <-> 16/24 kHz)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import as_strided
from scipy import signal

__all__ = ["StreamResampler"]

STOPBAND_DB = 70.0  # Kaiser design target; the stopband must stay >= 60 dB below the passband with margin
TRANSITION = 0.15  # transition band as a fraction of the lower Nyquist: 3.4-4.0 kHz when one side is 8 kHz


@dataclass(frozen=True)
class _Design:
    """One rate pair's filter, split into phases: up by `up`, low-pass, down by `down`."""

    up: int
    down: int
    taps: int  # taps per phase
    phases: np.ndarray  # (up, taps) float64, each row reversed so that `window @ row` is the convolution
    delay: int  # group delay in samples of the upsampled (filter) rate; a multiple of `down`


@lru_cache(maxsize=16)
def _design(in_rate: int, out_rate: int) -> _Design:
    """Kaiser-window low-pass at in_rate*up, cut at the lower Nyquist, designed once per rate pair."""
    g = math.gcd(in_rate, out_rate)
    up, down = out_rate // g, in_rate // g
    fs = in_rate * up
    edge = min(in_rate, out_rate) / 2  # nothing at or above it may survive
    width = TRANSITION * edge
    numtaps, beta = signal.kaiserord(STOPBAND_DB, width / (fs / 2))
    half = math.ceil((numtaps - 1) / 2 / down) * down  # the delay, rounded up to whole output samples
    numtaps = 2 * half + 1  # odd: linear phase with a whole-sample delay of `half` at the output rate
    h = signal.firwin(numtaps, edge - width / 2, window=("kaiser", beta), fs=fs) * up  # zero-stuffing loses `up`
    taps = -(-numtaps // up)
    h = np.concatenate([h, np.zeros(taps * up - numtaps)])
    phases = np.ascontiguousarray(h.reshape(taps, up).T[:, ::-1])  # phase p holds h[p], h[p+up], ...
    return _Design(up, down, taps, phases, half)


class StreamResampler:
    """Resample a PCM16 stream chunk by chunk, carrying the filter state from one chunk to the next.

    Feeding a signal in any chunk sizes gives the same samples as feeding it at once (to within 1 LSB of
    float rounding). Every input sample is used as soon as it arrives; the output lags the input by
    `delay_ms` (the linear-phase filter's group delay), and a chunk of n samples yields about
    n * out_rate / in_rate samples (exactly that when n is a multiple of in_rate / gcd).

    Args:
        in_rate: input sample rate in Hz.
        out_rate: output sample rate in Hz.

    Raises:
        ValueError: a rate is not a positive integer.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"rates must be positive, got {in_rate} -> {out_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._d = _design(in_rate, out_rate)
        self.reset()

    @property
    def delay_ms(self) -> float:
        """Group delay the filter adds, in milliseconds (a whole number of output samples)."""
        return self._d.delay / (self.in_rate * self._d.up) * 1000.0

    def reset(self) -> None:
        """Forget all history, as if newly made (e.g. after a barge-in flush or a new stream)."""
        self._hist = np.zeros(self._d.taps - 1)
        self._next = 0  # upsampled index of the next output, counted from the start of the next chunk

    def process(self, pcm: np.ndarray) -> np.ndarray:
        """Resample one chunk (int16 samples, any length) and return the output it completes (int16)."""
        d = self._d
        x = np.asarray(pcm, dtype=np.float64).ravel()
        first = self._next
        count = max(0, (len(x) * d.up - 1 - first) // d.down + 1)  # outputs whose last input has arrived
        buf = np.concatenate((self._hist, x))  # buf[q : q + taps] is the window ending at input q
        self._next = first + count * d.down - len(x) * d.up
        self._hist = buf[len(buf) - (d.taps - 1) :]
        if count == 0:
            return np.zeros(0, dtype=np.int16)
        y = self._filter(buf, first, count)
        np.rint(y, out=y)
        np.clip(y, -32768, 32767, out=y)
        return y.astype(np.int16)

    def _filter(self, buf: np.ndarray, first: int, count: int) -> np.ndarray:
        """`count` outputs at upsampled positions first, first + down, ... (counted from this chunk's start)."""
        d = self._d
        step = buf.strides[0]
        if d.up == 1:  # pure decimation: one phase, windows `down` inputs apart
            windows = as_strided(buf[first:], (count, d.taps), (d.down * step, step), writeable=False)
            return np.dot(windows, d.phases[0])
        if d.down == 1:  # pure interpolation: every input yields `up` outputs, one per phase
            q0, q1 = first // d.up, (first + count - 1) // d.up
            windows = as_strided(buf[q0:], (q1 - q0 + 1, d.taps), (step, step), writeable=False)
            block = np.dot(windows, d.phases.T).ravel()
            start = first - q0 * d.up
            return block[start : start + count]
        q, p = np.divmod(first + d.down * np.arange(count), d.up)
        windows = as_strided(buf, (len(buf) - d.taps + 1, d.taps), (step, step), writeable=False)
        out = np.empty(count)
        for phase in range(d.up):
            sel = p == phase
            out[sel] = np.dot(windows[q[sel]], d.phases[phase])
        return out
