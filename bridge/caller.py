"""The test caller (`sip-to-ai call`): a minimal SIP UAC with real 20 ms RTP that measures what it hears.

For each call: INVITE (retransmitted per Timer A) -> 200 -> ACK -> RTP both ways for N seconds -> BYE.
Figures: answer time, packets sent/received, loss, inter-arrival interval error, and the echo delay (the lag of
the cross-correlation peak between what was sent and what came back, for the echo agent).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import secrets
import sys
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bridge.codec import g711
from bridge.media import FRAME_SAMPLES, SAMPLE_RATE, Address, Codec
from bridge.rtp.packet import RtpPacket
from bridge.sip import grammar as g
from bridge.sip import message, sdp
from bridge.sip.message import NameAddr, Request, Response
from bridge.sip.transaction import T1, T2, TIMEOUT

FRAME = FRAME_SAMPLES / SAMPLE_RATE  # 20 ms
BYE_TIMEOUT = 5.0  # seconds we wait for the answer to our BYE before counting the call as ended anyway


@dataclass
class CallFigures:
    """What one test call measured."""

    status: int = 0  # the INVITE's final status; 0 = no answer at all
    answer_ms: float = 0.0
    sent: int = 0
    received: int = 0
    lost: int = 0
    interval_error_ms: list[float] = field(default_factory=list)  # |arrival gap - 20 ms| per packet
    echo_delay_ms: float | None = None
    ended_by: str = ""
    recorded: np.ndarray | None = None

    @property
    def answered(self) -> bool:
        return 200 <= self.status < 300

    @property
    def loss(self) -> float:
        expected = self.received + self.lost
        return self.lost / expected if expected else 0.0


class _Sip(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.inbox: asyncio.Queue[tuple[Request | Response, Address]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        with contextlib.suppress(message.SipParseError):
            self.inbox.put_nowait((message.parse(data), addr[:2]))


class RtpRecorder(asyncio.DatagramProtocol):
    """The far end of a call's RTP: records each packet with its arrival time (the bench's PBX side too)."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, RtpPacket]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        with contextlib.suppress(ValueError):
            self.arrivals.append((asyncio.get_running_loop().time(), RtpPacket.parse(data)))


