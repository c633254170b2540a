"""SDP (RFC 4566) parse and build, and the RFC 3264 offer/answer for one G.711 audio stream; no I/O."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from bridge.errors import ParseError
from bridge.media import Address, Codec

MAX_SDP = 16_384  # bytes; a phone offer is ~300-800, even with ICE candidates well under this
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
ANSWER_DIRECTION = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}
STATIC = {0: ("pcmu", 8000), 8: ("pcma", 8000), 18: ("g729", 8000), 9: ("g722", 8000), 3: ("gsm", 8000)}
DTMF_EVENTS = "0-16"  # the RFC 4733 events we understand: digits, * # A-D, flash


class NotAcceptable(ParseError):
    """The offer has no stream we can take (answer 488)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 488)


MAX_CLOCK_RATE = 10**6  # Hz; RFC 3551 rates are 8000-90000


def number(text: str, limit: int) -> int | None:
    """`text` as a decimal number no larger than `limit`, else None (str.isdigit() takes '²', int() does not)."""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(limit)):
        return None
    value = int(text)
    return value if value <= limit else None


def payload_type(fmt: str) -> int | None:
    """An m= format as an RTP payload type (7 bits, RFC 3550 §5.1), else None."""
    return number(fmt, 127)


@dataclass
class Media:
    """One m= section."""

    kind: str
    port: int
    proto: str
    formats: list[str]
    connection: str | None = None
    attributes: list[tuple[str, str]] = field(default_factory=list)

    def attr(self, name: str) -> list[str]:
        return [v for n, v in self.attributes if n == name]

    def rtpmap(self) -> dict[int, tuple[str, int]]:
        """PT -> (lower-case encoding, clock rate), static PTs filled in (RFC 3551)."""
        out = {pt: STATIC[pt] for pt in map(payload_type, self.formats) if pt in STATIC}
        for value in self.attr("rtpmap"):
            fmt, _, enc = value.partition(" ")
            name, _, rate = enc.strip().partition("/")
            pt, clock = payload_type(fmt), number(rate.split("/")[0], MAX_CLOCK_RATE)
            if pt is not None and clock is not None:
                out[pt] = (name.lower(), clock)
        return out


@dataclass
class SessionDescription:
    """The parts of an SDP offer the answer depends on."""

    origin: str = ""
    connection: str | None = None
    attributes: list[tuple[str, str]] = field(default_factory=list)
    media: list[Media] = field(default_factory=list)

    @classmethod
    def parse(cls, data: bytes) -> SessionDescription:
        """Raises ParseError (400) when the body is not SDP."""
        if len(data) > MAX_SDP:
            raise ParseError(f"SDP of {len(data)} bytes", 400)
        sdp = cls()
        text = data.decode("utf-8", "replace")
        for raw in text.splitlines():
            line = raw.strip()
            if not line:
                continue
            if len(line) < 2 or line[1] != "=":
                raise ParseError(f"bad SDP line {line[:40]!r}", 400)
            sdp._line(line[0], line[2:])
        if not sdp.origin and not sdp.media:
            raise ParseError("SDP without o= or m=", 400)
        return sdp

    def _line(self, kind: str, value: str) -> None:
        target = self.media[-1] if self.media else None
        if kind == "o":
            self.origin = value
        elif kind == "c":
            parts = value.split()
            address = parts[2].split("/")[0] if len(parts) >= 3 else None
            if target:
                target.connection = address
            else:
                self.connection = address
        elif kind == "m":
            parts = value.split()
            port = number(parts[1].split("/")[0], 65535) if len(parts) >= 4 else None
            if port is None:
                raise ParseError(f"bad m= line {value[:40]!r}", 400)
            self.media.append(Media(parts[0].lower(), port, parts[2], parts[3:]))
        elif kind == "a":
            name, _, val = value.partition(":")
            (target.attributes if target else self.attributes).append((name.strip().lower(), val.strip()))

    def direction(self, media: Media) -> str:
        for name, _ in media.attributes + self.attributes:
            if name in DIRECTIONS:
                return name
        return "sendrecv"


