"""bridge.sip.uas driven in memory with a stepped clock: RFC 3261 transactions, dialogs, CANCEL, BYE, re-INVITE."""

from __future__ import annotations

import pytest

from bridge.media import Codec
from bridge.sip import message
from bridge.sip.events import CallCancelled, CallEnded, CallRefused, IncomingCall, MediaChanged, RequestDone
from bridge.sip.message import Request, Response
from bridge.sip.transaction import T1, TIMEOUT
from bridge.sip.uas import Uas, UasConfig

PEER = ("10.0.0.1", 5062)
MEDIA = ("127.0.0.1", 20000)
OFFER = (b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
         b"m=audio 4000 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n")


class Caller:
    """A UAC written from RFC 3261 §8.1/§12.2.1: builds requests, parses what the UAS sends back."""

    def __init__(self, uas: Uas, call_id: str = "call-1") -> None:
        self.uas, self.call_id = uas, call_id
        self.cseq = 1
        self.to_tag = ""
        self.branch = "z9hG4bKinv1"

    def request(self, method: str, cseq: int | None = None, branch: str | None = None, body: bytes = b"",
                to_tag: str | None = None, extra: str = "") -> bytes:
        tag = self.to_tag if to_tag is None else to_tag
        lines = [f"{method} sip:ai@127.0.0.1:5060 SIP/2.0",
                 f"Via: SIP/2.0/UDP {PEER[0]}:{PEER[1]};branch={branch or self.branch}",
                 "Record-Route: <sip:proxy.example.com;lr>", "Max-Forwards: 70",
                 "From: \"Alice\" <sip:+15551234@example.com>;tag=abc",
                 f"To: <sip:ai@127.0.0.1>{';tag=' + tag if tag else ''}",
                 f"Call-ID: {self.call_id}", f"CSeq: {cseq or self.cseq} {method}",
                 f"Contact: <sip:alice@{PEER[0]}:{PEER[1]}>", "X-Customer: gold"]
        lines += [extra] if extra else []
        lines += ["Content-Type: application/sdp"] if body else []
        return ("\r\n".join(lines + [f"Content-Length: {len(body)}", "", ""])).encode() + body

    def send(self, data: bytes, now: float = 0.0) -> list[Response | Request]:
        self.uas.receive(data, PEER, now)
        return self.out()

    def out(self) -> list[Response | Request]:
        return [message.parse(data) for data, _ in self.uas.datagrams()]


def answered_call(uas: Uas, ringing: bool = False) -> Caller:
    c = Caller(uas)
    c.send(c.request("INVITE", body=OFFER))
    assert uas.answer("call-1", MEDIA, 0.1)
    (ok,) = c.out()
    c.to_tag = ok.name_addr("to").tag
    c.send(c.request("ACK", branch="z9hG4bKack1"), 0.2)
    return c


@pytest.fixture
def uas() -> Uas:
    return Uas(UasConfig("127.0.0.1", 5060))


def statuses(msgs) -> list[int]:
    return [m.status for m in msgs if isinstance(m, Response)]


