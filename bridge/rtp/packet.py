"""RTP packets (RFC 3550 §5.1) and telephone-event payloads (RFC 4733 §2.3): parse and build, no I/O."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from bridge.errors import RtpParseError

RTP_VERSION = 2
HEADER = struct.Struct("!BBHII")  # V/P/X/CC, M/PT, sequence, timestamp, SSRC
MAX_PACKET = 1500  # one Ethernet MTU: no G.711 frame of ours comes near it
PT_COMFORT_NOISE = 13  # RFC 3389


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP packet. `payload` excludes padding; `extension` is (profile, data) when the X bit is set."""

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extension: tuple[int, bytes] | None = None
    padding: int = 0

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Parse one datagram.

        Raises:
            RtpParseError: not version 2, shorter than its header, CSRC list or extension, or padding longer
                than the packet.
        """
        if len(data) < HEADER.size:
            raise RtpParseError(f"{len(data)} bytes is shorter than an RTP header")
        b0, b1, seq, ts, ssrc = HEADER.unpack_from(data)
        if b0 >> 6 != RTP_VERSION:
            raise RtpParseError(f"RTP version {b0 >> 6}")
        pos = HEADER.size
        cc = b0 & 0x0F
        if len(data) < pos + 4 * cc:
            raise RtpParseError(f"CSRC count {cc} runs past the packet")
        csrc = struct.unpack_from(f"!{cc}I", data, pos) if cc else ()
        pos += 4 * cc
        extension = None
        if b0 & 0x10:
            if len(data) < pos + 4:
                raise RtpParseError("extension header runs past the packet")
            profile, words = struct.unpack_from("!HH", data, pos)
            end = pos + 4 + 4 * words
            if len(data) < end:
                raise RtpParseError("extension runs past the packet")
            extension = (profile, bytes(data[pos + 4 : end]))
            pos = end
        end = len(data)
        padding = 0
        if b0 & 0x20:
            padding = data[-1]
            if padding == 0 or pos + padding > end:
                raise RtpParseError(f"padding {padding} does not fit the packet")
            end -= padding
        return cls(b1 & 0x7F, seq, ts, ssrc, bytes(data[pos:end]), bool(b1 & 0x80), csrc, extension, padding)

    def serialize(self) -> bytes:
        """The packet's wire bytes."""
        b0 = RTP_VERSION << 6 | len(self.csrc)
        if self.padding:
            b0 |= 0x20
        if self.extension is not None:
            b0 |= 0x10
        out = [HEADER.pack(b0, self.marker << 7 | self.payload_type, self.sequence, self.timestamp, self.ssrc)]
        if self.csrc:
            out.append(struct.pack(f"!{len(self.csrc)}I", *self.csrc))
        if self.extension is not None:
            profile, data = self.extension
            out.append(struct.pack("!HH", profile, len(data) // 4) + data)
        out.append(self.payload)
        if self.padding:
            out.append(bytes(self.padding - 1) + bytes([self.padding]))
        return b"".join(out)


DTMF_KEYS = "0123456789*#ABCD"


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """An RFC 4733 §2.3 named event: event code, end bit, volume, duration in timestamp units."""

    event: int
    end: bool
    volume: int
    duration: int

    @classmethod
    def parse(cls, payload: bytes) -> TelephoneEvent:
        if len(payload) < 4:
            raise RtpParseError(f"telephone-event payload of {len(payload)} bytes")
        event, flags, duration = struct.unpack_from("!BBH", payload)
        return cls(event, bool(flags & 0x80), flags & 0x3F, duration)

    def serialize(self) -> bytes:
        return struct.pack("!BBH", self.event, self.end << 7 | (self.volume & 0x3F), self.duration)

    @property
    def key(self) -> str | None:
        """The DTMF key ('0'-'9', '*', '#', 'A'-'D'), or None for other events."""
        return DTMF_KEYS[self.event] if self.event < len(DTMF_KEYS) else None