@dataclass(frozen=True)
class Negotiated:
    """The outcome of an offer: the stream we took and where its media goes."""

    index: int  # which m= line carries our audio
    codec: Codec
    payload_type: int
    dtmf_payload_type: int | None
    remote: Address | None  # None while on hold with c=0.0.0.0
    direction: str  # the offer's direction
    shape: tuple[tuple[str, str, str], ...]  # (kind, proto, first format) of every offered m= line

    @property
    def sending(self) -> bool:
        """Whether we send RTP: the peer receives (sendrecv/recvonly) at a real address."""
        return self.remote is not None and self.direction in ("sendrecv", "recvonly")

    @property
    def answer_direction(self) -> str:
        return ANSWER_DIRECTION[self.direction]


def negotiate(offer: SessionDescription) -> Negotiated:
    """Take the first RTP/AVP audio stream with PCMU or PCMA, in the offer's order of preference.

    Raises:
        NotAcceptable: no such stream (G.729-only, SRTP-only, no audio).
    """
    for index, media in enumerate(offer.media):
        if media.kind != "audio" or media.port == 0 or media.proto.upper() != "RTP/AVP":
            continue
        rtpmap = media.rtpmap()
        for fmt in media.formats:
            pt = payload_type(fmt)
            if pt is None or rtpmap.get(pt) not in (("pcmu", 8000), ("pcma", 8000)):
                continue
            codec = Codec.PCMU if rtpmap[pt][0] == "pcmu" else Codec.PCMA
            dtmf = next((p for p, enc in rtpmap.items() if enc == ("telephone-event", 8000)
                         and str(p) in media.formats), None)
            return Negotiated(index, codec, pt, dtmf, _remote(offer, media), offer.direction(media),
                              _shape(offer))
    raise NotAcceptable("no PCMU or PCMA RTP/AVP audio stream in the offer")


def _remote(offer: SessionDescription, media: Media) -> Address | None:
    host = media.connection or offer.connection
    if not host or host in ("0.0.0.0", "::"):
        return None  # RFC 2543 hold
    try:
        ipaddress.ip_address(host)
    except ValueError:  # RFC 4566 allows a name, but resolving it would block the 20 ms sender on DNS
        raise NotAcceptable(f"connection address {host[:64]!r} is not an IP address") from None
    return host, media.port


def _shape(offer: SessionDescription) -> tuple[tuple[str, str, str], ...]:
    return tuple((m.kind, m.proto, m.formats[0] if m.formats else "0") for m in offer.media)


def default_offer() -> Negotiated:
    """What we offer when an INVITE came without SDP (delayed offer): PCMU, PCMA and telephone-event 101."""
    return Negotiated(0, Codec.PCMU, 0, 101, None, "sendrecv", (("audio", "RTP/AVP", "0"),))


def build(neg: Negotiated, local: Address, session_id: int, version: int, offer: bool = False) -> bytes:
    """Our SDP: the answer to `neg` (same m= lines, rejected ones at port 0), or an offer when `offer`."""
    host, port = local
    family = "IP6" if ":" in host else "IP4"
    lines = ["v=0", f"o=sip-to-ai {session_id} {version} IN {family} {host}", "s=sip-to-ai",
             f"c=IN {family} {host}", "t=0 0"]
    for index, (kind, proto, first) in enumerate(neg.shape):
        if index != neg.index:
            lines.append(f"m={kind} 0 {proto} {first}")
            continue
        if offer:
            lines += _offer_audio(port)
            continue
        fmts = [str(neg.payload_type)] + ([str(neg.dtmf_payload_type)] if neg.dtmf_payload_type is not None else [])
        lines.append(f"m=audio {port} RTP/AVP {' '.join(fmts)}")
        lines.append(f"a=rtpmap:{neg.payload_type} {neg.codec.name}/8000")
        if neg.dtmf_payload_type is not None:
            lines += [f"a=rtpmap:{neg.dtmf_payload_type} telephone-event/8000",
                      f"a=fmtp:{neg.dtmf_payload_type} {DTMF_EVENTS}"]
        lines += ["a=ptime:20", f"a={neg.answer_direction}"]
    return ("\r\n".join(lines) + "\r\n").encode()


def _offer_audio(port: int) -> list[str]:
    return [f"m=audio {port} RTP/AVP 0 8 101", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
            "a=rtpmap:101 telephone-event/8000", f"a=fmtp:101 {DTMF_EVENTS}", "a=ptime:20", "a=sendrecv"]
