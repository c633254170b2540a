"""Outgoing pacing of N concurrent echo calls, measured at the receiving sockets with kernel timestamps.

A separate peer process owns N UDP sockets: it sends each call caller audio every 20 ms and records when
each of the adapter's packets arrived (SO_TIMESTAMPNS, stamped by the kernel, so the measuring side's own
scheduling does not show in the figures). The same measurement runs against a bare `asyncio.sleep(0.02)`
sender, which is the machine's floor.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import selectors
import socket
import struct
import time
from multiprocessing.connection import Connection

import numpy as np

from bridge import config
from bridge.call import MediaCore
from bridge.media import CallInfo, Codec, MediaLeg
from bridge.rtp.packet import RtpPacket

WARMUP = 1.0  # seconds of arrivals left out of the figures
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


def _peer(n: int, seconds: float, conn: Connection) -> None:
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.setblocking(False)
        socks.append(s)
    conn.send([s.getsockname() for s in socks])
    targets = conn.recv()
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        sel.register(s, selectors.EVENT_READ, i)
    arrivals: list[list[tuple[int, int]]] = [[] for _ in range(n)]  # (kernel ns, rtp timestamp)
    frame = b"\x2a" * 160
    t0 = time.monotonic()
    end = t0 + seconds
    k = 0
    while (now := time.monotonic()) < end:
        if now >= t0 + k * 0.02:
            pkt = RtpPacket(0, k & 0xFFFF, k * 160, 0x5EED, frame).serialize()
            for s, target in zip(socks, targets, strict=True):
                s.sendto(pkt, target)
            k += 1
        for key, _ in sel.select(max(0.0, t0 + k * 0.02 - time.monotonic())):
            s = key.fileobj
            while True:
                try:
                    data, anc, _, _ = s.recvmsg(2048, 64)  # type: ignore[union-attr]
                except BlockingIOError:
                    break
                stamp = next((struct.unpack("qq", d[:16]) for lv, ty, d in anc if ty == SO_TIMESTAMPNS), None)
                if stamp and len(data) >= 12:
                    arrivals[key.data].append((stamp[0] * 10**9 + stamp[1], struct.unpack_from("!I", data, 4)[0]))
    conn.send(_figures(arrivals))


def _figures(arrivals: list[list[tuple[int, int]]]) -> dict[str, float]:
    errors, late, total = [], 0, 0
    for stream in arrivals:
        if len(stream) < 3:
            continue
        t = np.array([a for a, _ in stream], dtype=np.int64)
        ts = np.array([b for _, b in stream], dtype=np.int64)
        keep = t >= t[0] + int(WARMUP * 1e9)
        t, ts = t[keep], ts[keep]
        if len(t) < 3:
            continue
        frames = ((ts - ts[0]) % 2**32) // 160  # the frame index by RTP timestamp: re-bases show as gaps
        steps = np.diff(frames)
        errors.append(np.abs(np.diff(t) / 1e6 - 20.0 * steps))
        # Lateness against the stream's schedule (frame k due k·20 ms after the stream's typical phase).
        offset = t - frames * 20_000_000
        late += int(np.sum(offset - np.median(offset) > 1_000_000))  # over 1 ms behind its schedule
        total += len(t)
    if not errors:
        return {"packets": 0}
    err = np.concatenate(errors)
    return {"packets": total, "p50": float(np.percentile(err, 50)), "p99": float(np.percentile(err, 99)),
            "max": float(err.max()), "late": late}


async def _adapter(n: int, seconds: float, conn: Connection) -> tuple[dict, float]:
    settings = config.load(environ={"ECHO_DELAY_MS": "0", "RTP_PORT_MIN": "30000", "RTP_PORT_MAX": "32000",
                                    "MAX_CALLS": str(n)}, dotenv=None)
    core = MediaCore(settings)
    peers = conn.recv()
    calls = [await core.create_call(CallInfo(f"bench{i}", "bench"), MediaLeg(tuple(p), Codec.PCMU))
             for i, p in enumerate(peers)]
    conn.send([c.local_address for c in calls])

    class Nobody:
        async def hangup(self, reason: str) -> None: ...
        async def transfer(self, destination: str) -> None: ...

    cpu0 = time.process_time()
    async with asyncio.TaskGroup() as tg:
        for c in calls:
            tg.create_task(c.run(Nobody()))
        await asyncio.get_running_loop().run_in_executor(None, conn.poll, seconds + 5)
        cpu = time.process_time() - cpu0
        for c in calls:
            c.end("bench over")
    return conn.recv(), cpu


async def _bare_sleep(seconds: float, conn: Connection) -> tuple[dict, float]:
    peers = conn.recv()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    conn.send([sock.getsockname()])
    cpu0 = time.process_time()
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds + 0.2
    k = 0
    while loop.time() < end:
        await asyncio.sleep(0.02)
        sock.sendto(RtpPacket(0, k & 0xFFFF, k * 160, 1, b"\xff" * 160).serialize(), tuple(peers[0]))
        k += 1
    cpu = time.process_time() - cpu0
    sock.close()
    return conn.recv(), cpu


def measure(n: int, seconds: float, bare: bool = False) -> tuple[dict, float]:
    parent, child = mp.get_context("fork").Pipe()
    peer = mp.get_context("fork").Process(target=_peer, args=(n, seconds, child), daemon=True)
    peer.start()
    try:
        return asyncio.run(_bare_sleep(seconds, parent) if bare else _adapter(n, seconds, parent))
    finally:
        peer.join(5)
        if peer.is_alive():
            peer.kill()


def run(counts: list[int] | None = None, seconds: float = 10.0) -> None:
    counts = counts or [1, 100, 500]
    print(f"# pacing: python -m bridge.bench pacing --calls {','.join(map(str, counts))} --seconds {seconds:g}")
    print("# interval error = |arrival interval - 20 ms| per call, kernel receive timestamps (SO_TIMESTAMPNS),")
    print(f"# first {WARMUP:g} s left out; late = frames arriving > 1 ms after their schedule")
    print(f"{'sender':<28}{'calls':>6}{'packets':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'late':>7}"
          f"{'CPU s/call-min':>16}")
    rows = [("bare asyncio.sleep(0.02)", 1, True)] + [("sip-to-ai shared clock", n, False) for n in counts]
    for label, n, bare in rows:
        fig, cpu = measure(n, seconds, bare)
        if not fig.get("packets"):
            print(f"{label:<28}{n:>6}   no packets measured")
            continue
        print(f"{label:<28}{n:>6}{fig['packets']:>9}{fig['p50']:>9.3f}{fig['p99']:>9.3f}{fig['max']:>9.3f}"
              f"{fig['late']:>7}{cpu / (n * seconds / 60):>16.4f}")


if __name__ == "__main__":
    run()