class TestCall:
    """One UAC call: its SIP dialog and its RTP stream."""

    def __init__(self, target: str, local_host: str) -> None:
        hostport = g.uri_hostport(target)
        if hostport is None:
            raise ValueError(f"not a sip: URI: {target!r}")
        self.target, self.server = target, hostport
        self.local_host = local_host
        self.call_id = secrets.token_hex(8) + "@sip-to-ai-caller"
        self.tag = secrets.token_hex(4)
        self.cseq = 1
        self.sip, self.rtp = _Sip(), RtpRecorder()
        self.figures = CallFigures()
        self.remote_rtp: Address | None = None
        self.codec, self.pt = Codec.PCMU, 0
        self.to = f"<{target}>"
        self.route: list[str] = []
        self.remote_target = target
        self.ssrc = random.getrandbits(32)
        self.hung_up = asyncio.Event()

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self.sip, local_addr=(self.local_host, 0))
        await loop.create_datagram_endpoint(lambda: self.rtp, local_addr=(self.local_host, 0))

    def close(self) -> None:
        for proto in (self.sip, self.rtp):
            if proto.transport is not None:
                proto.transport.close()

    def _local(self, proto: _Sip | RtpRecorder) -> Address:
        assert proto.transport is not None
        return proto.transport.get_extra_info("sockname")[:2]

    def _request(self, method: str, uri: str, cseq: int, branch: str, body: bytes = b"") -> Request:
        host, port = self._local(self.sip)
        headers = [("via", f"SIP/2.0/UDP {host}:{port};branch={branch};rport"), ("max-forwards", "70"),
                   ("from", f"<sip:caller@{host}>;tag={self.tag}"), ("to", self.to), ("call-id", self.call_id),
                   ("cseq", f"{cseq} {method}"), ("contact", f"<sip:caller@{host}:{port}>")]
        headers += [("route", r) for r in self.route]
        if body:
            headers.append(("content-type", "application/sdp"))
        return Request(headers, body, method=method, uri=uri)

    def _send(self, req: Request, dest: Address) -> None:
        assert self.sip.transport is not None
        self.sip.transport.sendto(bytes(req), dest)

    async def invite(self) -> bool:
        """INVITE until a final response (Timer A/B); ACK it. True when answered."""
        loop = asyncio.get_running_loop()
        offer = sdp.build(sdp.default_offer(), self._local(self.rtp), random.getrandbits(31), 1, offer=True)
        branch = "z9hG4bK" + secrets.token_hex(8)
        req = self._request("INVITE", self.target, 1, branch, offer)
        start = loop.time()
        resp = await self._transact(req, self.server, invite=True)
        self.figures.answer_ms = (loop.time() - start) * 1000
        if resp is None:
            return False
        self.figures.status = resp.status
        if resp.status >= 300:
            ack = self._request("ACK", self.target, 1, branch)  # §17.1.1.3: same branch, the response's To
            ack.headers = [(n, resp.get("to") or v) if n == "to" else (n, v) for n, v in ack.headers]
            self._send(ack, self.server)
            return False
        self._learn_dialog(resp)
        self._ack()
        return True

    def _learn_dialog(self, resp: Response) -> None:
        self.to = resp.get("to") or self.to
        self.route = list(reversed(resp.values("record-route")))  # §12.1.2: the UAC reverses the route set
        contact = resp.values("contact")
        self.remote_target = NameAddr.parse(contact[0]).uri if contact else self.target
        answer = sdp.negotiate(sdp.SessionDescription.parse(resp.body))
        self.remote_rtp, self.codec, self.pt = answer.remote, answer.codec, answer.payload_type

    def _next_hop(self) -> Address:
        first = NameAddr.parse(self.route[0]).uri if self.route else self.remote_target
        return g.uri_hostport(first) or self.server

    def _ack(self) -> None:
        self._send(self._request("ACK", self.remote_target, 1, "z9hG4bK" + secrets.token_hex(8)), self._next_hop())

    async def _transact(self, req: Request, dest: Address, invite: bool = False) -> Response | None:
        """Send `req`, resend at T1 doubling (capped at T2 for non-INVITE) until a final response."""
        loop = asyncio.get_running_loop()
        deadline, interval, provisional = loop.time() + TIMEOUT, T1, False
        self._send(req, dest)
        while (left := deadline - loop.time()) > 0:
            try:
                async with asyncio.timeout(min(interval, left)):
                    msg, _ = await self.sip.inbox.get()
            except TimeoutError:
                if not provisional:
                    self._send(req, dest)
                interval = interval * 2 if invite else min(interval * 2, T2)
                continue
            if isinstance(msg, Request):
                self._on_request(msg)
            elif msg.get("call-id") == self.call_id and msg.cseq()[1] == req.method:
                if msg.status >= 200:
                    return msg
                provisional = True
        return None

    def _on_request(self, req: Request) -> None:
        """In-call requests from the adapter: its BYE ends the call; anything else gets 200."""
        assert self.sip.transport is not None
        via = message.Via.parse(req.values("via")[0])
        dest = (via.params.get("received") or via.host, int(via.params.get("rport") or 0) or via.port or 5060)
        if req.method != "ACK":
            self.sip.transport.sendto(bytes(message.response(req, 200)), dest)
        if req.method == "BYE":
            self.figures.ended_by = "adapter"
            self.hung_up.set()

    async def listen(self) -> None:
        """During the call: re-ACK retransmitted 200s, answer the adapter's requests."""
        while True:
            msg, _ = await self.sip.inbox.get()
            if isinstance(msg, Request):
                self._on_request(msg)
            elif msg.status == 200 and msg.cseq()[1] == "INVITE":
                self._ack()

    async def bye(self) -> None:
        self.cseq += 1
        req = self._request("BYE", self.remote_target, self.cseq, "z9hG4bK" + secrets.token_hex(8))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(BYE_TIMEOUT):
                await self._transact(req, self._next_hop())
        self.figures.ended_by = "caller"

    def send_frame(self, index: int, pcm: np.ndarray) -> None:
        """Frame `index` of the call's audio (looped)."""
        assert self.rtp.transport is not None and self.remote_rtp is not None
        start = (index * FRAME_SAMPLES) % max(len(pcm) - FRAME_SAMPLES + 1, 1)
        payload = g711.encode(self.codec, pcm[start:start + FRAME_SAMPLES])
        packet = RtpPacket(self.pt, index & 0xFFFF, (index * FRAME_SAMPLES) & 0xFFFFFFFF, self.ssrc, payload,
                           marker=index == 0)
        self.rtp.transport.sendto(packet.serialize(), self.remote_rtp)
        self.figures.sent += 1


