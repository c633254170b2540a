"""What operations cost the media path: the hot-path counting and recording taps, and one /metrics scrape.

Per tick the clock adds three statements (a lateness bucket, a sum, the next due time); per frame and per
caller packet a call checks whether a recording tap is set (and feeds it when records are on); the RTP counters
are the ones the endpoint always kept. A scrape walks the live calls once. Figures are µs on this machine,
beside its floor (one empty Python function call).
"""

from __future__ import annotations

import asyncio
import os
import time
import timeit
from collections.abc import Callable

from bridge.call import MediaCore
from bridge.clock import LATENESS_BOUNDS, TICK, SharedClock
from bridge.config import load
from bridge.media import CallInfo, Codec, MediaLeg
from bridge.ops.metrics import Metrics
from bridge.ops.recording import TwoChannels
from bridge.rtp.endpoint import RtpEndpoint
from bridge.rtp.playout import Playout
from bridge.vendors.ws import LATENCY_SAMPLE, SendQueue

REPEAT = 200_000


def _us(fn: Callable[[], object], n: int = REPEAT) -> float:
    return min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6


def _tick_counting() -> float:
    clock = SharedClock()
    stmt = "c.late_buckets[bisect_left(B, late)] += 1\nc.late_sum += late\nc.due = due + T"  # as in clock.py
    g = {"c": clock, "B": LATENESS_BOUNDS, "late": 0.0004, "due": 1.0, "T": TICK,
         "bisect_left": __import__("bisect").bisect_left}
    return min(timeit.repeat(stmt, globals=g, number=REPEAT, repeat=5)) / REPEAT * 1e6


def _frame(tap: bool) -> Callable[[], None]:
    playout = Playout(0xFF)
    endpoint = RtpEndpoint(MediaLeg(("127.0.0.1", 9), Codec.PCMU), playout, lambda media: None)
    if tap:
        endpoint.tap = TwoChannels(0xFF, lambda left, right: None).heard
    out: list = []
    tick = [0]

    def one() -> None:
        tick[0] += 1
        endpoint.on_tick(tick[0], out)
        out.clear()

    return one


def _frames() -> tuple[float, float]:
    """µs per frame without and with a recording tap, measured in turns (the machine is shared)."""
    off, on = _frame(False), _frame(True)
    pairs = [(_us(off, 50_000), _us(on, 50_000)) for _ in range(6)]
    return min(p[0] for p in pairs), min(p[1] for p in pairs)


def _caller_packet() -> float:
    channels = TwoChannels(0xFF, lambda left, right: None)
    payload, seq = b"\x55" * 160, [0]

    def one() -> None:
        seq[0] += 1
        channels.heard(payload)
        channels.caller(payload, seq[0] & 0xFFFF)

    return _us(one) - _us(lambda: channels.heard(payload))


def _uplink_sampling() -> float:
    """The statements WsSession.send_audio adds per caller frame to time one frame a second (as in ws.py)."""
    stmt = "s.audio_in += 1\nsampled = s.audio_in % N == 0 and q.timed is None\nt0 = 0.0"
    g = {"s": type("S", (), {"audio_in": 1})(), "q": SendQueue(), "N": LATENCY_SAMPLE}
    return min(timeit.repeat(stmt, globals=g, number=REPEAT, repeat=5)) / REPEAT * 1e6


async def _scrape(calls: int) -> tuple[float, int]:
    settings = load(environ={"RTP_PORT_MIN": "48000", "RTP_PORT_MAX": "49999"}, dotenv=None)
    core = MediaCore(settings)
    metrics = Metrics(core)
    live = [await core.create_call(CallInfo(f"bench-{n}", "sip"), MediaLeg(("127.0.0.1", 9), Codec.PCMU))
            for n in range(calls)]
    try:
        body = metrics.exposition()
        return _us(metrics.exposition, 200), len(body)
    finally:
        for call in live:
            await call.aclose()


def run(calls: int = 100) -> None:
    floor = _us(lambda: None)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"python -m bridge.bench ops   (µs per operation; loadavg {load})")
    print(f"  floor: one empty Python call                        {floor:8.3f}")
    print(f"  per tick: lateness bucket + sum + next due           {_tick_counting():8.3f}   (50 ticks/s)")
    off, on = _frames()
    print(f"  per frame sent: endpoint.on_tick, no recording       {off:8.3f}")
    print(f"  per frame sent: endpoint.on_tick, recording on       {on:8.3f}   (+{on - off:.3f} for the tap)")
    channels, frame = TwoChannels(0xFF, lambda left, right: None), b"\x55" * 160
    print(f"  per frame sent: the recording tap alone               {_us(lambda: channels.heard(frame)):8.3f}")
    print(f"  per caller packet: recording tap (place by seq)      {_caller_packet():8.3f}")
    print(f"  per caller frame to a vendor: uplink-latency sampling {_uplink_sampling():8.3f}")
    t0 = time.perf_counter()
    scrape, size = asyncio.run(_scrape(calls))
    print(f"  one /metrics scrape, {calls} live calls ({size} bytes)   {scrape:8.1f}   "
          f"(set-up {time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    run()
