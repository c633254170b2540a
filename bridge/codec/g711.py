"""G.711 μ-law and A-law to and from PCM16, vectorised with lookup tables, bit-exact with the stdlib `audioop`."""

from __future__ import annotations

import numpy as np

from bridge.media import Codec

__all__ = [
    "alaw_decode",
    "alaw_encode",
    "decode",
    "encode",
    "transcode",
    "ulaw_decode",
    "ulaw_encode",
]

# The tables follow Sun Microsystems' public-domain g711.c (the code CPython's audioop carries): a segment
# search over the magnitude, then 4 mantissa bits. audioop feeds it 14-bit (μ-law, sample >> 2) and 13-bit
# (A-law, sample >> 3) values; we do the same, so every one of the 65,536 inputs maps to audioop's byte.

_QUANT_MASK = 0x0F
_SEG_SHIFT = 4
_SEG_MASK = 0x70
_SIGN_BIT = 0x80
_ULAW_BIAS = 0x84  # ITU-T G.711 μ-law bias (132), on the 16-bit scale
_ULAW_CLIP = 8159  # largest 14-bit magnitude μ-law can represent
_SEG_UEND = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_SEG_AEND = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def _segment(magnitude: np.ndarray, seg_end: np.ndarray) -> np.ndarray:
    """g711.c `search()`: the first segment whose end is >= the magnitude (8 when none is)."""
    return np.searchsorted(seg_end, magnitude, side="left")


def _build_ulaw_encode() -> np.ndarray:
    pcm = np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int32) >> 2  # 14-bit, as audioop
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = _segment(mag, _SEG_UEND)
    uval = (seg << _SEG_SHIFT) | ((mag >> (seg + 1)) & _QUANT_MASK)
    uval = np.where(seg >= 8, 0x7F, uval)
    return (uval ^ mask).astype(np.uint8)


def _build_ulaw_decode() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & _QUANT_MASK) << 3) + _ULAW_BIAS) << ((u & _SEG_MASK) >> _SEG_SHIFT)
    return np.where(u & _SIGN_BIT, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16)


def _build_alaw_encode() -> np.ndarray:
    pcm = np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int32) >> 3  # 13-bit, as audioop
    mask = np.where(pcm >= 0, 0xD5, 0x55)  # even-bit inversion; the sign bit set for positive values
    mag = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = _segment(mag, _SEG_AEND)
    shift = np.maximum(seg, 1)  # segments 0 and 1 share a step size
    aval = (seg << _SEG_SHIFT) | ((mag >> shift) & _QUANT_MASK)
    aval = np.where(seg >= 8, 0x7F, aval)
    return (aval ^ mask).astype(np.uint8)


def _build_alaw_decode() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a & _SEG_MASK) >> _SEG_SHIFT
    t = (a & _QUANT_MASK) << 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & _SIGN_BIT, t, -t).astype(np.int16)


_ENCODE: dict[Codec, np.ndarray] = {Codec.PCMU: _build_ulaw_encode(), Codec.PCMA: _build_alaw_encode()}
_DECODE: dict[Codec, np.ndarray] = {Codec.PCMU: _build_ulaw_decode(), Codec.PCMA: _build_alaw_decode()}
_TRANSCODE: dict[tuple[Codec, Codec], np.ndarray] = {
    (src, dst): _ENCODE[dst][_DECODE[src].view(np.uint16)] for src in Codec for dst in Codec
}


def decode(codec: Codec, data: bytes) -> np.ndarray:
    """G.711 bytes -> PCM16 samples (int16, native order), one sample per byte."""
    return _DECODE[codec][np.frombuffer(data, dtype=np.uint8)]


def encode(codec: Codec, pcm: np.ndarray) -> bytes:
    """PCM16 samples (int16 array) -> G.711 bytes, one byte per sample.

    Raises:
        TypeError: pcm is not an int16 array (a float or wider array would be silently wrapped otherwise).
    """
    samples = np.asarray(pcm)
    if samples.dtype.kind != "i" or samples.dtype.itemsize != 2:
        raise TypeError(f"encode wants int16 samples, got {samples.dtype}")
    return _ENCODE[codec][samples.astype(np.int16, copy=False).view(np.uint16)].tobytes()


def transcode(src: Codec, dst: Codec, data: bytes) -> bytes:
    """G.711 bytes in one law -> the other law (or a copy), as decode-then-encode would give, in one lookup."""
    if src is dst:
        return bytes(data)
    return _TRANSCODE[src, dst][np.frombuffer(data, dtype=np.uint8)].tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    """μ-law bytes -> int16 samples."""
    return decode(Codec.PCMU, data)


def ulaw_encode(pcm: np.ndarray) -> bytes:
    """int16 samples -> μ-law bytes."""
    return encode(Codec.PCMU, pcm)


def alaw_decode(data: bytes) -> np.ndarray:
    """A-law bytes -> int16 samples."""
    return decode(Codec.PCMA, data)


def alaw_encode(pcm: np.ndarray) -> bytes:
    """int16 samples -> A-law bytes."""
    return encode(Codec.PCMA, pcm)