async def run_call(call: TestCall, seconds: float, pcm: np.ndarray, record: bool) -> CallFigures:
    """Place one call, stream `seconds` of `pcm` on an absolute 20 ms schedule, hang up, measure."""
    await call.open()
    try:
        if not await call.invite():
            return call.figures
        loop = asyncio.get_running_loop()
        listener = asyncio.create_task(call.listen())
        try:
            t0 = loop.time()
            frames = int(round(seconds / FRAME))
            for n in range(frames):
                if call.hung_up.is_set():
                    break
                await asyncio.sleep(max(0.0, t0 + n * FRAME - loop.time()))
                call.send_frame(n, pcm)
            await asyncio.sleep(0.3)  # the echo of the last frames
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        if not call.hung_up.is_set():
            await call.bye()
        _measure(call.figures, call.rtp.arrivals, call.codec, pcm[: call.figures.sent * FRAME_SAMPLES], t0, record)
        return call.figures
    finally:
        call.close()


def _measure(fig: CallFigures, arrivals: list[tuple[float, RtpPacket]], codec: Codec, sent: np.ndarray,
             t0: float, record: bool) -> None:
    audio = [(t, p) for t, p in arrivals if p.payload_type in (0, 8)]
    fig.received = len(audio)
    if not audio:
        return
    seqs = np.unwrap(np.array([p.sequence for _, p in audio], dtype=float), period=65536)
    fig.lost = max(0, int(seqs.max() - seqs.min() + 1) - len(set(seqs.tolist())))
    times = np.array([t for t, _ in audio])
    fig.interval_error_ms = (np.abs(np.diff(times) - FRAME) * 1000).tolist()
    ts0 = audio[0][1].timestamp
    length = int(max((p.timestamp - ts0) & 0xFFFFFFFF for _, p in audio)) + FRAME_SAMPLES
    heard = np.zeros(length, dtype=np.float64)
    for _, p in audio:
        offset = (p.timestamp - ts0) & 0xFFFFFFFF
        heard[offset:offset + len(p.payload)] = g711.decode(codec, p.payload)[: length - offset]
    if record:
        fig.recorded = heard.astype(np.int16)
    fig.echo_delay_ms = echo_delay_ms(sent.astype(np.float64), heard, times[0] - t0)


def echo_delay_ms(sent: np.ndarray, heard: np.ndarray, heard_starts_after: float) -> float | None:
    """The lag of the cross-correlation peak of `heard` against `sent`, plus where `heard` starts, in ms.

    None when nothing correlates (no echo: a real agent, or silence came back).
    """
    if len(sent) < FRAME_SAMPLES or len(heard) < FRAME_SAMPLES or not heard.any():
        return None
    n = 1 << int(np.ceil(np.log2(len(sent) + len(heard))))
    corr = np.fft.irfft(np.fft.rfft(heard, n) * np.conj(np.fft.rfft(sent, n)), n)
    lag = int(np.argmax(corr[: len(heard)]))
    peak = corr[lag] / (np.linalg.norm(sent) * np.linalg.norm(heard) + 1e-9)
    if peak < 0.1:
        return None
    return (heard_starts_after + lag / SAMPLE_RATE) * 1000  # heard[k + lag] is sent[k]


