"""Property-based fuzz cases of every parser: one invariant each, and the strategies that feed them (issue 16).

Shared by tests/test_fuzz.py (a bounded number of examples in CI) and `python -m bridge.bench fuzz` (100,000 and
more per parser). Needs `hypothesis`, a test extra: the bench imports this module only when asked to fuzz.

The invariant, as h11's fuzzer states its own: whatever bytes a peer sends, the parser either parses them into
values within their wire ranges, or raises that module's own error type (which its caller counts and drops);
never any other exception, never a hang (a deadline per example), never memory beyond a bound (tracemalloc, when
tracing: the parser's peak allocation is at most MEMORY_FACTOR times its input plus MEMORY_SLACK).

The strategies build a valid message first, then corrupt it (truncate it, duplicate or split lines, put huge
values, wrong encodings and out-of-range numbers in), so that examples get past the first check into deep code.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import re
import tracemalloc
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

from bridge import config
from bridge.errors import ParseError, RtpParseError
from bridge.media import CallInfo, Codec
from bridge.pbx.ari import models as ari
from bridge.pbx.audiosocket import protocol as audiosocket
from bridge.pbx.esl import protocol as esl
from bridge.pbx.websocket import protocol as chan_websocket
from bridge.rtp.packet import DTMF_KEYS, RtpPacket, TelephoneEvent
from bridge.rtp.session import Dtmf, RtpReceiver
from bridge.sip import grammar as g
from bridge.sip import message as sip
from bridge.sip import sdp
from bridge.sip.uas import Uas, UasConfig
from bridge.vendors import base, ws
from bridge.vendors.deepgram import DeepgramAgent
from bridge.vendors.gemini import GeminiAgent
from bridge.vendors.openai import OpenAIAgent

MEMORY_FACTOR = 64  # peak bytes a parser may allocate per input byte: copies, splits, decoded text, objects
MEMORY_SLACK = 512 * 1024  # plus this much whatever the input: interpreter and regex caches, small objects


class MemoryBoundExceeded(AssertionError):
    """A parser allocated more than the bound for its input."""


@contextlib.contextmanager
def bounded(size: int) -> Iterator[None]:
    """Check the memory bound around one parse: tracemalloc traces the parse alone (not the example's making)."""
    if tracemalloc.is_tracing():  # someone else is tracing: leave their traces alone, check nothing
        yield
        return
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    if peak > MEMORY_FACTOR * size + MEMORY_SLACK:
        raise MemoryBoundExceeded(f"{peak} bytes allocated for {size} bytes of input")


# ---- corruption -----------------------------------------------------------------------------------------------

# Numbers a peer may write where a number belongs: out of every range, unicode digits int() refuses, floats, hex.
NUMBERS = ("-1", "0", "65535", "65536", "99999", "2147483648", "4294967296", "18446744073709551616", "9" * 5000,
           "²", "١٢", "𝟗", "1e9", "0x1F", "+1", "1_000", "1.5", "NaN", "Infinity", "")
HUGE_CHARS = ("a", " ", '"', "<", ">", ";", ",", "%", "9", "\\", ":", "=", "/", "\t", "\x00", "é", "\u2028", "{")
HUGE_SIZES = (255, 1024, 8191, 8193, 16385, 70_000)
BAD_BYTES = (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x00", b"\r", b"\n", b"\r\n", b"\r\n\r\n", b"\n\n", b"%", b":")

huge = st.builds(lambda c, n: c * n, st.sampled_from(HUGE_CHARS), st.sampled_from(HUGE_SIZES))
weird_number = st.one_of(st.sampled_from(NUMBERS), st.integers().map(str))
junk = st.one_of(st.text(max_size=24), huge, weird_number)
TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
tokens = st.text(TOKEN_CHARS, min_size=1, max_size=12)
ports = st.one_of(st.integers(1, 65535), st.sampled_from((0, 65535, 65536, 99999)))  # some out of range
_DIGITS = re.compile(r"\d+")


@st.composite
def corrupt_lines(draw: st.DrawFn, lines: list[str]) -> list[str]:
    """Up to three line edits: duplicate, drop, split or fold a line; put a huge value, junk or a bad number in."""
    lines = list(lines)
    for _ in range(draw(st.integers(0, 3))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        line = lines[i]
        pos = draw(st.integers(0, len(line)))
        match draw(st.sampled_from(("dup", "drop", "split", "fold", "huge", "junk", "number", "number"))):
            case "dup":
                lines.insert(i, line)
            case "drop":
                del lines[i]
            case "split":
                lines[i : i + 1] = [line[:pos], line[pos:]]
            case "fold":
                lines[i : i + 1] = [line[:pos], draw(st.sampled_from((" ", "\t", "  "))) + line[pos:]]
            case "huge":
                lines[i] = line[:pos] + draw(huge) + line[pos:]
            case "junk":
                lines[i] = line[:pos] + draw(junk) + line[pos:]
            case "number":
                runs = list(_DIGITS.finditer(line))
                if runs:
                    m = runs[draw(st.integers(0, len(runs) - 1))]
                    lines[i] = line[: m.start()] + draw(weird_number) + line[m.end() :]
    return lines


@st.composite
def corrupt_bytes(draw: st.DrawFn, data: bytes, head: int = 16) -> bytes:
    """Up to two byte edits: truncate, flip a bit (often in the first `head` bytes), insert bad bytes, re-encode."""
    for _ in range(draw(st.integers(0, 2))):
        pos = draw(st.integers(0, len(data)))
        match draw(st.sampled_from(("truncate", "flip", "flip_head", "insert", "encoding"))):
            case "truncate":
                data = data[:pos]
            case "flip" | "flip_head" as op if data:
                near = min(head, len(data)) - 1
                i = min(pos, len(data) - 1) if op == "flip" or near < 0 else draw(st.integers(0, near))
                data = data[:i] + bytes([data[i] ^ 1 << draw(st.integers(0, 7))]) + data[i + 1 :]
            case "insert":
                data = data[:pos] + draw(st.one_of(st.sampled_from(BAD_BYTES), st.binary(max_size=8))) + data[pos:]
            case "encoding":
                codec = draw(st.sampled_from(("utf-16", "utf-32", "latin-1", "cp500")))
                data = data.decode("utf-8", "replace").encode(codec, "replace")
    return data


def _joined(lines: list[str], eol: str, tail: str = "") -> bytes:
    return (eol.join(lines) + tail).encode("utf-8", "surrogatepass")


# ---- SIP and SDP ----------------------------------------------------------------------------------------------

HOSTS = ("127.0.0.1", "10.0.0.7", "pbx.example.com", "[2001:db8::1]", "0.0.0.0", "::")
METHODS = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "UPDATE", "INFO", "NOTIFY", "REGISTER", "PRACK", "MESSAGE")
EXTRA_HEADERS = ("Supported: timer, 100rel, replaces", "Require: timer", "Session-Expires: 1800;refresher=uac",
                 "Min-SE: 90", "Route: <sip:proxy.example.com;lr>", "Record-Route: <sip:10.0.0.1;lr;ftag=x>",
                 "Allow: INVITE, ACK, BYE, CANCEL, OPTIONS", "X-Account: 42", "P-Asserted-Identity: <tel:+15551234>",
                 "Timestamp: 54.1", "Expires: 3600", "User-Agent: fuzz/1.0", "Retry-After: 30")
COMPACT_OF = {"Via": "v", "From": "f", "To": "t", "Call-ID": "i", "Contact": "m", "Content-Length": "l",
              "Content-Type": "c"}


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def sdp_bodies(draw: st.DrawFn) -> bytes:
    """An SDP offer as phones send them (one or two m= lines, rtpmaps, a direction), then corrupted."""
    host = draw(st.sampled_from(("127.0.0.1", "10.0.0.7", "0.0.0.0", "::1", "pbx.example.com")))
    family = "IP6" if ":" in host else "IP4"
    pts = draw(st.lists(st.sampled_from((0, 8, 18, 9, 3, 101, 96, 13, 128, 1000)), min_size=1, max_size=5,
                        unique=True))
    names = {0: "PCMU/8000", 8: "PCMA/8000", 18: "G729/8000", 9: "G722/8000", 3: "GSM/8000",
             101: "telephone-event/8000", 96: "opus/48000/2", 13: "CN/8000", 128: "PCMU/8000", 1000: "PCMA/8000"}
    audio = [f"m=audio {draw(ports)} {draw(st.sampled_from(('RTP/AVP', 'RTP/SAVP', 'RTP/AVPF')))} "
             + " ".join(map(str, pts))]
    audio += [f"a=rtpmap:{pt} {names[pt]}" for pt in pts if draw(st.booleans())]
    audio += ["a=fmtp:101 0-16", "a=ptime:20"][: draw(st.integers(0, 2))]
    audio += draw(st.lists(st.sampled_from([f"a={d}" for d in sdp.DIRECTIONS] + [f"c=IN {family} {host}"]),
                           max_size=2))
    video = ["m=video 5002 RTP/AVP 96", "a=rtpmap:96 H264/90000"] if draw(st.booleans()) else []
    lines = [
        "v=0", f"o=- {draw(st.integers(0, 2**63))} {draw(st.integers(0, 2**32))} IN {family} {host}", "s=-",
        f"c=IN {family} {host}", "t=0 0", *(video + audio if draw(st.booleans()) else audio + video),
    ]
    eol = draw(st.sampled_from(("\r\n", "\n")))
    return draw(corrupt_bytes(_joined(draw(corrupt_lines(lines)), eol, eol)))


@st.composite
def sip_messages(draw: st.DrawFn) -> tuple[bytes, bool]:
    """(bytes, arrived on a stream): a request or response with the headers real PBXs send, then corrupted."""
    method = draw(st.sampled_from(METHODS))
    host, user, tag = draw(st.sampled_from(HOSTS)), draw(tokens), draw(tokens)
    port = draw(ports)
    body = draw(st.one_of(st.just(b""), sdp_bodies()))
    if draw(st.booleans()):
        start = f"SIP/2.0 {draw(st.integers(100, 699))} {draw(st.sampled_from(('OK', 'Ringing', 'Busy Here', '')))}"
    else:
        suffix = draw(st.sampled_from(("", ";transport=tcp", ":5070", "?Subject=x")))
        start = f"{method} sip:{user}@{host}{suffix} SIP/2.0"
    headers = [
        f"Via: SIP/2.0/{draw(st.sampled_from(('UDP', 'TCP', 'TLS')))} {host}:{port};branch=z9hG4bK{draw(tokens)}"
        + draw(st.sampled_from((";rport", "", ";received=10.0.0.1", ";rport=5060"))),
        "Max-Forwards: 70",
        f"From: {_quoted(draw(st.text(max_size=12)))} <sip:{user}@{host}>;tag={tag}",
        f"To: <sip:{draw(tokens)}@{host}>" + draw(st.sampled_from(("", f";tag={draw(tokens)}"))),
        f"Call-ID: {draw(tokens)}@{host}",
        f"CSeq: {draw(st.integers(0, 2**31 - 1))} {method}",
        f"Contact: {draw(st.sampled_from((f'<sip:{user}@{host}:{port}>', '*', f'sip:{user}@{host}')))}",
        *draw(st.lists(st.sampled_from(EXTRA_HEADERS), max_size=3)),
        *(["Content-Type: application/sdp"] if body else []),
        f"Content-Length: {len(body)}",
    ]
    if draw(st.booleans()):
        headers = [COMPACT_OF.get(h.partition(":")[0], h.partition(":")[0]) + ":" + h.partition(":")[2]
                   for h in headers]
    headers = draw(st.permutations(headers)) if draw(st.booleans()) else headers
    eol = draw(st.sampled_from(("\r\n", "\n")))
    data = _joined(draw(corrupt_lines([start, *headers])), eol, eol + eol) + body
    return draw(corrupt_bytes(data)), draw(st.booleans())


def check_sip_message(case: tuple[bytes, bool]) -> None:
    """Invariant: message.parse() returns a Request or Response whose CSeq and Via ports are within range (and a
    request's Contact ports), or raises SipParseError; nothing else, within the memory bound."""
    data, stream = case
    try:
        with bounded(len(data)):
            msg = sip.parse(data, stream=stream)
    except sip.SipParseError:
        return
    number, _ = msg.cseq()
    assert 0 <= number < 2**31
    for via in msg.vias():
        assert via.port is None or 0 < via.port <= 65535, via
    for value in msg.values("contact") if isinstance(msg, sip.Request) else ():  # where BYE and re-INVITEs go
        uri = "" if value == "*" else sip.NameAddr.parse(value).uri
        assert not g.SIP_URI.match(uri) or g.uri_hostport(uri) is not None, uri
    bytes(msg)  # what the UAS sends back is built from these headers


@st.composite
def sip_streams(draw: st.DrawFn) -> list[bytes]:
    """What a SIP/TCP peer writes: keep-alive CRLFs and messages back to back, cut into random chunks."""
    data = b"".join(draw(st.sampled_from((b"\r\n", b"\r\n\r\n", b""))) + draw(sip_messages())[0]
                    for _ in range(draw(st.integers(1, 3))))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def check_sip_stream(chunks: list[bytes]) -> None:
    """Invariant: next_stream_message() takes whole messages off a TCP buffer (each no longer than the buffer
    held) or raises SipParseError (the connection is closed); it never takes more than what was received."""
    buffer = bytearray()
    received = 0
    for chunk in chunks:
        buffer += chunk
        received += len(chunk)
        try:
            with bounded(len(buffer)):
                while (message := sip.next_stream_message(buffer)) is not None:
                    received -= len(message)
        except sip.SipParseError:
            return
        assert len(buffer) <= received


def check_sip_uas(case: tuple[bytes, bool]) -> None:
    """Invariant: Uas.receive() (parse, then the transaction and dialog layers) never raises, and every datagram
    it queues goes to a port within 1-65535 (asyncio's sendto raises on any other, losing the batch)."""
    data, stream = case
    uas = Uas(UasConfig("127.0.0.1", 5060, "TCP" if stream else "UDP"))
    with bounded(len(data)):
        uas.receive(data, ("127.0.0.1", 5062), 0.0, reliable=stream)
    uas.handle_timer(64.0)
    for _, (host, port) in uas.datagrams():
        assert isinstance(host, str) and 0 < port <= 65535, (host, port)


def check_sdp(data: bytes) -> None:
    """Invariant: SessionDescription.parse() and negotiate() give an answer whose ports are within 0-65535 and
    payload types within 0-127, or raise ParseError (NotAcceptable, a 488, is one); build() of an answer works."""
    try:
        with bounded(len(data)):
            neg = sdp.negotiate(sdp.SessionDescription.parse(data))
    except ParseError:
        return
    assert 0 <= neg.payload_type <= 127 and (neg.dtmf_payload_type is None or 0 <= neg.dtmf_payload_type <= 127)
    assert neg.remote is None or 0 <= neg.remote[1] <= 65535, neg.remote
    sdp.build(neg, ("127.0.0.1", 40000), 1, 1)


# ---- RTP, RTCP, RFC 4733 --------------------------------------------------------------------------------------

u32 = st.integers(0, 2**32 - 1)
ANY_PT = st.integers(0, 127)


@st.composite
def rtp_packets(draw: st.DrawFn, payload_type: st.SearchStrategy[int] = ANY_PT) -> bytes:
    """An RTP packet with CSRCs, an extension and padding as RFC 3550 allows them, then corrupted."""
    ext = draw(st.one_of(st.none(), st.tuples(st.integers(0, 65535), st.binary(max_size=4).map(lambda b: b * 4))))
    packet = RtpPacket(draw(payload_type), draw(st.integers(0, 65535)), draw(u32), draw(u32),
                       draw(st.binary(max_size=320)), draw(st.booleans()), tuple(draw(st.lists(u32, max_size=15))),
                       ext, draw(st.sampled_from((0, 0, 1, 4, 255))))
    return draw(corrupt_bytes(packet.serialize()))


@st.composite
def telephone_events(draw: st.DrawFn) -> bytes:
    """An RFC 4733 payload (any event code, volume, duration), then corrupted."""
    event = TelephoneEvent(draw(st.integers(0, 255)), draw(st.booleans()), draw(st.integers(0, 63)),
                           draw(st.integers(0, 65535)))
    return draw(corrupt_bytes(event.serialize() + draw(st.binary(max_size=8))))


@st.composite
def rtcp_packets(draw: st.DrawFn) -> bytes:
    """A compound RTCP packet (SR or RR, then SDES/BYE/APP, RFC 3550 §6) as rtcp-mux puts it on the RTP port."""
    def packet(pt: int, count: int, body: bytes) -> bytes:
        return bytes([0x80 | count, pt]) + (len(body) // 4).to_bytes(2, "big") + body

    blocks = draw(st.lists(st.binary(min_size=24, max_size=24), max_size=3))
    ssrc = draw(u32).to_bytes(4, "big")
    first = (packet(200, len(blocks), ssrc + draw(st.binary(min_size=20, max_size=20)) + b"".join(blocks))
             if draw(st.booleans()) else packet(201, len(blocks), ssrc + b"".join(blocks)))
    cname = draw(st.binary(max_size=20))
    sdes = ssrc + bytes([1, len(cname)]) + cname
    more = {"sdes": packet(202, 1, sdes + bytes(-len(sdes) % 4)), "bye": packet(203, 1, ssrc),
            "app": packet(204, 0, ssrc + b"name" + draw(st.binary(max_size=2).map(lambda b: b * 4)))}
    rest = draw(st.lists(st.sampled_from(sorted(more)), max_size=3))
    return draw(corrupt_bytes(first + b"".join(more[k] for k in rest)))


def check_rtp(data: bytes) -> None:
    """Invariant: RtpPacket.parse() gives fields within their bit widths and a payload inside the datagram, or
    raises RtpParseError."""
    try:
        with bounded(len(data)):
            packet = RtpPacket.parse(data)
    except RtpParseError:
        return
    assert 0 <= packet.payload_type <= 127 and 0 <= packet.sequence <= 65535 and len(packet.csrc) <= 15
    assert len(packet.payload) + 12 + 4 * len(packet.csrc) + packet.padding <= len(data)


def check_telephone_event(data: bytes) -> None:
    """Invariant: TelephoneEvent.parse() gives an event 0-255, volume 0-63, and a key that is a DTMF key or None,
    or raises RtpParseError."""
    try:
        event = TelephoneEvent.parse(data)
    except RtpParseError:
        return
    assert 0 <= event.event <= 255 and 0 <= event.volume <= 63 and 0 <= event.duration <= 65535
    assert event.key is None or event.key in DTMF_KEYS


SIGNALLED = ("127.0.0.1", 40000)
datagrams = st.lists(st.tuples(st.one_of(rtp_packets(st.sampled_from((0, 8, 13, 101, 72, 73))),
                                         rtp_packets(), rtcp_packets(),
                                         telephone_events().map(lambda p: RtpPacket(101, 1, 7, 9, p).serialize())),
                               st.sampled_from((SIGNALLED, SIGNALLED, ("127.0.0.1", 40001), ("10.9.9.9", 40000)))),
                     min_size=1, max_size=8)


def check_rtp_receiver(case: list[tuple[bytes, tuple[str, int]]]) -> None:
    """Invariant: RtpReceiver.receive() never raises on RTP, RTCP (rtcp-mux) or garbage from any source, and counts
    every datagram once: received + malformed + foreign == datagrams; a DTMF result is a DTMF key."""
    receiver = RtpReceiver(SIGNALLED, 0, 101)
    for data, source in case:
        media = receiver.receive(data, source)
        assert not isinstance(media, Dtmf) or media.key in DTMF_KEYS
    stats = receiver.stats
    assert stats.received + stats.malformed + stats.foreign == len(case), stats


# ---- FreeSWITCH ESL -------------------------------------------------------------------------------------------

EVENT_NAMES = ("CHANNEL_ANSWER", "CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE", "CHANNEL_EXECUTE_COMPLETE", "DTMF",
               "BACKGROUND_JOB", "CHANNEL_DATA", "CUSTOM", "HEARTBEAT")


@st.composite
def esl_event_bodies(draw: st.DrawFn) -> bytes:
    """A serialised event (`switch_event_serialize`: URL-encoded values, `_undef_`, an optional body)."""
    uid = str(uuidlib.UUID(int=draw(st.integers(0, 2**128 - 1))))
    body = draw(st.one_of(st.just(b""), st.binary(max_size=64), st.just(b"+OK " + uid.encode() + b"\n")))
    pairs = [("Event-Name", draw(st.sampled_from(EVENT_NAMES))), ("Core-UUID", uid), ("Unique-ID", uid),
             ("Channel-Name", f"sofia/internal/{draw(tokens)}@10.0.0.7"), ("DTMF-Digit", draw(st.sampled_from("0#*A"))),
             ("Application-UUID", uid), ("Hangup-Cause", "NORMAL_CLEARING"), ("variable_sip_h_X-Account", "_undef_")]
    pairs += [(f"variable_{draw(tokens)}", draw(st.text(max_size=16))) for _ in range(draw(st.integers(0, 3)))]
    lines = [f"{name}: {quote(value, safe='')}" for name, value in pairs]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    eol = draw(st.sampled_from(("\n", "\r\n")))
    return draw(corrupt_bytes(_joined(draw(corrupt_lines(lines)), eol, eol + eol) + body))


@st.composite
def esl_streams(draw: st.DrawFn) -> list[bytes]:
    """What FreeSWITCH writes on one socket (replies, api responses, events, notices), cut into random chunks."""
    messages: list[bytes] = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(("reply", "api", "event", "event", "auth", "disconnect")))
        body = {"api": draw(st.sampled_from((b"+OK\n", b"-ERR no such channel\n"))), "event": draw(esl_event_bodies()),
                "disconnect": b"Disconnected, goodbye.\n"}.get(kind, b"")
        ctype = {"reply": esl.CONTENT_COMMAND_REPLY, "api": esl.CONTENT_API_RESPONSE, "event": esl.CONTENT_EVENT_PLAIN,
                 "auth": esl.CONTENT_AUTH_REQUEST, "disconnect": esl.CONTENT_DISCONNECT}[kind]
        lines = [f"Content-Type: {ctype}"] + (["Reply-Text: +OK accepted"] if kind == "reply" else [])
        if body:
            lines.append(f"Content-Length: {len(body)}")
        messages.append(_joined(draw(corrupt_lines(lines)), "\n", "\n\n") + body)
    data = draw(corrupt_bytes(b"".join(messages)))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def check_esl_stream(chunks: list[bytes]) -> None:
    """Invariant: EslParser.feed() returns messages whose events parse or raise EslProtocolError, or raises
    EslProtocolError (then the stream stays broken); it never holds more than one header block or body."""
    parser = esl.EslParser()
    for chunk in chunks:
        try:
            with bounded(len(parser._buf) + len(chunk)):  # the parse works on all it holds, not this chunk alone
                messages = parser.feed(chunk)
        except esl.EslProtocolError:
            return
        assert len(parser._buf) <= max(esl.MAX_HEADER_BYTES, esl.MAX_BODY_BYTES)
        for message in messages:
            _ = message.reply_text, message.ok
            with contextlib.suppress(esl.EslProtocolError):
                _read_event(message.event())


def check_esl_event(data: bytes) -> None:
    """Invariant: parse_event() gives decoded headers and a body no longer than announced, or raises
    EslProtocolError."""
    try:
        with bounded(len(data)):
            event = esl.parse_event(data)
    except esl.EslProtocolError:
        return
    _read_event(event)


def _read_event(event: esl.EslEvent | None) -> None:
    if event is not None:  # what the ESL ingress reads of an event
        assert isinstance(event.name, str) and isinstance(event.uuid, str) and isinstance(event.body, bytes)
        _ = dict(event.headers)


# ---- JSON messages: ARI events, chan_websocket, the vendors ---------------------------------------------------

_BIG = "__fuzz_big_number__"
json_junk = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12), huge,
                      st.sampled_from((float("inf"), float("-inf"), float("nan"), -1, 2**63, 1e300, "", "²")),
                      st.just(_BIG), st.lists(st.integers(), max_size=3), st.dictionaries(tokens, st.integers(),
                                                                                          max_size=2))


