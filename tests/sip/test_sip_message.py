"""bridge.sip.message: RFC 3261 §7 parsing (compact forms, folding, lists, Content-Length) and broken messages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bridge.sip import message
from bridge.sip.message import NameAddr, Request, Response, SipParseError, Via

INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"v: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK776asdhds, SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKa\r\n"
    b"Via: SIP/2.0/TCP proxy.example.com;branch=z9hG4bKb\r\n"
    b"Max-Forwards: 70\r\n"
    b"t: Bob <sip:bob@example.com>\r\n"
    b"f: \"Alice A.\" <sip:alice@example.com>;tag=1928301774\r\n"
    b"i: a84b4c76e66710\r\n"
    b"CSeq: 314159\r\n  INVITE\r\n"
    b"m: <sip:alice@10.0.0.1>\r\n"
    b"X-Customer-Id: 42\r\n"
    b"c: application/sdp\r\n"
    b"l: 4\r\n\r\n"
    b"v=0\r\nextra bytes past Content-Length"
)


class TestParse:
    """§7.3: compact names, folded lines, comma lists and repeated headers, Content-Length over UDP."""

    def test_fields(self):
        msg = message.parse(INVITE)
        assert isinstance(msg, Request)
        assert (msg.method, msg.uri) == ("INVITE", "sip:bob@example.com")
        assert [v.host for v in msg.vias()] == ["10.0.0.1", "10.0.0.2", "proxy.example.com"]
        assert msg.vias()[0].port == 5060 and msg.vias()[0].branch == "z9hG4bK776asdhds"
        assert msg.cseq() == (314159, "INVITE")
        assert msg.get("Call-ID") == msg.get("i") == "a84b4c76e66710"
        assert msg.name_addr("from") == NameAddr("sip:alice@example.com", "Alice A.", {"tag": "1928301774"})
        assert msg.get("x-customer-id") == "42"
        assert msg.body == b"v=0\r"  # the datagram's extra octets are ignored (RFC 4475 dblreq)

    def test_case_insensitive_names_and_round_trip(self):
        msg = message.parse(INVITE.replace(b"Max-Forwards", b"mAX-fOrWaRdS"))
        again = message.parse(bytes(msg))
        assert again.get("max-forwards") == "70"
        assert again.headers == msg.headers  # serialize(parse(x)) keeps every header in order
        assert again.body == msg.body

    def test_response(self):
        data = (b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nTo: <sip:a@b>;tag=9\r\n"
                b"From: <sip:c@d>;tag=1\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
        msg = message.parse(data)
        assert isinstance(msg, Response) and (msg.status, msg.reason) == (180, "Ringing")
        assert msg.name_addr("to").tag == "9"

    def test_via_with_lws_and_ipv6(self):
        via = Via.parse("SIP / 2.0 / UDP [2001:db8::1]:5070 ; branch = z9hG4bK1 ; rport")
        assert (via.transport, via.host, via.port, via.params) == ("UDP", "2001:db8::1", 5070,
                                                                  {"branch": "z9hG4bK1", "rport": ""})

    def test_stream_requires_content_length(self):
        data = INVITE.replace(b"l: 4\r\n", b"")
        message.parse(data)
        with pytest.raises(SipParseError):
            message.parse(data, stream=True)


def _broken(data: bytes) -> SipParseError:
    with pytest.raises(SipParseError) as info:
        message.parse(data)
    return info.value


class TestBroken:
    """Every broken message raises SipParseError with its status hint, and keeps what headers it could read."""

    @pytest.mark.parametrize("old,new,status", [
        (b"i: a84b4c76e66710\r\n", b"", 400),  # missing Call-ID
        (b"l: 4", b"l: 400", 400),  # Content-Length beyond the body
        (b"l: 4", b"l: -4", 400),
        (b"l: 4\r\n", b"l: 4\r\nContent-Length: 5\r\n", 400),
        (b"INVITE sip:bob@example.com SIP/2.0", b"INVITE  sip:bob@example.com SIP/2.0", 400),
        (b"INVITE sip:bob@example.com SIP/2.0", b"INVITE sip:bob@example.com SIP/3.0", 505),
        (b"INVITE sip:bob@example.com SIP/2.0", b"INVITE <sip:bob@example.com> SIP/2.0", 400),
        (b"CSeq: 314159\r\n  INVITE", b"CSeq: 314159 BYE", 400),
        (b"CSeq: 314159\r\n  INVITE", b"CSeq: 99999999999 INVITE", 400),
        (b"t: Bob <sip:bob@example.com>", b"t: \"Bob <sip:bob@example.com>", 400),
        (b"Max-Forwards: 70", b"Max-Forwards 70", 400),
        (b"X-Customer-Id: 42", b"X-Customer-Id: \xff\xfe", 400),
    ])
    def test_status_hint(self, old, new, status):
        assert old in INVITE
        exc = _broken(INVITE.replace(old, new))
        assert exc.status_hint == status
        assert exc.request and any(name == "via" for name, _ in exc.headers)

    def test_limits(self):
        assert _broken(INVITE + b"x" * message.MAX_MESSAGE).status_hint == 513
        many = INVITE.replace(b"X-Customer-Id: 42\r\n", b"X-A: 1\r\n" * (message.MAX_HEADERS + 1))
        assert _broken(many).status_hint == 400
        huge = INVITE.replace(b"X-Customer-Id: 42", b"X-Customer-Id: " + b"a" * message.MAX_HEADER_LINE)
        assert _broken(huge).status_hint == 400

    @pytest.mark.parametrize("data", [b"", b"\r\n\r\n", b"garbage", b"\x00\x01\x02", b"SIP/2.0 abc\r\n\r\n",
                                      b"INVITE\r\n\r\n", bytes(range(256))])
    def test_garbage(self, data):
        _broken(data)

    def test_byte_prefixes_never_raise_anything_else(self):
        for n in range(len(INVITE)):
            try:
                message.parse(INVITE[:n])
            except SipParseError:
                pass


def test_response_copies_the_dialog_headers_and_adds_our_tag():
    req = message.parse(INVITE)
    resp = message.response(req, 486, to_tag="ours")
    assert resp.values("via") == req.values("via")
    assert resp.name_addr("to").tag == "ours" and resp.get("call-id") == req.get("call-id")
    assert message.response(req, 100).name_addr("to").tag == ""


def test_sip_package_is_sans_io():
    """Architecture habit 1: nothing under bridge/sip but transport.py imports asyncio or socket."""
    root = Path(message.__file__).parent
    for path in root.glob("*.py"):
        if path.name == "transport.py":
            continue
        tree = ast.parse(path.read_text())
        names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)
                 for alias in node.names} | {node.module for node in ast.walk(tree)
                                             if isinstance(node, ast.ImportFrom) and node.module}
        assert not names & {"asyncio", "socket", "time"}, path.name


def test_a_broken_response_is_never_taken_for_a_request():
    data = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nbad header line\r\n\r\n"
    with pytest.raises(SipParseError) as info:
        message.parse(data)
    assert not info.value.request
