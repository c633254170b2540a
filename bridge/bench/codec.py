"""G.711 encode/decode frames per second (ours beside audioop) and resampler cost per 20 ms frame."""

from __future__ import annotations

import platform
import time
import warnings
from collections.abc import Callable
from types import ModuleType

import numpy as np

from bridge.codec import g711
from bridge.codec.resample import StreamResampler
from bridge.media import FRAME_SAMPLES, Codec

SECONDS = 0.5  # measured time per figure: long enough for a stable rate, short enough for `all`
BLOCK_FRAMES = 50  # 1 s of 8 kHz audio per call, for the block-throughput rows


def _audioop() -> ModuleType | None:
    """The stdlib audioop (removed in Python 3.13; the audioop-lts package provides it there), if importable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import audioop
        except ImportError:
            return None
    return audioop


def _rate(fn: Callable[[], object]) -> tuple[float, float]:
    """Calls per second and µs per call of fn, over about SECONDS after a warm-up."""
    for _ in range(100):
        fn()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < SECONDS:
        for _ in range(200):
            fn()
        n += 200
    return n / elapsed, elapsed / n * 1e6


def _g711_rows(audioop: ModuleType | None) -> None:
    pcm = (np.sin(np.arange(FRAME_SAMPLES) / 3.0) * 12000).astype(np.int16)
    raw = pcm.tobytes()
    print(f"{'G.711, 160-sample frames':<28}{'ours frames/s':>16}{'audioop frames/s':>18}")
    for codec, name in ((Codec.PCMU, "ulaw"), (Codec.PCMA, "alaw")):
        data = g711.encode(codec, pcm)
        ours_enc, _ = _rate(lambda codec=codec: g711.encode(codec, pcm))
        ours_dec, _ = _rate(lambda codec=codec, data=data: g711.decode(codec, data))
        ref_enc = ref_dec = None
        if audioop is not None:
            lin2, to_lin = getattr(audioop, f"lin2{name}"), getattr(audioop, f"{name}2lin")
            ref_enc, _ = _rate(lambda lin2=lin2: lin2(raw, 2))
            ref_dec, _ = _rate(lambda to_lin=to_lin, data=data: to_lin(data, 2))
        for op, ours, ref in (("encode", ours_enc, ref_enc), ("decode", ours_dec, ref_dec)):
            ref_text = f"{ref:>18,.0f}" if ref is not None else f"{'n/a':>18}"
            print(f"{name + ' ' + op:<28}{ours:>16,.0f}{ref_text}")
    transcode, _ = _rate(lambda: g711.transcode(Codec.PCMU, Codec.PCMA, data))
    print(f"{'ulaw->alaw transcode':<28}{transcode:>16,.0f}")
    block = np.tile(pcm, BLOCK_FRAMES)  # per-call overhead dominates a 160-sample frame; a 1 s block shows the tables
    encoded = g711.encode(Codec.PCMU, block)
    enc, _ = _rate(lambda: g711.encode(Codec.PCMU, block))
    dec, _ = _rate(lambda: g711.decode(Codec.PCMU, encoded))
    ref_enc = ref_dec = ""
    if audioop is not None:
        raw_block = block.tobytes()
        ref_enc = f"{_rate(lambda: audioop.lin2ulaw(raw_block, 2))[0] * BLOCK_FRAMES:>18,.0f}"
        ref_dec = f"{_rate(lambda: audioop.ulaw2lin(encoded, 2))[0] * BLOCK_FRAMES:>18,.0f}"
    print(f"{'ulaw encode, 1 s blocks':<28}{enc * BLOCK_FRAMES:>16,.0f}{ref_enc}")
    print(f"{'ulaw decode, 1 s blocks':<28}{dec * BLOCK_FRAMES:>16,.0f}{ref_dec}")


def _resampler_rows() -> None:
    print(f"{'resampler, 20 ms frames':<28}{'µs/frame':>16}{'delay ms':>18}")
    for in_rate, out_rate in ((8000, 16000), (24000, 8000), (16000, 8000), (8000, 24000)):
        r = StreamResampler(in_rate, out_rate)
        t = np.arange(in_rate // 50) / in_rate
        frame = (np.sin(2 * np.pi * 1000 * t) * 12000).astype(np.int16)
        _, us = _rate(lambda r=r, frame=frame: r.process(frame))
        print(f"{f'{in_rate}->{out_rate}':<28}{us:>16.1f}{r.delay_ms:>18.3f}")


def run() -> None:
    """Print the figures, with the command and the machine that produced them."""
    audioop = _audioop()
    print("$ python -m bridge.bench codec")
    print(f"# Python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}, one thread")
    _g711_rows(audioop)
    _resampler_rows()


if __name__ == "__main__":
    run()