def _containers(value: Any, path: tuple = ()) -> Iterator[tuple]:
    if isinstance(value, dict | list):
        yield path
        for key, child in value.items() if isinstance(value, dict) else enumerate(value):
            yield from _containers(child, (*path, key))


@st.composite
def corrupt_json(draw: st.DrawFn, obj: Any) -> str:
    """Up to three edits of the object (drop a key, a value of another type, a huge number), then of its text:
    deep nesting, truncation, bad encodings (the result is a str; bytes become str via latin-1 where sent)."""
    obj = json.loads(json.dumps(obj))
    for _ in range(draw(st.integers(0, 3))):
        paths = list(_containers(obj))
        target = obj
        for key in draw(st.sampled_from(paths)):
            target = target[key]
        keys = list(target) if isinstance(target, dict) else list(range(len(target)))
        if not keys:
            continue
        key = draw(st.sampled_from(keys))
        if isinstance(target, dict) and draw(st.booleans()):
            del target[key]
        else:
            target[key] = draw(json_junk)
    text = json.dumps(obj).replace(f'"{_BIG}"', "9" * 5000)
    depth = draw(st.sampled_from((0, 0, 0, 3, 2000, 100_000)))
    if depth:
        text = "[" * depth + text + "]" * depth
    data = draw(corrupt_bytes(text.encode(), head=0))
    return data.decode("utf-8", "replace")


