"""Every parser fuzzed (issue 16): the invariant of each test is stated at its top, checked by bridge/bench/fuzz_cases.

Common to all: whatever a peer sends, the parser parses it into values within their wire ranges, or raises its
module's own error type (which the caller counts and drops); never any other exception, never a hang (the
profile's deadline), never more memory than fuzz_cases.MEMORY_FACTOR x input + MEMORY_SLACK (tracemalloc).
The CI profile (tests/conftest.py) runs a bounded, derandomized number of examples (100); `python -m bridge.bench fuzz`
runs 100,000 and more per parser. Each @example is a bug the fuzzer found, kept as a regression.
"""

from __future__ import annotations

from hypothesis import example, given

from bridge.bench import fuzz_cases as fc

CASE = {c.name: c for c in fc.CASES}


def sip(*headers: str, start: str = "OPTIONS sip:a@127.0.0.1 SIP/2.0", method: str = "OPTIONS") -> bytes:
    lines = [start, "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1", "From: <sip:b@10.0.0.1>;tag=1",
             "To: <sip:a@127.0.0.1>", "Call-ID: 1@10.0.0.1", f"CSeq: 1 {method}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def sdp(*media: str) -> bytes:
    lines = ["v=0", "o=- 1 1 IN IP4 10.0.0.1", "s=-", "c=IN IP4 10.0.0.1", "t=0 0", *media]
    return ("\r\n".join(lines) + "\r\n").encode()


DEEP = "[" * 100_000 + "]" * 100_000  # json.loads: RecursionError
BIG = "9" * 5000  # int(): ValueError beyond 4,300 digits


@given(CASE["sip-message"].strategy)
@example((sip("Content-Length: " + BIG), False))  # ValueError from int(): now 400
@example((sip("Content-Length: ²"), True))  # str.isdigit() takes '²', int() refuses it: now 400
@example((sip().replace(b"10.0.0.1:5060", b"10.0.0.1:99999"), False))  # Via port out of range: was accepted
@example((sip("Contact: <sip:b@10.0.0.1:70000>", "Content-Length: 0"), False))  # BYE would go to port 70000
def test_sip_message(case):
    """Invariant: message.parse() gives a Request/Response (CSeq below 2**31, Via and Contact ports 1-65535) or
    raises SipParseError."""
    fc.check_sip_message(case)


@given(CASE["sip-uas"].strategy)
@example((sip("Contact: *", "Content-Length: 0", start="INVITE sip:a@127.0.0.1 SIP/2.0", method="INVITE"),
          False))  # ValueError out of Uas.receive (`*` is a REGISTER's Contact only): now 400
@example((sip().replace(b"10.0.0.1:5060", b"10.0.0.1:99999"), False))  # its 200 went to port 99999: sendto raised
def test_sip_uas(case):
    """Invariant: Uas.receive() never raises, and every datagram it queues goes to a port within 1-65535."""
    fc.check_sip_uas(case)


@given(CASE["sip-tcp-framing"].strategy)
@example([b"OPTIONS sip:a SIP/2.0\r\nl: \xb2\r\n\r\n"])  # '²' (latin-1 0xB2) passed isdigit(): ValueError
@example([b"OPTIONS sip:a SIP/2.0\r\nContent-Length: " + BIG.encode() + b"\r\n\r\n"])  # ValueError from int()
def test_sip_tcp_framing(case):
    """Invariant: next_stream_message() takes whole messages off a SIP/TCP buffer, or raises SipParseError (the
    transport closes the connection)."""
    fc.check_sip_stream(case)


@given(CASE["sdp"].strategy)
@example(sdp("m=audio 65536 RTP/AVP 0"))  # port out of range: was accepted, RTP went nowhere
@example(sdp("m=audio ² RTP/AVP 0"))  # ValueError from int(): now 400
@example(sdp(f"m=audio {BIG} RTP/AVP 0"))  # ValueError from int(): now 400
@example(sdp("m=audio 4000 RTP/AVP 1000", "a=rtpmap:1000 PCMU/8000"))  # PT 1000: the RTP sender's pack raised
@example(sdp("m=audio 4000 RTP/AVP ² 0", "a=rtpmap:² PCMU/8000"))  # ValueError from int(): format ignored
def test_sdp(case):
    """Invariant: parse() then negotiate() give ports within 0-65535 and payload types within 0-127, or raise
    ParseError (a 488 NotAcceptable is one); build() of the answer works."""
    fc.check_sdp(case)


@given(CASE["rtp"].strategy)
def test_rtp(case):
    """Invariant: RtpPacket.parse() gives fields within their bit widths and a payload inside the datagram, or
    raises RtpParseError."""
    fc.check_rtp(case)


@given(CASE["rtp-rtcp-receiver"].strategy)
def test_rtp_rtcp_receiver(case):
    """Invariant: RtpReceiver.receive() never raises on RTP, RTCP (rtcp-mux) or garbage from any source, and
    counts each datagram once (received + malformed + foreign)."""
    fc.check_rtp_receiver(case)


@given(CASE["rfc4733"].strategy)
def test_rfc4733(case):
    """Invariant: TelephoneEvent.parse() gives an event 0-255, volume 0-63 and a DTMF key or None, or raises
    RtpParseError."""
    fc.check_telephone_event(case)


@given(CASE["esl-stream"].strategy)
@example([b"Content-Type: api/response\nContent-Length: " + BIG.encode() + b"\n\n"])  # ValueError from int()
def test_esl_stream(case):
    """Invariant: EslParser.feed() gives messages (their events parse or raise EslProtocolError) or raises
    EslProtocolError, and never buffers more than one header block or one body."""
    fc.check_esl_stream(case)


@given(CASE["esl-event"].strategy)
@example(b"Event-Name: " + b"%" * 8500 + b"\n\n")  # urllib's unquote made one string per '%': 1.5 MB for 8.5 KB
def test_esl_event(case):
    """Invariant: parse_event() gives decoded headers and a body no longer than announced, or raises
    EslProtocolError, within the memory bound."""
    fc.check_esl_event(case)


@given(CASE["ari-event"].strategy)
@example(DEEP)  # RecursionError out of the events reader: the ARI ingress stopped
@example('{"type": "StasisEnd", "timestamp": ' + BIG + "}")  # ValueError (not JSONDecodeError) out of the reader
@example('{"type": "ChannelDestroyed", "cause": 1e999, "channel": {"id": "1", "name": "PJSIP/a", "state": "Up"}}')
def test_ari_event(case):  # the last: OverflowError from int(inf)
    """Invariant: models.parse_event_text() gives a typed event or raises ParseError."""
    fc.check_ari_event(case)


@given(CASE["audiosocket"].strategy)
def test_audiosocket(case):
    """Invariant: AudioSocketParser.feed() gives messages (audio of whole samples, DTMF keys) or raises
    AudioSocketError, and never buffers more than one message."""
    fc.check_audiosocket(case)


@given(CASE["chan-websocket"].strategy)
@example('{"event": "STATUS", "queue_length": ' + BIG + "}")  # ValueError, not JSONDecodeError: escaped
@example('{"event": "MEDIA_START", "x": ' + DEEP + "}")  # RecursionError: escaped
@example('{"event": "MEDIA_START", "connection_id": "c", "channel": "WebSocket/a", "channel_id": "1", "format": "ulaw",'
         ' "optimal_frame_size": 160, "ptime": 20, "channel_variables": [1]}')  # not a mapping: the server's ** raised
@example("MEDIA_START " + "a" * 70_000)  # the field regex retried at every letter of a long word: 20 s
def test_chan_websocket(case):
    """Invariant: parse_event() gives an event (MEDIA_START with integer sizes and string variables) or raises
    WebSocketProtocolError."""
    fc.check_chan_websocket(case)


@given(CASE["openai"].strategy)
@example([DEEP])  # RecursionError: the runner caught ValueError/KeyError/TypeError only, the session died
def test_openai(case):
    """Invariant: ws.read_message() turns each OpenAI server message into actions or raises VendorMessageError."""
    fc.check_openai(case)


@given(CASE["grok"].strategy)
@example([DEEP])  # RecursionError, as above
def test_grok(case):
    """Invariant: ws.read_message() turns each xAI Grok server message into actions or raises VendorMessageError."""
    fc.check_grok(case)


@given(CASE["deepgram"].strategy)
@example([DEEP])  # RecursionError, as above
def test_deepgram(case):
    """Invariant: ws.read_message() turns each Deepgram server message into actions or raises VendorMessageError."""
    fc.check_deepgram(case)


@given(CASE["gemini"].strategy)
@example([DEEP.encode()])  # RecursionError, as above (Gemini sends JSON in binary frames too)
def test_gemini(case):
    """Invariant: ws.read_message() turns each Gemini server message into actions or raises VendorMessageError."""
    fc.check_gemini(case)


def test_the_bench_prints_a_rate_per_parser_and_the_failure_it_finds(capsys):
    """`python -m bridge.bench fuzz`: one row per parser with its rate; a failing check is reported, shrunk."""
    from hypothesis import strategies as st

    from bridge.bench import fuzz

    try:
        fuzz.main(["--examples", "20", "--only", "rfc4733,rtp", "--seed", "1"])
    except SystemExit as exc:
        assert exc.code == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [r[:2] for r in rows if r and r[0] in ("rfc4733", "rtp")] == [["rtp", "20"], ["rfc4733", "20"]]
    count, seconds, failure = fuzz._fuzz(st.binary(), lambda data: 1 // (len(data) - 3), 500, 1)
    assert failure is not None and failure.startswith("ZeroDivisionError") and "b'\\x00\\x00\\x00'" in failure
    assert fuzz._fuzz(st.binary(), lambda data: None, 50, 1, chunk=20)[::2] == (50, None)  # 20 + 20 + 10
