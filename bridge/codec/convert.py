"""Converters between a call's G.711 8 kHz frames and an agent's wire format (pass-through when they match)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bridge.codec import g711
from bridge.codec.resample import StreamResampler
from bridge.media import SAMPLE_RATE, AudioFormat, Codec

Converter = Callable[[bytes], bytes]

_LAW = {"pcmu": Codec.PCMU, "pcma": Codec.PCMA}


def uplink(codec: Codec, fmt: AudioFormat) -> Converter:
    """Caller G.711 frames -> the agent's input format."""
    if fmt.encoding in _LAW:
        law = _LAW[fmt.encoding]
        return _identity if law is codec else (lambda data: g711.transcode(codec, law, data))
    resampler = StreamResampler(SAMPLE_RATE, fmt.rate) if fmt.rate != SAMPLE_RATE else None

    def to_pcm16(data: bytes) -> bytes:
        pcm = g711.decode(codec, data)
        return (resampler.process(pcm) if resampler else pcm).astype("<i2").tobytes()

    return to_pcm16


def downlink(fmt: AudioFormat, codec: Codec) -> Converter:
    """Agent audio (any chunk size) -> the call's G.711 at 8 kHz."""
    if fmt.encoding in _LAW:
        law = _LAW[fmt.encoding]
        return _identity if law is codec else (lambda data: g711.transcode(law, codec, data))
    resampler = StreamResampler(fmt.rate, SAMPLE_RATE) if fmt.rate != SAMPLE_RATE else None
    carry = bytearray()  # an odd byte: half a PCM16 sample split across chunks

    def from_pcm16(data: bytes) -> bytes:
        carry.extend(data)
        usable = len(carry) & ~1
        pcm = np.frombuffer(bytes(carry[:usable]), dtype="<i2")
        del carry[:usable]
        return g711.encode(codec, resampler.process(pcm) if resampler else pcm)

    return from_pcm16


def _identity(data: bytes) -> bytes:
    return data