def _channel(draw: st.DrawFn) -> dict[str, Any]:
    return {"id": f"{draw(st.integers(0, 2**31))}.{draw(st.integers(0, 99))}", "name": f"PJSIP/{draw(tokens)}-0001",
            "state": draw(st.sampled_from(("Up", "Ring", "Down"))), "protocol_id": draw(tokens),
            "caller": {"name": draw(st.text(max_size=10)), "number": draw(tokens)},
            "dialplan": {"context": "from-internal", "exten": draw(tokens), "priority": 1, "app_name": "Stasis",
                         "app_data": "sip-to-ai"},
            "channelvars": {"X_ACCOUNT": draw(st.text(max_size=8))}, "language": "en"}


@st.composite
def ari_events(draw: st.DrawFn) -> str:
    """An events.json event as Asterisk sends it on the events websocket, then corrupted."""
    kind = draw(st.sampled_from(("StasisStart", "StasisEnd", "ChannelHangupRequest", "ChannelDestroyed",
                                 "ChannelDtmfReceived", "ApplicationReplaced", "ChannelVarset", "Dial")))
    event: dict[str, Any] = {"type": kind, "application": "sip-to-ai", "timestamp": "2026-12-04T05:00:00.000+0000",
                             "channel": _channel(draw)}
    event.update({"StasisStart": {"args": draw(st.lists(st.text(max_size=8), max_size=3))},
                  "ChannelDestroyed": {"cause": draw(st.integers(0, 127)), "cause_txt": "Normal Clearing"},
                  "ChannelDtmfReceived": {"digit": draw(st.sampled_from("0123456789*#")),
                                          "duration_ms": draw(st.integers(0, 5000))}}.get(kind, {}))
    return draw(corrupt_json(event))


