"""Figures, not a test: pacing of the unicast frames the adapter sends back on one ESL outbound-socket echo call.

    .venv/bin/python -m tests.pbx.esl.measure_pacing [seconds]

The fake FreeSWITCH's `socket` app drives the call over ESL; its unicast media side runs in a process of its own
and stamps each arriving frame with the kernel's receive time (SO_TIMESTAMPNS), so the figures are the adapter's
pacing, not the measuring loop's. The first second is left out (echo delay, start-up).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import socket
import struct
import sys
import time

from tests.fakes.esl import FakeSocketApp
from tests.pbx.esl.test_server import FRAMES, adapter, esl_settings

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


def _media(local: tuple[str, int], remote: tuple[str, int], seconds: float, out: mp.Queue) -> None:
    """FreeSWITCH's unicast socket: a frame every 20 ms from `local` to `remote`, kernel-stamped arrivals."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(local)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.settimeout(0.001)
    t0, sent, stamps = time.monotonic(), 0, []
    while time.monotonic() - t0 < seconds:
        if time.monotonic() >= t0 + sent * 0.020:
            sock.sendto(FRAMES[sent % len(FRAMES)], remote)
            sent += 1
        try:
            _, ancillary, _, _ = sock.recvmsg(2048, 64)
        except TimeoutError:
            continue
        for _, kind, data in ancillary:
            if kind == SO_TIMESTAMPNS:
                sec, nsec = struct.unpack("qq", data[:16])
                stamps.append(sec + nsec / 1e9)
    out.put(stamps)


class _TimedSocketApp(FakeSocketApp):
    seconds = 10.0

    async def _unicast(self, h: dict[str, str]) -> None:
        self.out: mp.Queue = mp.Queue()
        local = (h["local-ip"], int(h["local-port"]))
        remote = (h["remote-ip"], int(h["remote-port"]))
        self.proc = mp.Process(target=_media, args=(local, remote, self.seconds, self.out))
        self.proc.start()


async def measure(seconds: float) -> None:
    _TimedSocketApp.seconds = seconds
    async with adapter(esl_settings()) as (_, server), _TimedSocketApp(server.address) as fs:
        await asyncio.sleep(0.5)
        stamps = await asyncio.to_thread(fs.out.get)
        fs.proc.join()
        await fs.hangup()
        print("commands the adapter sent:", ", ".join(fs.commands))
    gaps = [(b - a) * 1000 for a, b in zip(stamps[50:], stamps[51:], strict=False)]
    errors = sorted(abs(g - 20) for g in gaps)
    at = lambda p: errors[min(len(errors) - 1, int(len(errors) * p))]  # noqa: E731
    print(f"{len(gaps)} intervals: mean {sum(gaps) / len(gaps):.3f} ms; interval error p50 {at(0.5):.3f} ms, "
          f"p99 {at(0.99):.3f} ms, max {errors[-1]:.3f} ms")


if __name__ == "__main__":
    asyncio.run(measure(float(sys.argv[1]) if len(sys.argv) > 1 else 10.0))
