"""RFC 4028 session timers: bridge/sip/timer.py's negotiation and deadlines, and the UAS driving them in memory.

The caller here is written from RFC 4028's UAC rules (§7): `Supported: timer`, Session-Expires with or without a
refresher, refreshes by UPDATE or re-INVITE; the deadlines from §10 (refresh at half the interval, BYE
min(32 s, interval/3) before expiry).
"""

from __future__ import annotations

import pytest

from bridge.errors import ParseError
from bridge.sip import message
from bridge.sip import timer as st
from bridge.sip.events import CallEnded, MediaChanged
from bridge.sip.message import Request, Response
from bridge.sip.transaction import T1
from bridge.sip.uas import Uas, UasConfig
from tests.sip.test_sip_uas import MEDIA, OFFER, PEER, Caller, statuses

TIMER = "Supported: timer\r\nSession-Expires: 90;refresher=uac"


def invite(extra: str) -> Request:
    c = Caller(Uas(UasConfig("127.0.0.1", 5060)))
    return message.parse(c.request("INVITE", body=OFFER, extra=extra))


class TestNegotiate:
    """§9: the answer to a request's Session-Expires / Min-SE / Supported."""

    def test_no_session_expires_no_timer(self):
        assert st.negotiate(invite("Supported: timer"), 90) is None

    def test_caller_refreshes_when_it_says_so_or_says_nothing(self):
        for extra in (TIMER, "Supported: timer\r\nSession-Expires: 1800"):
            agreed = st.negotiate(invite(extra), 90)
            assert isinstance(agreed, st.SessionTimer) and not agreed.we_refresh
        assert agreed.response_headers() == [("session-expires", "1800;refresher=uac"), ("require", "timer")]

    def test_we_refresh_when_asked_or_when_the_caller_cannot(self):
        for extra in ("Supported: timer\r\nSession-Expires: 120;refresher=uas", "Session-Expires: 120"):
            agreed = st.negotiate(invite(extra), 90)
            assert isinstance(agreed, st.SessionTimer) and agreed.we_refresh and agreed.interval == 120
            assert agreed.response_headers() == [("session-expires", "120;refresher=uas")]

    def test_compact_form_and_min_se_carried_in_our_refresh(self):
        agreed = st.negotiate(invite("k: timer\r\nx: 300;refresher=uas\r\nMin-SE: 120"), 90)
        assert agreed.request_headers() == [("session-expires", "300;refresher=uac"), ("supported", "timer"),
                                            ("min-se", "120")]

    def test_too_brief_is_422_for_a_uac_that_supports_timers(self):
        assert st.negotiate(invite("Supported: timer\r\nSession-Expires: 60"), 90) == st.TooBrief(90)

    def test_too_brief_raised_to_our_minimum_when_the_uac_cannot_retry(self):
        agreed = st.negotiate(invite("Session-Expires: 60"), 90)
        assert agreed.interval == 90 and agreed.we_refresh  # errata 1687: no 422 it could not act on

    @pytest.mark.parametrize("value", ["", "abc", "-5", "1e3", "9" * 30])
    def test_malformed_session_expires_is_400(self, value):
        with pytest.raises(ParseError) as err:
            st.negotiate(invite(f"Session-Expires: {value}"), 90)
        assert err.value.status_hint == 400

    def test_huge_interval_is_capped(self):
        assert st.negotiate(invite("Session-Expires: 99999999999"), 90).interval == st.MAX_INTERVAL


class TestDeadlines:
    """§10: half the interval for the refresher; min(32 s, interval/3) before expiry for the other end."""

    def test_refresher_at_half(self):
        timer = st.SessionTimer(90, True)
        timer.start(100.0)
        assert timer.due == 145.0 and timer.action(144.9) is None and timer.action(145.0) == "refresh"

    @pytest.mark.parametrize(("interval", "bye_at"), [(90, 60.0), (1800, 1768.0), (6, 4.0)])
    def test_bye_before_expiry(self, interval, bye_at):
        timer = st.SessionTimer(interval, False)
        timer.start(0.0)
        assert timer.due == bye_at and timer.action(bye_at) == "expire"

    def test_failed_refresh_retried_halfway_then_expires(self):
        timer = st.SessionTimer(90, True)
        timer.start(0.0)
        timer.in_flight = True
        assert timer.action(50.0) is None and timer.due == 90.0
        timer.retry(50.0)
        assert timer.due == 70.0 and timer.action(70.0) == "refresh"
        timer.retry(89.5)
        assert timer.due == 90.0 and timer.action(90.0) == "expire"

    def test_answer_may_shorten_and_hand_over(self):
        timer = st.SessionTimer(1800, True)
        timer.answered("900;refresher=uas", 10.0)
        assert (timer.interval, timer.we_refresh, timer.started) == (900, False, 10.0)