def check_ari_event(text: str) -> None:
    """Invariant: models.parse_event_text() (what the events websocket reader calls) gives a typed event, or raises
    ParseError: bad JSON, deep nesting and huge numbers included."""
    try:
        with bounded(len(text)):
            event = ari.parse_event_text(text)
    except ParseError:
        return
    if isinstance(event, ari.ChannelDestroyed | ari.ChannelDtmfReceived):
        assert isinstance(event.channel.id, str)


@st.composite
def chan_websocket_events(draw: st.DrawFn) -> str:
    """A chan_websocket TEXT event, plain (`NAME k:v ...`) or JSON, then corrupted."""
    fields = {"connection_id": draw(tokens), "channel": f"WebSocket/{draw(tokens)}", "channel_id": draw(tokens),
              "format": draw(st.sampled_from(("ulaw", "alaw", "slin16"))), "optimal_frame_size": 160, "ptime": 20}
    name = draw(st.sampled_from(("MEDIA_START", "DTMF_END", "MEDIA_XOFF", "MEDIA_XON", "STATUS", "ERROR",
                                 "MEDIA_MARK_PROCESSED", "QUEUE_DRAINED")))
    fields = fields if name == "MEDIA_START" else {"digit": "5"} if name == "DTMF_END" else {"queue_length": 3}
    if draw(st.booleans()):
        return draw(corrupt_json({"event": name, **fields,
                                  **({"channel_variables": {"A": "b"}} if name == "MEDIA_START" else {})}))
    line = " ".join([name, *(f"{k}:{v}" for k, v in fields.items())])
    return draw(corrupt_bytes(line.encode())).decode("utf-8", "replace")


