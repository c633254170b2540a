"""A call's RTP endpoint: the UDP socket from the port pool, the receive path, and the paced sender.

The sender is a TickListener of the shared clock: each tick it sends exactly one 160-byte frame (agent audio
from the Playout, or silence), so the stream never stops while the agent is quiet or reconnecting.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import socket
import struct
from collections.abc import Callable

from bridge.clock import Datagram
from bridge.errors import NoPortAvailable
from bridge.media import FRAME_SAMPLES, Address, MediaLeg
from bridge.rtp.playout import Playout
from bridge.rtp.session import Audio, Dtmf, RtpReceiver, RtpStats

log = logging.getLogger(__name__)

MAX_CATCHUP = 5  # frames sent back-to-back after a late tick; later than that, re-base (100 ms of burst at most)
_HEADER = struct.Struct("!BBHII")


class PortPool:
    """Even UDP ports of [low, high] handed out round-robin and returned when a call ends."""

    def __init__(self, low: int, high: int) -> None:
        self._free = list(range(low + (low & 1), high + 1, 2))
        random.shuffle(self._free)
        self._in_use: set[int] = set()

    def __len__(self) -> int:
        return len(self._free)

    def bind(self, host: str) -> socket.socket:
        """A UDP socket bound to a free port of the pool. Raises NoPortAvailable when none can be bound."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for _ in range(len(self._free)):
            port = self._free.pop(0)
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((host, port))
            except OSError as exc:
                sock.close()
                self._free.append(port)
                if exc.errno != errno.EADDRINUSE:
                    raise
                continue
            sock.setblocking(False)
            self._in_use.add(port)
            return sock
        raise NoPortAvailable(f"no free RTP port in the pool ({len(self._in_use)} in use)")

    def release(self, port: int) -> None:
        if port in self._in_use:
            self._in_use.remove(port)
            self._free.append(port)

    @property
    def in_use(self) -> frozenset[int]:
        return frozenset(self._in_use)


class RtpEndpoint(asyncio.DatagramProtocol):
    """Receives the caller's RTP and sends the agent's, one frame per clock tick."""

    def __init__(self, leg: MediaLeg, playout: Playout, on_media: Callable[[Audio | Dtmf], None]) -> None:
        self.leg = leg
        self.playout = playout
        self.receiver = RtpReceiver(leg.remote, leg.pt, leg.dtmf_payload_type, leg.raw)
        self.on_media = on_media
        self.sending = True
        self.transport: asyncio.DatagramTransport | None = None
        self.local_address: Address = ("0.0.0.0", 0)
        self._seq = random.getrandbits(16)
        self._ts = random.getrandbits(32)
        self.ssrc = random.getrandbits(32)
        self._last_tick: int | None = None
        self._talking = False
        self.rebased = 0
        self._closed = False
        self._sock: socket.socket | None = None
        self._sendto: Callable[[bytes, Address], object] = lambda data, address: None
        self.tap: Callable[[bytes], None] | None = None  # gets every frame the caller hears (a call recording)

    @property
    def stats(self) -> RtpStats:
        return self.receiver.stats

    async def open(self, sock: socket.socket) -> None:
        self._sock = sock  # owned from here on: close() releases it even if the open below is cancelled
        self.local_address = sock.getsockname()[:2]
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: self, sock=sock)
        self._sendto = sock.sendto  # the clock sends directly: UDP needs none of the transport's buffering

    def close(self) -> None:
        self._closed = True
        if self.transport is not None:
            self.transport.close()
        elif self._sock is not None:
            self._sock.close()

    def retarget(self, leg: MediaLeg) -> None:
        """New remote address or codec from the signalling: latch afresh."""
        self.leg = leg
        self.receiver.retarget(leg.remote)
        self.receiver.audio_pt = leg.pt
        self.receiver.dtmf_pt = leg.dtmf_payload_type
        self.receiver.raw = leg.raw

    # -- asyncio callbacks ------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        media = self.receiver.receive(data, addr[:2])
        if media is not None:
            self.on_media(media)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the peer may come back; RTP goes on.
        log.debug("! rtp %s: %s", self.local_address, exc)

    # -- the sender -------------------------------------------------------------------------------------------

    def on_tick(self, tick: int, out: list[Datagram]) -> None:
        """Queue this tick's frame in `out`; catch up missed ticks, or re-base after a long stall."""
        gap = 1 if self._last_tick is None else tick - self._last_tick
        self._last_tick = tick
        if gap > MAX_CATCHUP:
            self._ts = (self._ts + FRAME_SAMPLES * (gap - 1)) & 0xFFFFFFFF
            self.rebased += 1
            gap = 1
        for _ in range(gap):
            self._next_frame(out)

    def _next_frame(self, out: list[Datagram]) -> None:
        frame = self.playout.pop_frame()
        marker = False
        if frame is None:
            frame = self.playout.silence_frame
            self._talking = False
        elif not self._talking:
            self._talking = marker = True  # RFC 3551 §4.1: marker on the first packet of a talkspurt
        dest = self.receiver.peer or self.leg.remote
        if self.sending and dest is not None and not self._closed:
            if self.leg.raw:
                out.append((self._sendto, frame, dest))
            else:
                header = _HEADER.pack(0x80, marker << 7 | self.leg.pt, self._seq, self._ts, self.ssrc)
                out.append((self._sendto, header + frame, dest))
            self.stats.sent += 1
            self._seq = (self._seq + 1) & 0xFFFF
        elif self.tap is not None:
            frame = self.playout.silence_frame  # on hold or not yet reachable: the caller hears nothing
        if self.tap is not None:
            self.tap(frame)
        self._ts = (self._ts + FRAME_SAMPLES) & 0xFFFFFFFF
