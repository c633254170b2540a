"""AudioSocket framing (res/res_audiosocket.c at 22.10.1): parser fed in one chunk and byte by byte; builders."""

from __future__ import annotations

import random
import struct
import uuid as uuidlib

import pytest

from bridge.pbx.audiosocket import protocol as wire
from bridge.pbx.audiosocket.protocol import AudioSocketError, AudioSocketParser

CALL = uuidlib.UUID("4b7c1f7e-2b53-4c55-9d5a-6a0f1e2d3c4b")
# ast_audiosocket_init: kind 0x01, htons(16), uuid_parse bytes
HELLO = bytes([0x01, 0x00, 0x10]) + CALL.bytes
AUDIO = bytes([0x10, 0x01, 0x40]) + struct.pack("<160h", *range(-80, 80))  # 320 bytes: 20 ms slin 8 kHz
DTMF = bytes([0x03, 0x00, 0x01]) + b"5"  # ast_audiosocket_send_frame for AST_FRAME_DTMF


def feed_bytewise(parser: AudioSocketParser, data: bytes) -> list[wire.Message]:
    return [m for i in range(len(data)) for m in parser.feed(data[i : i + 1])]


@pytest.mark.parametrize("feed", [lambda p, d: p.feed(d), feed_bytewise], ids=["one-chunk", "byte-at-a-time"])
def test_asterisk_stream_parses_into_uuid_audio_dtmf(feed):
    messages = feed(AudioSocketParser(), HELLO + AUDIO + DTMF + AUDIO)
    assert messages == [
        wire.Identify(CALL),
        wire.Audio(AUDIO[3:], 8000),
        wire.Digit("5"),
        wire.Audio(AUDIO[3:], 8000),
    ]


def test_higher_slin_kinds_carry_their_rate():
    parser = AudioSocketParser()
    parser.feed(HELLO)
    rates = [m.rate for kind in range(0x10, 0x19) for m in parser.feed(bytes([kind, 0, 4]) + b"\x01\x00\x02\x00")]
    assert rates == [8000, 12000, 16000, 24000, 32000, 44100, 48000, 96000, 192000]


def test_first_message_must_be_a_16_byte_uuid():
    with pytest.raises(AudioSocketError):
        AudioSocketParser().feed(AUDIO)
    with pytest.raises(AudioSocketError):
        AudioSocketParser().feed(bytes([0x01, 0x00, 0x04]) + b"abcd")


def test_unknown_kind_and_bad_payloads_are_counted_and_the_stream_goes_on():
    parser = AudioSocketParser()
    parser.feed(HELLO)
    messages = parser.feed(bytes([0x42, 0, 2]) + b"zz" + bytes([0x10, 0, 3]) + b"abc" + bytes([0x03, 0, 1]) + b"x"
                           + HELLO + AUDIO)
    assert [type(m) for m in messages] == [wire.Garbage] * 4 + [wire.Audio]
    assert parser.garbage == 4


def test_hangup_and_error_from_the_peer():
    parser = AudioSocketParser()
    parser.feed(HELLO)
    assert parser.feed(b"\x00\x00\x00" + b"\xff\x00\x01\x07") == [wire.Hangup(), wire.Failure(b"\x07")]


def test_builders_write_what_asterisk_reads():
    assert wire.hangup() == b"\x00\x00\x00"
    assert wire.audio(AUDIO[3:]) == AUDIO
    with pytest.raises(ValueError):
        wire.audio(b"")  # "Invalid message length" in Asterisk
    with pytest.raises(ValueError):
        wire.message(wire.Kind.AUDIO, bytes(70000))


@pytest.mark.parametrize("seed", range(200))
def test_any_bytes_after_the_uuid_parse_the_same_in_any_chunks_and_never_raise(seed):
    rng = random.Random(seed)
    data = rng.randbytes(rng.randrange(400))
    chunk = rng.randrange(1, 50)
    parser, whole = AudioSocketParser(), AudioSocketParser()
    parser.feed(HELLO)
    whole.feed(HELLO)
    chunked = [m for i in range(0, len(data), chunk) for m in parser.feed(data[i : i + chunk])]
    assert chunked == whole.feed(data)
