"""G.711 tables checked value by value against the stdlib audioop (ITU-T G.711 as in Sun's g711.c)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from bridge.codec import g711
from bridge.media import Codec

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    audioop = pytest.importorskip("audioop", reason="Python >= 3.13 needs the audioop-lts package (test extra)")

ALL_CODES = bytes(range(256))
ALL_PCM = np.arange(65536, dtype=np.uint16).view(np.int16)  # every 16-bit value once

REFERENCE = {
    Codec.PCMU: (audioop.lin2ulaw, audioop.ulaw2lin),
    Codec.PCMA: (audioop.lin2alaw, audioop.alaw2lin),
}


@pytest.mark.parametrize("codec", list(Codec))
class TestBitExact:
    """ITU-T G.711 §2-3: every code and every PCM16 value, as audioop gives them."""

    def test_decode_every_code(self, codec: Codec) -> None:
        ours = g711.decode(codec, ALL_CODES)
        assert ours.dtype == np.int16
        ref = np.frombuffer(REFERENCE[codec][1](ALL_CODES, 2), dtype=np.int16)
        np.testing.assert_array_equal(ours, ref)

    def test_encode_every_pcm_value(self, codec: Codec) -> None:
        ours = np.frombuffer(g711.encode(codec, ALL_PCM), dtype=np.uint8)
        ref = np.frombuffer(REFERENCE[codec][0](ALL_PCM.tobytes(), 2), dtype=np.uint8)
        mismatch = np.flatnonzero(ours != ref)
        assert mismatch.size == 0, f"first mismatch at pcm {ALL_PCM[mismatch[0]]}"

    def test_silence_byte(self, codec: Codec) -> None:
        assert g711.encode(codec, np.zeros(1, dtype=np.int16)) == bytes([codec.silence])
        # A-law has no zero code: its silence byte decodes to the smallest step, +8.
        assert g711.decode(codec, bytes([codec.silence]))[0] == (0 if codec is Codec.PCMU else 8)

    def test_decode_encode_round_trip_is_identity_on_codes(self, codec: Codec) -> None:
        # μ-law has two zero codes (0x7F and 0xFF); encode picks 0xFF. A-law has no duplicate.
        again = g711.encode(codec, g711.decode(codec, ALL_CODES))
        differ = [c for c, a in zip(ALL_CODES, again, strict=True) if c != a]
        assert differ == ([0x7F] if codec is Codec.PCMU else [])


class TestTranscode:
    """The direct 256-entry tables equal decode-then-encode."""

    @pytest.mark.parametrize("src,dst", [(Codec.PCMU, Codec.PCMA), (Codec.PCMA, Codec.PCMU)])
    def test_table_equals_decode_encode(self, src: Codec, dst: Codec) -> None:
        assert g711.transcode(src, dst, ALL_CODES) == g711.encode(dst, g711.decode(src, ALL_CODES))

    @pytest.mark.parametrize("src,dst", [(Codec.PCMU, Codec.PCMA), (Codec.PCMA, Codec.PCMU)])
    def test_table_equals_audioop_chain(self, src: Codec, dst: Codec) -> None:
        ref = REFERENCE[dst][0](REFERENCE[src][1](ALL_CODES, 2), 2)
        assert g711.transcode(src, dst, ALL_CODES) == ref

    @pytest.mark.parametrize("codec", list(Codec))
    def test_same_law_is_a_copy(self, codec: Codec) -> None:
        assert g711.transcode(codec, codec, ALL_CODES) == ALL_CODES


class TestApi:
    def test_law_helpers_match_codec_dispatch(self) -> None:
        frame = (np.sin(np.arange(160) / 5) * 20000).astype(np.int16)
        assert g711.ulaw_encode(frame) == g711.encode(Codec.PCMU, frame)
        assert g711.alaw_encode(frame) == g711.encode(Codec.PCMA, frame)
        np.testing.assert_array_equal(g711.ulaw_decode(ALL_CODES), g711.decode(Codec.PCMU, ALL_CODES))
        np.testing.assert_array_equal(g711.alaw_decode(ALL_CODES), g711.decode(Codec.PCMA, ALL_CODES))

    def test_empty(self) -> None:
        assert g711.encode(Codec.PCMU, np.zeros(0, dtype=np.int16)) == b""
        assert g711.decode(Codec.PCMA, b"").shape == (0,)
        assert g711.transcode(Codec.PCMU, Codec.PCMA, b"") == b""

    def test_accepts_memoryview_and_little_endian_views(self) -> None:
        pcm = np.frombuffer(bytes(range(64)), dtype="<i2")
        assert g711.encode(Codec.PCMU, pcm) == audioop.lin2ulaw(bytes(range(64)), 2)
        np.testing.assert_array_equal(g711.decode(Codec.PCMU, memoryview(ALL_CODES)), g711.ulaw_decode(ALL_CODES))

    def test_big_endian_and_strided_input(self) -> None:
        frame = (np.sin(np.arange(320) / 5) * 20000).astype(np.int16)
        expected = g711.encode(Codec.PCMA, frame[::2].copy())
        assert g711.encode(Codec.PCMA, frame.astype(">i2")[::2]) == expected
        assert g711.encode(Codec.PCMA, frame[::2]) == expected

    def test_rejects_non_int16(self) -> None:
        with pytest.raises(TypeError):
            g711.encode(Codec.PCMU, np.zeros(4, dtype=np.float32))
        with pytest.raises(TypeError):
            g711.encode(Codec.PCMA, np.zeros(4, dtype=np.int32))