def check_chan_websocket(text: str) -> None:
    """Invariant: parse_event() gives an event (MEDIA_START with integer frame size and ptime), or raises
    WebSocketProtocolError."""
    try:
        with bounded(len(text)):
            event = chan_websocket.parse_event(text)
    except chan_websocket.WebSocketProtocolError:
        return
    if isinstance(event, chan_websocket.MediaStart):  # the server spreads `variables` into the call's metadata
        assert isinstance(event.optimal_frame_size, int) and isinstance(event.ptime, int)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in event.variables.items())


@st.composite
def audiosocket_streams(draw: st.DrawFn) -> list[bytes]:
    """What Asterisk writes on an AudioSocket connection (UUID, audio of every kind, DTMF, hang-up, error, unknown
    kinds), cut into random chunks."""
    data = [audiosocket.message(audiosocket.Kind.UUID, draw(st.binary(min_size=16, max_size=16)))]
    kinds = st.one_of(st.sampled_from(list(audiosocket.Kind)), st.integers(0, 255))
    for _ in range(draw(st.integers(0, 5))):
        data.append(audiosocket.message(draw(kinds), draw(st.one_of(st.binary(max_size=64), st.just(b"5"),
                                                                    st.just(bytes(320))))))
    raw = draw(corrupt_bytes(b"".join(data), head=3))
    cuts = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=6)))
    return [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]


