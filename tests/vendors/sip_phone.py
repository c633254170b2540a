"""A minimal SIP phone (UAC) on loopback for the vendor end-to-end tests: INVITE/ACK/BYE over UDP, RTP both ways.

Only what RFC 3261 asks of a UAC in the happy path plus answering the adapter's BYE; it records every RTP packet
it receives with its arrival time, and sends caller audio on an absolute 20 ms schedule.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
from dataclasses import dataclass, field

from bridge.media import Address
from bridge.rtp.packet import RtpPacket, TelephoneEvent


@dataclass
class SipMessage:
    first: str
    headers: list[tuple[str, str]]
    body: bytes

    @classmethod
    def parse(cls, data: bytes) -> SipMessage:
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
        return cls(lines[0], headers, body)

    def get(self, name: str) -> str:
        return next((v for k, v in self.headers if k == name), "")

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]

    @property
    def status(self) -> int:
        return int(self.first.split()[1]) if self.first.startswith("SIP/2.0") else 0

    @property
    def method(self) -> str:
        return "" if self.first.startswith("SIP/2.0") else self.first.split()[0]


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, sink: asyncio.Queue[tuple[float, bytes]]) -> None:
        self.sink = sink
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.sink.put_nowait((asyncio.get_running_loop().time(), data))


@dataclass
class Phone:
    """One call from a test phone to `target` (the adapter's SIP address)."""

    target: Address
    pt: int = 0
    sip_in: asyncio.Queue[tuple[float, bytes]] = field(default_factory=asyncio.Queue)
    rtp_in: asyncio.Queue[tuple[float, bytes]] = field(default_factory=asyncio.Queue)
    received: list[tuple[float, RtpPacket]] = field(default_factory=list)  # every RTP packet, arrival time
    sent_at: list[float] = field(default_factory=list)  # loop time each audio frame was sent
    bye_at: float | None = None  # when the adapter's BYE arrived
    remote_rtp: Address | None = None
    call_id: str = field(default_factory=lambda: f"phone-{random.getrandbits(48):x}")
    tag: str = field(default_factory=lambda: f"{random.getrandbits(32):x}")
    _sip: _Udp | None = None
    _rtp: _Udp | None = None
    _to: str = ""
    _contact: str = ""
    _cseq: itertools.count = field(default_factory=lambda: itertools.count(2))
    ssrc: int = field(default_factory=lambda: random.getrandbits(32))
    _seq: int = 0
    _ts: int = 0

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        _, self._sip = await loop.create_datagram_endpoint(lambda: _Udp(self.sip_in), local_addr=("127.0.0.1", 0))
        _, self._rtp = await loop.create_datagram_endpoint(lambda: _Udp(self.rtp_in), local_addr=("127.0.0.1", 0))

    def close(self) -> None:
        for udp in (self._sip, self._rtp):
            if udp is not None and udp.transport is not None:
                udp.transport.close()

    @property
    def sip_port(self) -> int:
        assert self._sip is not None and self._sip.transport is not None
        return self._sip.transport.get_extra_info("sockname")[1]

    @property
    def rtp_port(self) -> int:
        assert self._rtp is not None and self._rtp.transport is not None
        return self._rtp.transport.get_extra_info("sockname")[1]

    def _send_sip(self, text: str, body: str = "") -> None:
        assert self._sip is not None and self._sip.transport is not None
        data = (text.replace("\n", "\r\n") + f"Content-Length: {len(body)}\r\n\r\n" + body).encode()
        self._sip.transport.sendto(data, self.target)

    def _via(self) -> str:
        return f"Via: SIP/2.0/UDP 127.0.0.1:{self.sip_port};branch=z9hG4bK{random.getrandbits(40):x};rport\n"

    async def call(self, timeout: float = 5.0) -> int:
        """INVITE with a PCMU (or PCMA) offer; ACK a 2xx; returns the final status."""
        codec = "PCMU" if self.pt == 0 else "PCMA"
        sdp = (f"v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
               f"m=audio {self.rtp_port} RTP/AVP {self.pt} 101\r\na=rtpmap:{self.pt} {codec}/8000\r\n"
               "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n")
        uri = f"sip:ai@{self.target[0]}:{self.target[1]}"
        self._send_sip(
            f"INVITE {uri} SIP/2.0\n{self._via()}Max-Forwards: 70\nFrom: <sip:caller@127.0.0.1>;tag={self.tag}\n"
            f"To: <{uri}>\nCall-ID: {self.call_id}\nCSeq: 1 INVITE\n"
            f"Contact: <sip:caller@127.0.0.1:{self.sip_port}>\nContent-Type: application/sdp\n", sdp)
        async with asyncio.timeout(timeout):
            while True:
                _, data = await self.sip_in.get()
                msg = SipMessage.parse(data)
                if msg.status >= 200:
                    break
        if msg.status >= 300:
            self._ack(msg, uri)
            return msg.status
        self._to = msg.get("to")
        self._contact = re.search(r"<([^>]+)>", msg.get("contact")).group(1)  # type: ignore[union-attr]
        body = msg.body.decode()
        port = int(re.search(r"m=audio (\d+)", body).group(1))  # type: ignore[union-attr]
        host = re.search(r"c=IN IP4 (\S+)", body).group(1)  # type: ignore[union-attr]
        self.remote_rtp = (host, port)
        self._ack(msg, self._contact)
        return msg.status

    def _ack(self, response: SipMessage, uri: str) -> None:
        self._send_sip(
            f"ACK {uri} SIP/2.0\n{self._via()}Max-Forwards: 70\nFrom: <sip:caller@127.0.0.1>;tag={self.tag}\n"
            f"To: {response.get('to')}\nCall-ID: {self.call_id}\nCSeq: 1 ACK\n")

    async def hangup(self, timeout: float = 3.0) -> int:
        self._send_sip(
            f"BYE {self._contact} SIP/2.0\n{self._via()}Max-Forwards: 70\n"
            f"From: <sip:caller@127.0.0.1>;tag={self.tag}\nTo: {self._to}\nCall-ID: {self.call_id}\n"
            f"CSeq: {next(self._cseq)} BYE\n")
        async with asyncio.timeout(timeout):
            while True:
                _, data = await self.sip_in.get()
                msg = SipMessage.parse(data)
                if msg.status >= 200 and "BYE" in msg.get("cseq"):
                    return msg.status

    async def wait_bye(self, timeout: float = 10.0) -> float:
        """Wait for the adapter's BYE, answer 200, return its arrival time."""
        async with asyncio.timeout(timeout):
            while True:
                at, data = await self.sip_in.get()
                msg = SipMessage.parse(data)
                if msg.method == "BYE":
                    break
        vias = "".join(f"Via: {v}\n" for v in msg.all("via"))
        self._send_sip(f"SIP/2.0 200 OK\n{vias}From: {msg.get('from')}\nTo: {msg.get('to')}\n"
                       f"Call-ID: {msg.get('call-id')}\nCSeq: {msg.get('cseq')}\n")
        self.bye_at = at
        return at

    async def play(self, frames: list[bytes]) -> None:
        """Send RTP frames on an absolute 20 ms schedule."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for i, frame in enumerate(frames):
            await asyncio.sleep(max(0.0, t0 + i * 0.02 - loop.time()))
            self._send_rtp(self.pt, frame, marker=self._seq == 0)
            self.sent_at.append(loop.time())
            self._ts += 160

    async def dtmf(self, key: str) -> None:
        """One RFC 4733 key press: 60 ms of event packets, then the end packet three times."""
        event = "0123456789*#ABCD".index(key)
        for n in range(1, 4):
            self._send_rtp(101, TelephoneEvent(event, False, 10, n * 160).serialize(), marker=n == 1)
            await asyncio.sleep(0.02)
        for _ in range(3):
            self._send_rtp(101, TelephoneEvent(event, True, 10, 480).serialize())
        self._ts += 480

    def _send_rtp(self, pt: int, payload: bytes, marker: bool = False) -> None:
        assert self._rtp is not None and self._rtp.transport is not None and self.remote_rtp is not None
        packet = RtpPacket(pt, self._seq & 0xFFFF, self._ts & 0xFFFFFFFF, self.ssrc, payload, marker=marker)
        self._rtp.transport.sendto(packet.serialize(), self.remote_rtp)
        self._seq += 1

    def collect(self) -> list[tuple[float, RtpPacket]]:
        """Move what arrived into `received` and return it."""
        while not self.rtp_in.empty():
            at, data = self.rtp_in.get_nowait()
            self.received.append((at, RtpPacket.parse(data)))
        return self.received
