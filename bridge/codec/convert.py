"""Converters between two audio formats (a call leg's and an agent's): pass-through when they match.

G.711 is 8 kHz by definition; PCM16 (little-endian mono) may be at any rate, resampled by a StreamResampler.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bridge.codec import g711
from bridge.codec.resample import StreamResampler
from bridge.media import AudioFormat, Codec

Converter = Callable[[bytes], bytes]

_LAW = {"pcmu": Codec.PCMU, "pcma": Codec.PCMA}


def converter(src: AudioFormat, dst: AudioFormat) -> Converter:
    """Audio in `src` (any chunk size) -> the same audio in `dst`, streaming (filter state kept between chunks)."""
    if src == dst:
        return _identity
    if src.encoding in _LAW and dst.encoding in _LAW:
        a, b = _LAW[src.encoding], _LAW[dst.encoding]
        return lambda data: g711.transcode(a, b, data)
    resampler = StreamResampler(src.rate, dst.rate) if src.rate != dst.rate else None
    carry = bytearray()  # an odd byte: half a PCM16 sample split across chunks
    law_in, law_out = _LAW.get(src.encoding), _LAW.get(dst.encoding)

    def convert(data: bytes) -> bytes:
        if law_in is not None:
            pcm = g711.decode(law_in, data)
        else:
            carry.extend(data)
            usable = len(carry) & ~1
            pcm = np.frombuffer(bytes(carry[:usable]), dtype="<i2")
            del carry[:usable]
        if resampler is not None:
            pcm = resampler.process(pcm)
        return g711.encode(law_out, pcm) if law_out is not None else pcm.astype("<i2").tobytes()

    return convert


def uplink(codec: Codec, fmt: AudioFormat) -> Converter:
    """Caller G.711 frames -> the agent's input format."""
    return converter(AudioFormat.of(codec), fmt)


def downlink(fmt: AudioFormat, codec: Codec) -> Converter:
    """Agent audio (any chunk size) -> the call's G.711 at 8 kHz."""
    return converter(fmt, AudioFormat.of(codec))


def _identity(data: bytes) -> bytes:
    return data