def check_audiosocket(chunks: list[bytes]) -> None:
    """Invariant: AudioSocketParser.feed() gives messages (audio of whole samples, DTMF keys), or raises
    AudioSocketError; it never holds more than one message (3 + 65535 bytes)."""
    parser = audiosocket.AudioSocketParser()
    for chunk in chunks:
        try:
            with bounded(len(parser._buf) + len(chunk)):  # the parse works on all it holds, not this chunk alone
                messages = parser.feed(chunk)
        except audiosocket.AudioSocketError:
            return
        assert len(parser._buf) < audiosocket.HEADER.size + audiosocket.MAX_PAYLOAD
        for m in messages:
            assert not isinstance(m, audiosocket.Audio) or (m.pcm and len(m.pcm) % 2 == 0)
            assert not isinstance(m, audiosocket.Digit) or m.key in audiosocket.DTMF_KEYS


# ---- vendor server messages -----------------------------------------------------------------------------------

ACTIONS = (*base.AgentEvent.__args__, ws.Send, ws.Ready, ws.VendorError, ws.Reconnect)
b64 = st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode())
tool_calls = st.fixed_dictionaries({"name": st.sampled_from(("end_call", "transfer_call", "lookup")),
                                    "arguments": st.sampled_from(('{"reason": "done"}', '{"destination": "100"}', "",
                                                                  "{", "[]"))})