class TestInvite:
    """§17.2.1 and §13.3.1.4: 100 at once, 200 with SDP, 2xx retransmitted until the ACK."""

    def test_100_event_then_200_with_answer(self, uas):
        c = Caller(uas)
        msgs = c.send(c.request("INVITE", body=OFFER))
        assert statuses(msgs) == [100] and msgs[0].name_addr("to").tag == ""
        (event,) = uas.events()
        assert isinstance(event, IncomingCall)
        assert (event.caller, event.callee, event.call_id) == ("+15551234", "ai", "call-1")
        assert event.media.remote == ("10.0.0.1", 4000) and event.media.codec is Codec.PCMA
        assert event.media.dtmf_payload_type == 101
        assert event.metadata["X-Customer"] == "gold" and event.metadata["From-Display"] == "Alice"
        assert uas.answer("call-1", MEDIA, 0.1)
        (ok,) = c.out()
        assert ok.status == 200 and ok.name_addr("to").tag
        assert ok.values("record-route") == ["<sip:proxy.example.com;lr>"]
        assert ok.get("contact") == "<sip:sip-to-ai@127.0.0.1:5060>"
        assert b"m=audio 20000 RTP/AVP 8 101" in ok.body

    def test_2xx_retransmitted_at_t1_doubling_until_ack(self, uas):
        c = Caller(uas)
        c.send(c.request("INVITE", body=OFFER))
        uas.answer("call-1", MEDIA, 0.0)
        c.out()
        sent_at = []
        now = 0.0
        while now < 8.0:
            now = uas.next_deadline()
            uas.handle_timer(now)
            if statuses(c.out()) == [200]:
                sent_at.append(now)
        assert sent_at[:4] == [0.5, 1.5, 3.5, 7.5]
        c.to_tag = message.parse(uas._dialogs["call-1"].pending_2xx.data).name_addr("to").tag
        c.send(c.request("ACK", branch="z9hG4bKack"), now)
        assert uas.next_deadline() is None or uas.next_deadline() > now + 20  # only the transaction's Timer L left

    def test_no_ack_gives_up_after_64_t1_and_sends_bye(self, uas):
        c = Caller(uas)
        c.send(c.request("INVITE", body=OFFER))
        uas.answer("call-1", MEDIA, 0.0)
        c.out()
        uas.handle_timer(TIMEOUT)
        ended = [e for e in uas.events() if isinstance(e, CallEnded)]
        assert ended and ended[0].reason.startswith("no ACK")
        bye = [m for m in c.out() if isinstance(m, Request)]
        assert bye and bye[0].method == "BYE" and bye[0].get("route") == "<sip:proxy.example.com;lr>"

    def test_retransmitted_invite_is_answered_from_its_transaction(self, uas):
        c = Caller(uas)
        invite = c.request("INVITE", body=OFFER)
        c.send(invite)
        assert statuses(c.send(invite, 0.5)) == [100]
        assert len([e for e in uas.events() if isinstance(e, IncomingCall)]) == 1
        uas.answer("call-1", MEDIA, 0.6)
        c.out()
        assert statuses(c.send(invite, 1.0)) == [200]
        assert uas.events() == []

    def test_unavailable_gets_503_with_retry_after(self, uas):
        uas.unavailable = "max calls"
        c = Caller(uas)
        (resp,) = c.send(c.request("INVITE", body=OFFER))
        assert resp.status == 503 and resp.get("retry-after") == "30"
        assert uas.events() == [CallRefused(c.call_id, "max calls")]  # counted by the core, nothing more
        assert c.send(c.request("ACK"), 0.1) == []  # the ACK of a non-2xx is absorbed, never answered

    def test_g729_only_gets_488(self, uas):
        c = Caller(uas)
        offer = OFFER.replace(b"RTP/AVP 8 0 101", b"RTP/AVP 18")
        assert statuses(c.send(c.request("INVITE", body=offer))) == [488]

    def test_non_2xx_final_is_retransmitted_by_timer_g(self, uas):
        c = Caller(uas)
        c.send(c.request("INVITE", body=OFFER))
        uas.reject("call-1", 503, 0.0)
        assert statuses(c.out()) == [503]
        uas.handle_timer(T1)
        assert statuses(c.out()) == [503]

    def test_ringing_when_configured(self):
        uas = Uas(UasConfig("127.0.0.1", 5060, ringing=True))
        c = Caller(uas)
        msgs = c.send(c.request("INVITE", body=OFFER))
        assert statuses(msgs) == [100, 180] and msgs[1].name_addr("to").tag and msgs[1].get("contact")


class TestCancel:
    """§9.2: 200 to the CANCEL, 487 to the INVITE, the call released."""

    def test_cancel_before_answer(self, uas):
        c = Caller(uas)
        c.send(c.request("INVITE", body=OFFER))
        msgs = c.send(c.request("CANCEL"), 0.3)
        assert sorted(statuses(msgs)) == [200, 487]
        assert isinstance(uas.events()[-1], CallCancelled)
        assert not uas.answer("call-1", MEDIA, 0.4)

    def test_cancel_after_answer_changes_nothing(self, uas):
        c = Caller(uas)
        c.send(c.request("INVITE", body=OFFER))
        uas.answer("call-1", MEDIA, 0.1)
        c.out()
        assert statuses(c.send(c.request("CANCEL"), 0.3)) == [200]
        assert uas.in_dialog("call-1")

    def test_cancel_without_invite_is_481(self, uas):
        c = Caller(uas)
        assert statuses(c.send(c.request("CANCEL"))) == [481]


