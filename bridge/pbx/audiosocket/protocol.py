"""AudioSocket framing as Asterisk 22.10.1 implements it, sans-I/O: a stream parser and the message builders.

Wire format (include/asterisk/res_audiosocket.h, res/res_audiosocket.c; ../shared/docs/pbx.md §1.7): one byte of
kind, two bytes of payload length (unsigned, network order: `htons`), then the payload. Asterisk is always the
TCP client; its first message is the call's UUID (`ast_audiosocket_init`: kind 0x01, length 16, `uuid_parse`d
bytes). Then audio (0x10 slin 8 kHz, 0x11-0x18 slin12..slin192 for those channel formats) and DTMF (0x03, one
ASCII byte, `ast_audiosocket_send_frame`). Signed-linear samples are host order, i.e. little-endian on every
platform Asterisk runs on here. Asterisk accepts from us only hang-up (0x00) and audio with a length of at
least 1 (`ast_audiosocket_receive_frame_with_hangup`); any other kind fails the read, which ends the call, so
the builders here make nothing else towards Asterisk. Asterisk hangs up by closing the socket.
"""

from __future__ import annotations

import enum
import struct
import uuid as uuidlib
from dataclasses import dataclass

from bridge.errors import ParseError

HEADER = struct.Struct("!BH")
MAX_PAYLOAD = 0xFFFF  # the 16-bit length field


class Kind(enum.IntEnum):
    """`enum ast_audiosocket_msg_kind`."""

    HANGUP = 0x00
    UUID = 0x01
    DTMF = 0x03
    AUDIO = 0x10  # slin, 8 kHz (also any non-slin channel format, raw)
    AUDIO_SLIN12 = 0x11
    AUDIO_SLIN16 = 0x12
    AUDIO_SLIN24 = 0x13
    AUDIO_SLIN32 = 0x14
    AUDIO_SLIN44 = 0x15
    AUDIO_SLIN48 = 0x16
    AUDIO_SLIN96 = 0x17
    AUDIO_SLIN192 = 0x18
    ERROR = 0xFF


# Sample rate of each audio kind (main/format_cache.c: slin44 is 44.1 kHz).
AUDIO_RATES = {
    Kind.AUDIO: 8000, Kind.AUDIO_SLIN12: 12000, Kind.AUDIO_SLIN16: 16000, Kind.AUDIO_SLIN24: 24000,
    Kind.AUDIO_SLIN32: 32000, Kind.AUDIO_SLIN44: 44100, Kind.AUDIO_SLIN48: 48000, Kind.AUDIO_SLIN96: 96000,
    Kind.AUDIO_SLIN192: 192000,
}


class AudioSocketError(ParseError):
    """Bytes from Asterisk that break the protocol (first message not a UUID, a UUID of the wrong size):
    the connection is closed."""


# ---- messages -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identify:
    """0x01: the call's UUID, the first message of every connection."""

    uuid: uuidlib.UUID


@dataclass(frozen=True)
class Audio:
    """0x10-0x18: signed-linear 16-bit little-endian samples at `rate`."""

    pcm: bytes
    rate: int = 8000


@dataclass(frozen=True)
class Digit:
    """0x03: one DTMF key (Asterisk sends it at the key's end, `send_digit_end`)."""

    key: str


@dataclass(frozen=True)
class Hangup:
    """0x00: the peer asks for the call to end."""


@dataclass(frozen=True)
class Failure:
    """0xFF: the peer reports an error (optional application-specific payload)."""

    code: bytes


@dataclass(frozen=True)
class Garbage:
    """A message of an unknown kind or an unusable payload: counted and dropped, the call goes on."""

    kind: int
    why: str


Message = Identify | Audio | Digit | Hangup | Failure | Garbage

DTMF_KEYS = frozenset("0123456789*#ABCD")


class AudioSocketParser:
    """Turns the byte stream from Asterisk into messages.

    `feed(data)` returns the complete messages in `data` (any split: byte at a time or many at once) and keeps a
    partial one for the next call. The buffer never holds more than one message (3 + 65535 bytes).

    Raises (from feed):
        AudioSocketError: the first message is not a 16-byte UUID.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.identified = False
        self.garbage = 0

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        while len(self._buf) >= HEADER.size:
            kind, length = HEADER.unpack_from(self._buf)
            end = HEADER.size + length
            if len(self._buf) < end:
                break
            payload = bytes(self._buf[HEADER.size:end])
            del self._buf[:end]
            message = self._message(kind, payload)
            if isinstance(message, Garbage):
                self.garbage += 1
            out.append(message)
        return out

    def _message(self, kind: int, payload: bytes) -> Message:
        if not self.identified:
            if kind != Kind.UUID or len(payload) != 16:
                raise AudioSocketError(f"first AudioSocket message must be a 16-byte UUID, got kind 0x{kind:02x} "
                                       f"of {len(payload)} bytes")
            self.identified = True
            return Identify(uuidlib.UUID(bytes=payload))
        if kind in AUDIO_RATES:
            if not payload or len(payload) % 2:
                return Garbage(kind, f"audio of {len(payload)} bytes is not whole 16-bit samples")
            return Audio(payload, AUDIO_RATES[Kind(kind)])
        match kind:
            case Kind.DTMF:
                key = payload.decode("latin-1")
                return Digit(key) if key in DTMF_KEYS else Garbage(kind, f"DTMF payload {payload!r}")
            case Kind.HANGUP:
                return Hangup()
            case Kind.ERROR:
                return Failure(payload)
            case Kind.UUID:
                return Garbage(kind, "a second UUID")
        return Garbage(kind, f"unknown kind 0x{kind:02x} ({len(payload)} bytes)")


# ---- builders ---------------------------------------------------------------------------------------------------


def message(kind: int, payload: bytes = b"") -> bytes:
    """One message of any kind (the fakes use it for what Asterisk sends)."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"AudioSocket payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(kind, len(payload)) + payload


def audio(pcm: bytes) -> bytes:
    """Signed-linear 8 kHz audio towards Asterisk (kind 0x10). Asterisk refuses an empty one."""
    if not pcm:
        raise ValueError("Asterisk refuses zero-length AudioSocket audio")
    return message(Kind.AUDIO, pcm)


def hangup() -> bytes:
    """Ask Asterisk to end the call (kind 0x00; app_audiosocket returns 0, chan_audiosocket hangs up)."""
    return HEADER.pack(Kind.HANGUP, 0)