# -- the UAS ------------------------------------------------------------------------------------------------------


@pytest.fixture
def uas() -> Uas:
    return Uas(UasConfig("127.0.0.1", 5060, min_se=90))


def timed_call(uas: Uas, extra: str, at: float = 0.0) -> tuple[Caller, Response]:
    c = Caller(uas)
    c.send(c.request("INVITE", body=OFFER, extra=extra), at)
    uas.events()
    assert uas.answer("call-1", MEDIA, at)
    (ok,) = c.out()
    c.to_tag = ok.name_addr("to").tag
    c.send(c.request("ACK", branch="z9hG4bKack1"), at + 0.1)
    return c, ok


def run_until(uas: Uas, end: float) -> list:
    """Fire every deadline up to `end`; what was sent, parsed."""
    out = []
    while (deadline := uas.next_deadline()) is not None and deadline <= end:
        uas.handle_timer(deadline)
        out += [message.parse(d) for d, _ in uas.datagrams()]
    return out


class TestCallerRefreshes:
    def test_2xx_says_who_refreshes_and_requires_timer(self, uas):
        _, ok = timed_call(uas, TIMER)
        assert ok.get("session-expires") == "90;refresher=uac"
        assert ok.get("require") == "timer" and ok.get("supported") == "timer"

    def test_no_refresh_bye_before_expiry(self, uas):
        timed_call(uas, TIMER, at=0.0)
        assert run_until(uas, 59.9) == []
        (bye,) = run_until(uas, 60.0)
        assert bye.method == "BYE"
        (ended,) = uas.events()
        assert ended == CallEnded("call-1", "session timer expired: no refresh within 90 s", "session_expired")
        assert not uas.in_dialog("call-1")

    def test_update_refresh_without_sdp_restarts_the_interval(self, uas):
        c, _ = timed_call(uas, TIMER)
        (ok,) = c.send(c.request("UPDATE", cseq=2, branch="z9hG4bKup1", extra=TIMER), 40.0)
        assert ok.status == 200 and ok.body == b"" and ok.get("session-expires") == "90;refresher=uac"
        assert uas.events() == []  # nothing changed for the call
        assert run_until(uas, 99.9) == []
        (bye,) = run_until(uas, 100.0)
        assert bye.method == "BYE"

    def test_reinvite_refresh_same_sdp_same_version(self, uas):
        c, first = timed_call(uas, TIMER)
        (ok,) = c.send(c.request("INVITE", cseq=2, branch="z9hG4bKre1", body=OFFER, extra=TIMER), 40.0)
        assert ok.status == 200 and ok.body == first.body and ok.get("session-expires") == "90;refresher=uac"
        c.send(c.request("ACK", cseq=2, branch="z9hG4bKack2"), 40.1)
        assert run_until(uas, 99.9) == []
        (bye,) = run_until(uas, 100.0)
        assert bye.method == "BYE"

    def test_refresh_without_session_expires_turns_the_timer_off(self, uas):
        c, _ = timed_call(uas, TIMER)
        (ok,) = c.send(c.request("UPDATE", cseq=2, branch="z9hG4bKup1"), 40.0)
        assert ok.status == 200 and ok.get("session-expires") is None
        assert run_until(uas, 1000.0) == []

    def test_initial_422_with_our_min_se(self, uas):
        c = Caller(uas)
        (resp,) = [m for m in c.send(c.request("INVITE", body=OFFER, extra="Supported: timer\r\nSession-Expires: 30"))]
        assert resp.status == 422 and resp.get("min-se") == "90"
        assert uas.events() == [] and not uas.in_dialog("call-1")

    def test_refresh_422_changes_nothing(self, uas):
        c, _ = timed_call(uas, TIMER)
        brief = "Supported: timer\r\nSession-Expires: 30;refresher=uac"
        moved = OFFER.replace(b"4000", b"4100")
        (resp,) = c.send(c.request("INVITE", cseq=2, branch="z9hG4bKre1", body=moved, extra=brief), 40.0)
        assert resp.status == 422 and resp.get("min-se") == "90"
        assert uas.events() == []  # §12.2.2: a rejected request changes nothing
        c.send(c.request("ACK", cseq=2, branch="z9hG4bKre1"), 40.1)
        (bye,) = run_until(uas, 60.0)
        assert bye.method == "BYE"

    def test_min_se_setting_lowers_the_floor(self):
        uas = Uas(UasConfig("127.0.0.1", 5060, min_se=2))
        _, ok = timed_call(uas, "Supported: timer\r\nSession-Expires: 3;refresher=uac")
        assert ok.get("session-expires") == "3;refresher=uac"
        (bye,) = run_until(uas, 2.0)  # 3 - min(32, 3/3)
        assert bye.method == "BYE"


