"""Stateful streaming polyphase resampler for PCM16 between rational rates (8 kHz <-> 16/24 kHz)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
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
        buf = np.concatenate([self._hist, x]) if len(x) else self._hist
        last = len(x) * d.up - 1  # the last upsampled position this chunk's input reaches
        count = max(0, (last - self._next) // d.down + 1)
        pos = self._next + d.down * np.arange(count)
        self._next += count * d.down - len(x) * d.up
        self._hist = buf[len(buf) - (d.taps - 1) :].copy()
        if count == 0:
            return np.zeros(0, dtype=np.int16)
        windows = np.lib.stride_tricks.sliding_window_view(buf, d.taps)  # windows[q] ends at input q
        out = self._filter(windows, pos)
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16)

    def _filter(self, windows: np.ndarray, pos: np.ndarray) -> np.ndarray:
        d = self._d
        if d.up == 1:  # pure decimation: one phase, evenly spaced windows
            return windows[pos[0] : pos[-1] + 1 : d.down] @ d.phases[0]
        if d.down == 1:  # pure interpolation: every input yields `up` outputs, one per phase
            q0 = pos[0] // d.up
            q1 = pos[-1] // d.up
            block = (windows[q0 : q1 + 1] @ d.phases.T).ravel()
            start = pos[0] - q0 * d.up
            return block[start : start + len(pos)]
        out = np.empty(len(pos))
        q, p = np.divmod(pos, d.up)
        for phase in range(d.up):
            sel = p == phase
            out[sel] = windows[q[sel]] @ d.phases[phase]
        return out