class TestBye:
    """§15: BYE both ways; ours follows the route set and is retransmitted per Timer E."""

    def test_caller_bye(self, uas):
        c = answered_call(uas)
        uas.events()
        assert statuses(c.send(c.request("BYE", cseq=2, branch="z9hG4bKbye"), 1.0)) == [200]
        assert uas.events() == [CallEnded("call-1", "caller hung up")]
        assert not uas.in_dialog("call-1")

    def test_bye_outside_dialog_is_481(self, uas):
        c = Caller(uas)
        assert statuses(c.send(c.request("BYE", to_tag="nope"))) == [481]

    def test_our_bye(self, uas):
        c = answered_call(uas)
        assert uas.hangup("call-1", 1.0)
        (bye,) = c.out()
        assert bye.method == "BYE" and bye.uri == "sip:alice@10.0.0.1:5062"
        assert bye.get("route") == "<sip:proxy.example.com;lr>"
        assert bye.name_addr("to").tag == "abc" and bye.name_addr("from").tag == c.to_tag
        dest = uas._client[bye.vias()[0].branch].dest
        assert dest == ("proxy.example.com", 5060)  # the first route, loose routing
        uas.handle_timer(1.0 + T1)
        (again,) = c.out()
        assert bytes(again) == bytes(bye)
        uas.receive(bytes(message.response(bye, 200)), dest, 1.6)
        assert uas.events()[-1] == RequestDone("call-1", "BYE", 200)

    def test_our_bye_waits_for_the_ack(self, uas):
        c = Caller(uas)
        c.send(c.request("INVITE", body=OFFER))
        uas.answer("call-1", MEDIA, 0.0)
        (ok,) = c.out()
        uas.hangup("call-1", 0.1)
        assert c.out() == []
        c.to_tag = ok.name_addr("to").tag
        msgs = c.send(c.request("ACK", branch="z9hG4bKack"), 0.2)
        assert [m.method for m in msgs] == ["BYE"]

    def test_bye_times_out_with_408(self, uas):
        answered_call(uas)
        uas.hangup("call-1", 1.0)
        now = 1.0
        while (deadline := uas.next_deadline()) is not None and deadline < 1.0 + TIMEOUT + 1:
            now = deadline
            uas.handle_timer(now)
        assert RequestDone("call-1", "BYE", 408) in uas.events()


class TestReInvite:
    """§14 and RFC 3264 §8: hold and unhold, the o= version bumped only when our SDP changes."""

    def test_hold_and_back(self, uas):
        c = answered_call(uas)
        uas.events()
        hold = OFFER.replace(b"a=fmtp", b"a=sendonly\r\na=fmtp")
        (ok,) = c.send(c.request("INVITE", cseq=2, branch="z9hG4bKre1", body=hold), 5.0)
        assert ok.status == 200 and b"a=recvonly" in ok.body and b" 2 IN IP4" in ok.body
        (event,) = uas.events()
        assert isinstance(event, MediaChanged) and not event.media.sending
        c.send(c.request("ACK", cseq=2, branch="z9hG4bKack2"), 5.1)
        moved = OFFER.replace(b"4000", b"4100")
        (ok,) = c.send(c.request("INVITE", cseq=3, branch="z9hG4bKre2", body=moved), 6.0)
        assert b"a=sendrecv" in ok.body and b" 3 IN IP4" in ok.body
        (event,) = uas.events()
        assert event.media.sending and event.media.remote == ("10.0.0.1", 4100)
        c.send(c.request("ACK", cseq=3, branch="z9hG4bKack3"), 6.1)
        (ok,) = c.send(c.request("INVITE", cseq=4, branch="z9hG4bKre3", body=moved), 7.0)
        assert b" 3 IN IP4" in ok.body  # a session refresh: same SDP, same version

    def test_lower_cseq_gets_500(self, uas):
        c = answered_call(uas)
        assert statuses(c.send(c.request("INVITE", cseq=1, branch="z9hG4bKold", body=OFFER), 2.0)) == [500]

    def test_update(self, uas):
        c = answered_call(uas)
        (ok,) = c.send(c.request("UPDATE", cseq=2, branch="z9hG4bKup", body=OFFER), 2.0)
        assert ok.status == 200 and b"m=audio 20000" in ok.body