class TestWeRefresh:
    def test_update_when_the_caller_allows_it(self, uas):
        c, ok = timed_call(uas, "Supported: timer\r\nSession-Expires: 90;refresher=uas\r\nAllow: INVITE, ACK, UPDATE")
        assert ok.get("session-expires") == "90;refresher=uas" and ok.get("require") is None
        assert run_until(uas, 44.9) == []
        (update,) = run_until(uas, 45.0)
        assert update.method == "UPDATE" and update.body == b""
        assert update.get("session-expires") == "90;refresher=uac" and update.get("supported") == "timer"
        assert update.get("contact") and update.name_addr("to").tag == "abc"
        uas.receive(bytes(message.response(update, 200, extra=[("session-expires", "90;refresher=uac")])), PEER, 45.2)
        assert uas.events() == []
        assert run_until(uas, 90.1) == []
        (again,) = run_until(uas, 90.2)
        assert again.method == "UPDATE" and again.cseq()[0] == update.cseq()[0] + 1

    def test_reinvite_with_our_sdp_unchanged_and_ack(self, uas):
        c, ok = timed_call(uas, "Supported: timer\r\nSession-Expires: 90;refresher=uas")
        (reinvite,) = run_until(uas, 45.0)
        assert reinvite.method == "INVITE" and reinvite.body == ok.body  # same o= version: nothing changed
        assert reinvite.get("content-type") == "application/sdp"
        answer = OFFER.replace(b"4000", b"4200")
        resp = message.response(reinvite, 200, extra=[("session-expires", "90;refresher=uac"),
                                                      ("content-type", "application/sdp")], body=answer)
        uas.receive(bytes(resp), PEER, 45.3)
        (ack,) = c.out()
        assert ack.method == "ACK" and ack.cseq() == (reinvite.cseq()[0], "ACK")
        assert ack.vias()[0].branch != reinvite.vias()[0].branch  # a 2xx's ACK is a transaction of its own
        (moved,) = uas.events()
        assert isinstance(moved, MediaChanged) and moved.media.remote == ("10.0.0.1", 4200)
        uas.receive(bytes(resp), PEER, 45.8)  # the 2xx again: the same ACK again
        (again,) = c.out()
        assert bytes(again) == bytes(ack)
        assert run_until(uas, 90.2) == []
        (next_refresh,) = run_until(uas, 90.3)  # half the interval after the 2xx came back
        assert next_refresh.method == "INVITE" and next_refresh.body == ok.body

    def test_reinvite_retransmitted_at_t1_doubling(self, uas):
        timed_call(uas, "Supported: timer\r\nSession-Expires: 90;refresher=uas")
        (reinvite,) = run_until(uas, 45.0)
        again = run_until(uas, 45.0 + 7 * T1 + 0.01)
        assert [bytes(m) for m in again] == [bytes(reinvite)] * 3  # at +T1, +3·T1, +7·T1

    def test_glare_our_reinvite_out_theirs_gets_491(self, uas):
        c, _ = timed_call(uas, "Supported: timer\r\nSession-Expires: 90;refresher=uas")
        run_until(uas, 45.0)
        assert statuses(c.send(c.request("INVITE", cseq=2, branch="z9hG4bKre1", body=OFFER), 45.1)) == [491]

    def test_update_refused_falls_back_to_reinvite(self, uas):
        timed_call(uas, "Supported: timer\r\nSession-Expires: 90;refresher=uas\r\nAllow: UPDATE")
        (update,) = run_until(uas, 45.0)
        uas.receive(bytes(message.response(update, 405)), PEER, 45.1)
        (reinvite,) = run_until(uas, 45.1)
        assert reinvite.method == "INVITE"

    def test_422_retried_with_the_interval_asked(self, uas):
        timed_call(uas, "Supported: timer\r\nSession-Expires: 90;refresher=uas\r\nAllow: UPDATE")
        (update,) = run_until(uas, 45.0)
        uas.receive(bytes(message.response(update, 422, extra=[("min-se", "300")])), PEER, 45.1)
        (again,) = run_until(uas, 45.1)
        assert again.method == "UPDATE" and again.get("session-expires") == "300;refresher=uac"

    @pytest.mark.parametrize("status", [481, 408])
    def test_refresh_481_or_408_ends_the_call(self, uas, status):
        timed_call(uas, "Supported: timer\r\nSession-Expires: 90;refresher=uas\r\nAllow: UPDATE")
        (update,) = run_until(uas, 45.0)
        uas.receive(bytes(message.response(update, status)), PEER, 45.1)
        (bye,) = [message.parse(d) for d, _ in uas.datagrams()]
        assert bye.method == "BYE"
        (ended,) = uas.events()
        assert isinstance(ended, CallEnded) and str(status) in ended.reason

    def test_no_answer_at_all_ends_the_call_at_expiry(self, uas):
        timed_call(uas, "Supported: timer\r\nSession-Expires: 90;refresher=uas\r\nAllow: UPDATE")
        sent = run_until(uas, 90.0)
        assert sent[0].method == "UPDATE" and sent[-1].method == "BYE"
        assert any(isinstance(e, CallEnded) for e in uas.events())