async def place_calls(target: str, calls: int = 1, seconds: float = 5.0, pcm: np.ndarray | None = None,
                      record: bool = False, local_host: str = "127.0.0.1") -> list[CallFigures]:
    """Place `calls` concurrent test calls to `target` and return each call's figures."""
    if pcm is None:
        pcm = noise_signal(seconds)
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(run_call(TestCall(target, local_host), seconds, pcm, record)) for _ in range(calls)]
    return [t.result() for t in tasks]


def noise_signal(seconds: float, seed: int = 4475) -> np.ndarray:
    """Noise at a speech-like level: its autocorrelation has one sharp peak, so the echo delay is unambiguous."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(0, 3000, int(seconds * SAMPLE_RATE) + FRAME_SAMPLES), -32767, 32767).astype(np.int16)


def read_wav(path: Path) -> np.ndarray:
    """A 16-bit WAV as 8 kHz mono PCM (first channel, resampled if needed)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")[:: w.getnchannels()]
        rate = w.getframerate()
    if rate != SAMPLE_RATE:
        from scipy.signal import resample_poly

        data = resample_poly(data.astype(np.float64), SAMPLE_RATE, rate).clip(-32767, 32767).astype(np.int16)
    return data


def write_wav(path: Path, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.astype("<i2").tobytes())


def summary(figures: list[CallFigures]) -> list[str]:
    """The lines `sip-to-ai call` prints."""
    answered = [f for f in figures if f.answered]
    lines = [f"calls: {len(figures)}, answered: {len(answered)}"
             + (f" (statuses {sorted({f.status for f in figures if not f.answered})})" if len(answered) < len(figures)
                else "")]
    if not answered:
        return lines
    ans = np.array([f.answer_ms for f in answered])
    errors = np.array([e for f in answered for e in f.interval_error_ms] or [0.0])
    sent, received, lost = (sum(getattr(f, k) for f in answered) for k in ("sent", "received", "lost"))
    lines.append(f"answer time ms: p50 {np.percentile(ans, 50):.1f}, max {ans.max():.1f}")
    loss = 100 * lost / max(received + lost, 1)
    lines.append(f"packets: sent {sent}, received {received}, lost {lost} ({loss:.2f}%)")
    lines.append(f"inter-arrival interval error ms: p50 {np.percentile(errors, 50):.2f}, "
                 f"p99 {np.percentile(errors, 99):.2f}, max {errors.max():.2f}")
    delays = [f.echo_delay_ms for f in answered if f.echo_delay_ms is not None]
    if delays:
        lines.append(f"echo delay ms: p50 {np.percentile(delays, 50):.1f}, max {max(delays):.1f} "
                     f"({len(delays)}/{len(answered)} calls echoed)")
    else:
        lines.append("echo delay: no echo detected (not the echo agent?)")
    lines.append("ended by: " + ", ".join(sorted({f.ended_by or "?" for f in answered})))
    return lines


def main(argv: list[str]) -> int:
    """`sip-to-ai call sip:user@host:port [--play in.wav] [--record out.wav] [--seconds N] [--calls N]`."""
    parser = argparse.ArgumentParser(prog="sip-to-ai call", description="Place test calls and print their figures.")
    parser.add_argument("target", help="sip:user@host:port")
    parser.add_argument("--play", type=Path, help="16-bit WAV to send (default: a noise test signal)")
    parser.add_argument("--record", type=Path, help="write what came back (first call) to this WAV")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--local", default="127.0.0.1", help="local address to send from")
    args = parser.parse_args(argv)
    pcm = read_wav(args.play) if args.play else None
    figures = asyncio.run(place_calls(args.target, args.calls, args.seconds, pcm, bool(args.record), args.local))
    for line in summary(figures):
        print(line)
    if args.record and figures and figures[0].recorded is not None:
        write_wav(args.record, figures[0].recorded)
        print(f"recorded: {args.record}")
    return 0 if figures and all(f.answered for f in figures) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