@st.composite
def openai_messages(draw: st.DrawFn) -> str:
    """An OpenAI Realtime GA server event (vendors.md §1) or one of xAI's dialect, then corrupted."""
    item = draw(st.sampled_from(("item_1", "item_2")))
    call = draw(tool_calls)
    event = draw(st.sampled_from((
        {"type": "session.updated", "session": {}},
        {"type": "response.created", "response": {"id": "resp_1"}},
        {"type": "response.output_audio.delta", "item_id": item, "delta": draw(b64)},
        {"type": "response.output_audio_transcript.done", "transcript": draw(st.text(max_size=12))},
        {"type": "response.output_audio_transcript.delta", "item_id": item, "delta": draw(st.text(max_size=8))},
        {"type": "response.function_call_arguments.done", "call_id": "c1", **call},
        {"type": "conversation.created", "conversation": {"id": "conv_1"}},
        {"type": "conversation.item.input_audio_transcription.completed", "transcript": draw(st.text(max_size=12))},
        {"type": "input_audio_buffer.speech_started", "audio_start_ms": 100},
        {"type": "response.done", "response": {"id": "resp_1", "status": draw(st.sampled_from(("completed", "failed"))),
                                               "output": [{"type": "function_call", "call_id": "c1", **call}]}},
        {"type": "error", "error": {"type": "invalid_request_error", "code": "conversation_already_has_active_response",
                                    "message": "busy"}},
    )))
    return draw(corrupt_json(event))