class TestUpdate:
    """RFC 3311 §5.2: UPDATE without SDP, with SDP, and the offers it may not cross."""

    def test_update_with_sdp_moves_media(self, uas):
        c, _ = timed_call(uas, "")
        (ok,) = c.send(c.request("UPDATE", cseq=2, branch="z9hG4bKup", body=OFFER.replace(b"4000", b"4300")), 2.0)
        assert ok.status == 200 and ok.get("content-type") == "application/sdp" and b"m=audio 20000" in ok.body
        (moved,) = uas.events()
        assert moved.media.remote == ("10.0.0.1", 4300)

    def test_update_without_sdp(self, uas):
        c, _ = timed_call(uas, "")
        (ok,) = c.send(c.request("UPDATE", cseq=2, branch="z9hG4bKup"), 2.0)
        assert ok.status == 200 and ok.body == b"" and uas.events() == []

    def test_early_update_with_offer_gets_500(self):
        uas = Uas(UasConfig("127.0.0.1", 5060, ringing=True))
        c = Caller(uas)
        msgs = c.send(c.request("INVITE", body=OFFER))
        c.to_tag = msgs[-1].name_addr("to").tag
        (resp,) = c.send(c.request("UPDATE", cseq=2, branch="z9hG4bKup", body=OFFER), 0.5)
        assert resp.status == 500 and resp.get("retry-after")

    def test_update_offer_while_our_offer_is_out_gets_491(self, uas):
        c = Caller(uas)
        c.send(c.request("INVITE"))  # no SDP: our 2xx carries the offer, the ACK the answer
        uas.answer("call-1", MEDIA, 0.0)
        (ok,) = c.out()
        c.to_tag = ok.name_addr("to").tag
        (resp,) = c.send(c.request("UPDATE", cseq=2, branch="z9hG4bKup", body=OFFER), 0.1)
        assert resp.status == 491

    def test_require_timer_is_understood_others_are_not(self, uas):
        c = Caller(uas)
        (resp,) = c.send(c.request("INVITE", body=OFFER, extra="Require: timer, 100rel"))
        assert resp.status == 420 and resp.get("unsupported") == "100rel"
        c2 = Caller(uas, "call-2")
        assert statuses(c2.send(c2.request("INVITE", body=OFFER, extra="Require: timer\r\n" + TIMER))) == [100]
