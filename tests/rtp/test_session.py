"""Source latching (symmetric RTP), DTMF de-duplication (RFC 4733 §2.5.1.4), drop counters."""

from bridge.rtp.packet import RtpPacket, TelephoneEvent
from bridge.rtp.session import Audio, Dtmf, Inactivity, RtpReceiver

PEER = ("127.0.0.1", 4000)


def rtp(seq, pt=0, payload=b"\xff" * 160, ts=None):
    return RtpPacket(pt, seq, ts if ts is not None else seq * 160, 1, payload).serialize()


def test_latches_first_source_and_drops_others():
    r = RtpReceiver(("127.0.0.1", 4000), 0, 101)
    assert r.receive(rtp(1), ("10.0.0.9", 4000)) is None  # other host before latching
    assert r.stats.foreign == 1 and r.peer is None
    assert isinstance(r.receive(rtp(2), ("127.0.0.1", 4002)), Audio)  # same host, NATed port: latched
    assert r.peer == ("127.0.0.1", 4002)
    assert r.receive(rtp(3), PEER) is None  # now even the signalled port is foreign
    assert r.stats.foreign == 2 and r.stats.received == 1


def test_garbage_is_counted_and_dropped():
    r = RtpReceiver(PEER, 0, None)
    assert r.receive(b"\x00garbage", PEER) is None
    assert r.stats.malformed == 1 and r.peer is None
    assert r.receive(rtp(1, pt=13, payload=b"\x40"), PEER) is None  # comfort noise ignored
    assert r.receive(rtp(2, pt=18), PEER) is None  # a payload type not negotiated
    assert r.stats.ignored == 2
    assert r.receive(rtp(3), PEER) == Audio(b"\xff" * 160, 3)


def test_one_dtmf_per_key_press_despite_retransmitted_end_packets():
    r = RtpReceiver(PEER, 0, 101)
    seen = []
    seq = 0
    for key_index, ts in ((5, 8000), (11, 16000), (5, 24000)):
        for dur, end in ((160, False), (320, False), (480, True), (480, True), (480, True)):
            seq += 1
            out = r.receive(rtp(seq, pt=101, payload=TelephoneEvent(key_index, end, 10, dur).serialize(), ts=ts), PEER)
            if out is not None:
                seen.append(out)
    assert seen == [Dtmf("5"), Dtmf("#"), Dtmf("5")]


def test_raw_mode_takes_datagram_as_payload():
    r = RtpReceiver(None, 0, None, raw=True)
    out = r.receive(b"\x01" * 160, PEER)
    assert isinstance(out, Audio) and out.payload == b"\x01" * 160 and r.peer == PEER


class TestInactivity:
    """RTP_TIMEOUT_SEC / RTP_HOLD_TIMEOUT_SEC from the receive counter, sampled once a second."""

    def test_silence_reaches_the_timeout(self):
        watch = Inactivity(30.0, 600.0, count=0, since=0.0)
        assert [watch.expired(t, 0, False) for t in (1.0, 29.0)] == [None, None]
        assert watch.expired(30.0, 0, False) == 30.0

    def test_any_packet_restarts_the_count(self):
        watch = Inactivity(30.0, 600.0)
        assert watch.expired(29.0, 1, False) is None
        assert watch.expired(58.0, 1, False) is None and watch.expired(59.0, 1, False) == 30.0

    def test_hold_has_its_own_limit_and_restarts_the_count(self):
        watch = Inactivity(30.0, 600.0)
        assert watch.expired(20.0, 0, True) is None  # hold began: the count starts again
        assert watch.expired(619.0, 0, True) is None and watch.expired(620.0, 0, True) == 600.0
        watch = Inactivity(30.0, 600.0)
        watch.expired(20.0, 0, True)
        assert watch.expired(500.0, 0, False) is None  # unhold: 30 s from now, not from the last packet
        assert watch.expired(529.0, 0, False) is None and watch.expired(530.0, 0, False) == 30.0

    def test_zero_is_never(self):
        watch = Inactivity(0.0, 0.0)
        assert watch.expired(10**6, 0, False) is None and watch.expired(2 * 10**6, 0, True) is None
        assert watch.expired(4 * 10**6, 0, True) is None