class TestOtherRequests:
    def test_options_out_of_dialog(self, uas):
        c = Caller(uas)
        (ok,) = c.send(c.request("OPTIONS", branch="z9hG4bKo"))
        assert ok.status == 200 and "INVITE" in ok.get("allow") and ok.get("accept") == "application/sdp"
        uas.unavailable = "shutting down"
        (busy,) = c.send(c.request("OPTIONS", branch="z9hG4bKo2", cseq=2))
        assert busy.status == 503 and busy.get("retry-after")

    def test_unknown_method_is_405_with_allow(self, uas):
        c = Caller(uas)
        (resp,) = c.send(c.request("FOOBAR", branch="z9hG4bKf"))
        assert resp.status == 405 and "BYE" in resp.get("allow")

    def test_require_unknown_extension_is_420(self, uas):
        c = Caller(uas)
        (resp,) = c.send(c.request("INVITE", body=OFFER, extra="Require: 100rel"))
        assert resp.status == 420 and resp.get("unsupported") == "100rel"

    def test_rport_and_received(self, uas):
        c = Caller(uas)
        data = c.request("OPTIONS", branch="z9hG4bKr").replace(b";branch=z9hG4bKr", b";branch=z9hG4bKr;rport")
        uas.receive(data, ("192.0.2.7", 40000), 0.0)
        ((resp, dest),) = uas.datagrams()
        assert dest == ("192.0.2.7", 40000)
        assert b"received=192.0.2.7;rport=40000" in resp

    def test_without_rport_answers_to_sent_by_port(self, uas):
        c = Caller(uas)
        uas.receive(c.request("OPTIONS", branch="z9hG4bKr"), ("192.0.2.7", 40000), 0.0)
        ((resp, dest),) = uas.datagrams()
        assert dest == ("192.0.2.7", 5062) and b"received=192.0.2.7" in resp

    def test_unparseable_without_via_is_dropped_and_counted(self, uas):
        uas.receive(b"INVITE sip:x SIP/2.0\r\nCall-ID: x\r\n\r\n", PEER, 0.0)
        assert uas.datagrams() == [] and uas.stats["dropped"] == 1


def test_freeswitch_bridge_invite(uas):
    """The INVITE freeswitch/bridge-to-adapter.xml makes: X- headers reach the agent, PCMU and 101 are taken."""
    from tests.sip.test_sip_sdp import FREESWITCH

    c = Caller(uas)
    extra = "X-Caller-Number: 1000\r\nX-Caller-Name: Alice\r\nX-AI-Call-UUID: 5f3c0a56-8d1e-4b8e-9b6a-0c3f2a1d9e77"
    c.send(c.request("INVITE", body=FREESWITCH, extra=extra))
    (event,) = uas.events()
    assert event.metadata["X-Caller-Number"] == "1000"
    assert event.metadata["X-AI-Call-UUID"] == "5f3c0a56-8d1e-4b8e-9b6a-0c3f2a1d9e77"
    assert (event.media.codec, event.media.payload_type, event.media.dtmf_payload_type) == (Codec.PCMU, 0, 101)
    uas.answer("call-1", MEDIA, 0.1)
    (ok,) = c.out()
    assert b"a=ptime:20" in ok.body and b"a=rtpmap:101 telephone-event/8000" in ok.body


def test_bye_through_a_strict_router(uas):
    """§12.2.1.1: with no ;lr on the first route it becomes the R-URI and the remote target goes last."""
    c = Caller(uas)
    invite = c.request("INVITE", body=OFFER).replace(b"<sip:proxy.example.com;lr>", b"<sip:strict.example.com>")
    c.send(invite)
    uas.answer("call-1", MEDIA, 0.0)
    (ok,) = c.out()
    c.to_tag = ok.name_addr("to").tag
    c.send(c.request("ACK", branch="z9hG4bKa").replace(b"proxy.example.com;lr", b"strict.example.com"), 0.1)
    uas.hangup("call-1", 1.0)
    (bye,) = c.out()
    assert bye.uri == "sip:strict.example.com"
    assert bye.values("route") == ["<sip:alice@10.0.0.1:5062>"]


def test_reinvite_without_sdp_offers_ours_and_the_ack_answers(uas):
    """§14.2 / RFC 3264: a re-INVITE without a body gets our SDP as an offer; the ACK carries the answer."""
    c = answered_call(uas)
    uas.events()
    (ok,) = c.send(c.request("INVITE", cseq=2, branch="z9hG4bKre"), 2.0)
    assert ok.status == 200 and b"m=audio 20000 RTP/AVP 0 8 101" in ok.body
    answer = OFFER.replace(b"4000 RTP/AVP 8 0 101", b"4200 RTP/AVP 0 101")
    c.send(c.request("ACK", cseq=2, branch="z9hG4bKack2", body=answer), 2.1)
    (event,) = uas.events()
    assert isinstance(event, MediaChanged) and event.media.remote == ("10.0.0.1", 4200)


def test_info_dtmf_relay(uas):
    from bridge.sip.events import DtmfReceived

    c = answered_call(uas)
    uas.events()
    data = c.request("INFO", cseq=2, branch="z9hG4bKinfo").replace(
        b"Content-Length: 0\r\n\r\n", b"Content-Type: application/dtmf-relay\r\nContent-Length: 24\r\n\r\n"
    ) + b"Signal=5\r\nDuration=160\r\n"
    assert statuses(c.send(data, 2.0)) == [200]
    assert uas.events() == [DtmfReceived("call-1", "5")]
