"""The sender's schedule (catch-up, re-base, talkspurt marker) and the port pool, without the clock."""

import socket

import pytest

from bridge.errors import NoPortAvailable
from bridge.media import Codec, MediaLeg
from bridge.rtp.endpoint import MAX_CATCHUP, PortPool, RtpEndpoint
from bridge.rtp.packet import RtpPacket
from bridge.rtp.playout import Playout

PEER = ("127.0.0.1", 5004)


def endpoint():
    playout = Playout(Codec.PCMU.silence)
    ep = RtpEndpoint(MediaLeg(PEER, Codec.PCMU), playout, lambda media: None)
    ep._sendto = lambda data, addr: None
    return ep, playout


def tick(ep, n):
    out = []
    ep.on_tick(n, out)
    assert all(addr == PEER for _, _, addr in out)
    return [RtpPacket.parse(data) for _, data, _ in out]


def test_one_frame_per_tick_with_consistent_sequence_and_timestamp():
    ep, _ = endpoint()
    packets = [p for n in range(1, 6) for p in tick(ep, n)]
    assert len(packets) == 5
    for a, b in zip(packets, packets[1:], strict=False):
        assert (b.sequence - a.sequence) % 65536 == 1 and (b.timestamp - a.timestamp) % 2**32 == 160


def test_late_tick_is_caught_up_not_skipped():
    ep, _ = endpoint()
    first = tick(ep, 1)
    burst = tick(ep, 4)  # ticks 2 and 3 were missed
    assert len(burst) == 3
    assert [(p.timestamp - first[0].timestamp) % 2**32 for p in burst] == [160, 320, 480]


def test_long_stall_rebases_but_timestamp_follows_wall_time():
    ep, _ = endpoint()
    first = tick(ep, 1)[0]
    gap = MAX_CATCHUP + 10
    after = tick(ep, 1 + gap)
    assert len(after) == 1 and ep.rebased == 1
    assert (after[0].sequence - first.sequence) % 65536 == 1
    assert (after[0].timestamp - first.timestamp) % 2**32 == 160 * gap


def test_marker_on_first_packet_of_each_talkspurt_and_silence_between():
    ep, playout = endpoint()
    assert tick(ep, 1)[0].payload == b"\xff" * 160
    playout.push(b"\x01" * 320)
    a, b = tick(ep, 2)[0], tick(ep, 3)[0]
    silent = tick(ep, 4)[0]
    playout.push(b"\x02" * 160)
    c = tick(ep, 5)[0]
    assert (a.marker, b.marker, silent.marker, c.marker) == (True, False, False, True)
    assert silent.payload == b"\xff" * 160 and c.payload == b"\x02" * 160


def test_hold_sends_nothing_but_time_advances():
    ep, _ = endpoint()
    first = tick(ep, 1)[0]
    ep.sending = False
    assert tick(ep, 2) == []
    ep.sending = True
    assert (tick(ep, 3)[0].timestamp - first.timestamp) % 2**32 == 320


def test_port_pool_hands_out_even_ports_and_takes_them_back():
    pool = PortPool(41000, 41005)
    socks = [pool.bind("127.0.0.1") for _ in range(3)]
    ports = sorted(s.getsockname()[1] for s in socks)
    assert ports == [41000, 41002, 41004]
    with pytest.raises(NoPortAvailable):
        pool.bind("127.0.0.1")
    freed = socks[0].getsockname()[1]
    socks[0].close()
    pool.release(freed)
    again = pool.bind("127.0.0.1")
    assert again.getsockname()[1] == freed
    for s in (*socks[1:], again):
        s.close()


def test_port_pool_skips_ports_someone_else_holds():
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind(("127.0.0.1", 41100))
    pool = PortPool(41100, 41103)
    mine = pool.bind("127.0.0.1")
    assert mine.getsockname()[1] == 41102
    mine.close()
    squatter.close()