@st.composite
def deepgram_messages(draw: st.DrawFn) -> str | bytes:
    """A Deepgram Voice Agent server message (vendors.md §4.3; binary frames are agent audio), then corrupted."""
    if draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=64))
    call = draw(tool_calls)
    event = draw(st.sampled_from((
        {"type": "Welcome", "request_id": "r"}, {"type": "SettingsApplied"}, {"type": "UserStartedSpeaking"},
        {"type": "AgentAudioDone"},
        {"type": "ConversationText", "role": draw(st.sampled_from(("user", "assistant", "x"))),
         "content": draw(st.text(max_size=12))},
        {"type": "FunctionCallRequest", "functions": [{"id": "f1", "client_side": True, **call}]},
        {"type": "FunctionCallCancelled", "functions": [{"id": "f1", "name": "end_call"}]},
        {"type": "Error", "code": "BAD", "description": "bad"}, {"type": "Warning", "code": "W", "description": "w"},
    )))
    return draw(corrupt_json(event))


@st.composite
def gemini_messages(draw: st.DrawFn) -> str | bytes:
    """A Gemini Live server message (vendors.md §4.2, text or binary frames alike), then corrupted."""
    call = draw(tool_calls)
    event = draw(st.sampled_from((
        {"setupComplete": {}},
        {"serverContent": {"modelTurn": {"parts": [{"inlineData": {"mimeType": "audio/pcm;rate=24000",
                                                                   "data": draw(b64)}}]},
                           "inputTranscription": {"text": draw(st.text(max_size=8))},
                           "outputTranscription": {"text": draw(st.text(max_size=8))},
                           "interrupted": draw(st.booleans()), "turnComplete": draw(st.booleans())}},
        {"toolCall": {"functionCalls": [{"id": "t1", "name": call["name"], "args": {"reason": "bye"}}]}},
        {"toolCallCancellation": {"ids": ["t1"]}},
        {"sessionResumptionUpdate": {"newHandle": draw(tokens), "resumable": draw(st.booleans())}},
        {"goAway": {"timeLeft": "10s"}},
    )))
    text = draw(corrupt_json(event))
    return text.encode() if draw(st.booleans()) else text


def _context(vendor: str) -> base.AgentContext:
    settings = dataclasses.replace(config.load(environ={}, dotenv=None), ai_vendor=vendor, openai_api_key="sk-fuzz",
                                   deepgram_api_key="dg-fuzz", gemini_api_key="gm-fuzz", xai_api_key="xai-fuzz")
    logger = logging.getLogger("bridge.fuzz")
    logger.propagate = False  # the vendors log their warnings: thousands of them here
    logger.addHandler(logging.NullHandler())
    log = logging.LoggerAdapter(logger, {})
    return base.AgentContext(CallInfo("fuzz", "sip"), Codec.PCMU, settings, lambda item: 40, log)


def _vendor_check(agent_class: type[ws.WsAgent], vendor: str) -> Callable[[list[str | bytes]], None]:
    ctx = _context(vendor)

    def check(messages: list[str | bytes]) -> None:
        agent = agent_class(ctx)
        for raw in messages:
            try:
                with bounded(len(raw)):
                    actions = ws.read_message(agent, raw)
            except ws.VendorMessageError:
                continue
            for action in actions:
                assert isinstance(action, ACTIONS), action
                assert not isinstance(action, ws.Send) or isinstance(action.message, str | bytes)

    check.__doc__ = (f"Invariant: ws.read_message() (what the runner calls) turns every {vendor} server message into "
                     "agent events and replies, or raises VendorMessageError (counted and dropped); a conversation "
                     "of such messages never raises anything else.")
    return check


check_openai = _vendor_check(OpenAIAgent, "openai")
check_grok = _vendor_check(OpenAIAgent, "grok")  # the Realtime protocol in xAI's dialect
check_deepgram = _vendor_check(DeepgramAgent, "deepgram")
check_gemini = _vendor_check(GeminiAgent, "gemini")


# ---- the table the bench and the tests share ------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    strategy: st.SearchStrategy[Any]
    check: Callable[[Any], None]


CASES = (
    Case("sip-message", sip_messages(), check_sip_message),
    Case("sip-uas", sip_messages(), check_sip_uas),
    Case("sip-tcp-framing", sip_streams(), check_sip_stream),
    Case("sdp", sdp_bodies(), check_sdp),
    Case("rtp", rtp_packets(), check_rtp),
    Case("rtp-rtcp-receiver", datagrams, check_rtp_receiver),
    Case("rfc4733", telephone_events(), check_telephone_event),
    Case("esl-stream", esl_streams(), check_esl_stream),
    Case("esl-event", esl_event_bodies(), check_esl_event),
    Case("ari-event", ari_events(), check_ari_event),
    Case("audiosocket", audiosocket_streams(), check_audiosocket),
    Case("chan-websocket", chan_websocket_events(), check_chan_websocket),
    Case("openai", st.lists(openai_messages(), min_size=1, max_size=6), check_openai),
    Case("grok", st.lists(openai_messages(), min_size=1, max_size=6), check_grok),
    Case("deepgram", st.lists(deepgram_messages(), min_size=1, max_size=6), check_deepgram),
    Case("gemini", st.lists(gemini_messages(), min_size=1, max_size=6), check_gemini),
)
