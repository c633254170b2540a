"""RFC 3550 §5.1 RTP header and RFC 4733 §2.3 telephone-event payloads."""

import os
import random
import struct

import pytest

from bridge.errors import RtpParseError
from bridge.rtp.packet import RtpPacket, TelephoneEvent


def test_minimal_packet_fields_and_round_trip():
    data = bytes.fromhex("80 00 1234 000000a0 deadbeef".replace(" ", "")) + b"\xff" * 160
    p = RtpPacket.parse(data)
    assert (p.payload_type, p.sequence, p.timestamp, p.ssrc, p.marker) == (0, 0x1234, 160, 0xDEADBEEF, False)
    assert p.payload == b"\xff" * 160
    assert p.serialize() == data


def test_marker_csrc_extension_padding_round_trip():
    p = RtpPacket(8, 65535, 2**32 - 1, 7, b"abc", marker=True, csrc=(1, 2), extension=(0xBEDE, b"\x10\x20\x30\x40"),
                  padding=3)
    data = p.serialize()
    assert data[0] == 0x80 | 0x20 | 0x10 | 2 and data[1] == 0x80 | 8
    back = RtpPacket.parse(data)
    assert back == p
    assert back.serialize() == data


@pytest.mark.parametrize(
    "data, why",
    [
        (b"", "empty"),
        (b"\x80\x00\x00", "truncated header"),
        (bytes([0x40]) + bytes(11), "version 1"),
        (bytes([0x83]) + bytes(11) + bytes(8), "CSRC count 3 with room for 2"),
        (bytes([0x90]) + bytes(11) + b"\xbe\xde", "extension header cut"),
        (bytes([0x90]) + bytes(11) + b"\xbe\xde\x00\x02" + bytes(4), "extension longer than packet"),
        (bytes([0xA0]) + bytes(11) + b"\x00\x09", "padding longer than packet"),
        (bytes([0xA0]) + bytes(11) + b"ab\x00", "padding count zero"),
    ],
)
def test_malformed_packets_raise_parse_error(data, why):
    with pytest.raises(RtpParseError):
        RtpPacket.parse(data)


def test_random_bytes_raise_only_parse_error():
    rng = random.Random(1)
    for _ in range(5000):
        data = os.urandom(rng.randrange(0, 64)) if rng.random() < 0.5 else bytes([0x80 | rng.randrange(64)]) + \
            os.urandom(rng.randrange(0, 40))
        try:
            RtpPacket.parse(data)
        except RtpParseError:
            pass


def test_telephone_event_round_trip_and_key():
    ev = TelephoneEvent(11, True, 10, 1280)
    assert ev.serialize() == struct.pack("!BBH", 11, 0x80 | 10, 1280)
    assert TelephoneEvent.parse(ev.serialize()) == ev
    assert ev.key == "#"
    assert TelephoneEvent(5, False, 0, 0).key == "5"
    assert TelephoneEvent(100, False, 0, 0).key is None
    with pytest.raises(RtpParseError):
        TelephoneEvent.parse(b"\x01\x02")
