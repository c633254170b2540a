"""bridge.sip.sdp: RFC 3264 answers to offers shaped like FreeSWITCH's, Asterisk's and softphones'."""

from __future__ import annotations

import pytest

from bridge.media import Codec
from bridge.sip import sdp
from bridge.sip.sdp import NotAcceptable, SessionDescription

# FreeSWITCH B-leg with absolute_codec_string=PCMU,PCMA (pbx.md §2.1): fmtp 0-15, ptime 20, rtcp
FREESWITCH = b"""v=0
o=FreeSWITCH 1700000000 1700000001 IN IP4 10.0.0.5
s=FreeSWITCH
c=IN IP4 10.0.0.5
t=0 0
m=audio 24680 RTP/AVP 0 8 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=ptime:20
a=rtcp:24681 IN IP4 10.0.0.5
""".replace(b"\n", b"\r\n")

# Asterisk PJSIP: alaw first, telephone-event at 8 and 16 kHz, video too
ASTERISK = b"""v=0
o=- 123 2 IN IP4 192.168.1.9
s=Asterisk
t=0 0
m=audio 10000 RTP/AVP 9 8 0 96 101
c=IN IP4 192.168.1.9
a=rtpmap:96 telephone-event/16000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=sendrecv
m=video 10002 RTP/AVP 99
a=rtpmap:99 H264/90000
""".replace(b"\n", b"\r\n")


def test_freeswitch_offer():
    neg = sdp.negotiate(SessionDescription.parse(FREESWITCH))
    assert (neg.codec, neg.payload_type, neg.dtmf_payload_type) == (Codec.PCMU, 0, 101)
    assert neg.remote == ("10.0.0.5", 24680) and neg.sending
    answer = sdp.build(neg, ("127.0.0.1", 20000), 7, 1).decode()
    assert "m=audio 20000 RTP/AVP 0 101\r\n" in answer
    assert "a=rtpmap:101 telephone-event/8000" in answer and "a=fmtp:101 0-16" in answer
    assert "a=ptime:20" in answer and "a=sendrecv" in answer and "c=IN IP4 127.0.0.1" in answer


def test_asterisk_offer_keeps_order_and_rejects_video_with_port_zero():
    neg = sdp.negotiate(SessionDescription.parse(ASTERISK))
    assert (neg.codec, neg.payload_type, neg.dtmf_payload_type) == (Codec.PCMA, 8, 101)  # G.722 skipped
    answer = sdp.build(neg, ("127.0.0.1", 20000), 7, 1).decode()
    m_lines = [line for line in answer.split("\r\n") if line.startswith("m=")]
    assert m_lines == ["m=audio 20000 RTP/AVP 8 101", "m=video 0 RTP/AVP 99"]
    assert "telephone-event/16000" not in answer


@pytest.mark.parametrize("direction,answer,sending", [
    ("sendrecv", "sendrecv", True), ("sendonly", "recvonly", False), ("recvonly", "sendonly", True),
    ("inactive", "inactive", False),
])
def test_directions(direction, answer, sending):
    offer = FREESWITCH.replace(b"a=ptime:20", f"a=ptime:20\r\na={direction}".encode())
    neg = sdp.negotiate(SessionDescription.parse(offer))
    assert (neg.answer_direction, neg.sending) == (answer, sending)
    assert f"a={answer}".encode() in sdp.build(neg, ("127.0.0.1", 1), 1, 1)


def test_rfc2543_hold_address():
    neg = sdp.negotiate(SessionDescription.parse(FREESWITCH.replace(b"c=IN IP4 10.0.0.5", b"c=IN IP4 0.0.0.0")))
    assert neg.remote is None and not neg.sending


@pytest.mark.parametrize("offer", [
    FREESWITCH.replace(b"RTP/AVP 0 8 101", b"RTP/AVP 18 101").replace(b"a=rtpmap:0 PCMU/8000\r\n", b"")
    .replace(b"a=rtpmap:8 PCMA/8000", b"a=rtpmap:18 G729/8000"),  # G.729 only
    FREESWITCH.replace(b"RTP/AVP", b"RTP/SAVP"),  # SRTP only
    FREESWITCH.replace(b"m=audio", b"m=video"),
    FREESWITCH.replace(b"c=IN IP4 10.0.0.5", b"c=IN IP4 pbx.example.com"),  # a name: no DNS on the media path
])
def test_no_common_codec_is_not_acceptable(offer):
    with pytest.raises(NotAcceptable) as info:
        sdp.negotiate(SessionDescription.parse(offer))
    assert info.value.status_hint == 488


def test_garbage_is_a_parse_error():
    with pytest.raises(sdp.ParseError):
        SessionDescription.parse(b"hello world")


def test_delayed_offer_is_our_offer():
    text = sdp.build(sdp.default_offer(), ("127.0.0.1", 30000), 5, 1, offer=True).decode()
    assert "m=audio 30000 RTP/AVP 0 8 101" in text
    neg = sdp.negotiate(SessionDescription.parse(text.encode()))
    assert neg.remote == ("127.0.0.1", 30000) and neg.codec is Codec.PCMU
