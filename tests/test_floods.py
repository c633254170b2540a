"""Floods and slow clients against a live `sip-to-ai serve` process on loopback (issue 16, item 2).

One adapter process (SIP over UDP and TCP, ESL_LISTEN, ADMIN_LISTEN, echo agent, MAX_CALLS=1) carries one live
call while it is flooded: INVITEs beyond MAX_CALLS (503 with Retry-After), RTP from a foreign source at the live
call's port (dropped, counted in sip_to_ai_rtp_dropped_total{reason="foreign_source"}), junk datagrams at the
SIP port. The live call must lose nothing and its RTP in-count must be its own packets only; the figures (the
live call's interval error p99, memory before and after) are printed, not asserted on timing.

Slow clients: half-open and trickling SIP/TCP connections are closed after MESSAGE_TIMEOUT (shortened here by
launching `serve` with the module constant set), connections beyond MAX_STREAMS are closed at once, a
connection that spoke SIP stays; an ESL connection that never answers `connect` is closed after the command
timeout; the admin endpoint closes idle and trickling connections after its IDLE_TIMEOUT. Idle connections
beyond each listener's cap leave the process's FDs bounded: ESL (MAX_CALLS + CALL_HEADROOM) closes the new ones
at once, the admin endpoint (ADMIN_CONNECTIONS) the oldest ones, so that a scrape still gets through.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from bridge import listen
from bridge.bench import capacity
from bridge.bench.capacity import Adapter, BenchCall
from bridge.ops import admin
from bridge.pbx.esl.client import COMMAND_TIMEOUT
from bridge.sip.message import Response, parse
from tests.ops.harness import until

MESSAGE_TIMEOUT = 2.0
MAX_STREAMS = 20
LAUNCH = ("import sys, bridge.sip.transport as t; t.MESSAGE_TIMEOUT = float(sys.argv[1]); "
          "t.MAX_STREAMS = int(sys.argv[2]); from bridge.cli import main; sys.exit(main(['serve']))")
MB = 1 << 20


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Adapter, dict[str, int]]]:
    port, rtp = capacity.free_port(), capacity.free_port(8)
    ports = {"sip": port, "admin": free_tcp_port(), "esl": free_tcp_port()}
    env = {"SIP_PORT": str(port), "SIP_DOMAIN": "127.0.0.1", "SIP_TRANSPORT_TYPE": "both",
           "RTP_PORT_MIN": str(rtp), "RTP_PORT_MAX": str(rtp + 7), "MAX_CALLS": "1", "AI_VENDOR": "echo",
           "ADMIN_LISTEN": f"127.0.0.1:{ports['admin']}", "ESL_LISTEN": f"127.0.0.1:{ports['esl']}",
           "LOG_LEVEL": "WARNING", "LOG_FORMAT": "text", "SHUTDOWN_DRAIN_SEC": "0"}
    a = Adapter([sys.executable, "-c", LAUNCH, str(MESSAGE_TIMEOUT), str(MAX_STREAMS)], env, port)
    log = tmp_path_factory.mktemp("floods") / "adapter.log"
    a.start(log)
    try:
        asyncio.run(capacity.wait_sip(port))
        yield a, ports
    finally:
        a.stop()
        print(Path(log).read_text()[-3000:])


async def scrape(admin: int) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{admin}/metrics") as resp:
        text = await resp.text()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def invite(port: int, call_id: str, branch: str, local: int) -> bytes:
    body = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
    return (f"INVITE sip:echo@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{local};branch={branch}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:flood@127.0.0.1>;tag=f{call_id[:6]}\r\nTo: <sip:echo@127.0.0.1>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:flood@127.0.0.1:{local}>\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def ack(request: bytes, response: Response) -> bytes:
    """The ACK of a non-2xx final response (§17.1.1.3): the INVITE's first line and Via, the response's To."""
    head = request.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    lines = ["ACK" + head[0][len("INVITE"):]]
    for line in head[1:]:
        name = line.split(":", 1)[0].lower()
        if name == "to":
            lines.append("To: " + (response.get("to") or ""))
        elif name == "cseq":
            lines.append("CSeq: 1 ACK")
        elif name in ("via", "from", "call-id", "max-forwards"):
            lines.append(line)
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


async def invite_flood(port: int, n: int, per_burst: int = 50) -> tuple[dict[int, int], int]:
    """`n` INVITEs in bursts; every final response ACKed. ({status: count}, 503s with Retry-After)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    sock.setblocking(False)
    local = sock.getsockname()[1]
    sent: dict[str, bytes] = {}
    statuses: dict[int, int] = {}
    retry_after = 0
    loop = asyncio.get_running_loop()
    try:
        for k in range(0, n, per_burst):
            for _ in range(min(per_burst, n - k)):
                call_id = secrets.token_hex(8)
                sent[call_id] = invite(port, call_id, "z9hG4bK" + secrets.token_hex(6), local)
                sock.sendto(sent[call_id], ("127.0.0.1", port))
            await asyncio.sleep(0.02)
        done: set[str] = set()
        deadline, resend = loop.time() + 10, 0.5
        while len(done) < n and loop.time() < deadline:
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 65536), resend)
            except TimeoutError:  # a datagram lost in a full socket buffer: resent as Timer A does (§17.1.1.2)
                for call_id in sent.keys() - done:
                    sock.sendto(sent[call_id], ("127.0.0.1", port))
                resend *= 2
                continue
            msg = parse(data)
            call_id = msg.get("call-id") or ""
            if not isinstance(msg, Response) or msg.status < 200 or call_id in done or call_id not in sent:
                continue
            done.add(call_id)
            statuses[msg.status] = statuses.get(msg.status, 0) + 1
            retry_after += msg.status == 503 and (msg.get("retry-after") or "").strip().isdigit()
            if msg.status >= 300:
                sock.sendto(ack(sent[call_id], msg), ("127.0.0.1", port))
    finally:
        sock.close()
    return statuses, retry_after


def rtp_flood(dest: tuple[str, int], n: int) -> int:
    """`n` well-formed PCMU packets at `dest` from a port that is not the caller's, in bursts."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        for k in range(n):
            sock.sendto(struct.pack("!BBHII", 0x80, 0, k & 0xFFFF, k * 160, 0xBADC0DE) + b"\x00" * 160, dest)
            if k % 200 == 199:
                time.sleep(0.01)
    return n


def junk_flood(port: int, n: int) -> None:
    rng = np.random.default_rng(16)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for k in range(n):
            junk = rng.bytes(int(rng.integers(1, 1400))) if k % 2 else invite(port, f"junk{k}", "x", 9)[:k % 700]
            sock.sendto(junk, ("127.0.0.1", port))
            if k % 200 == 199:
                time.sleep(0.01)


def rss(a: Adapter) -> int:
    return a.rss_bytes()


@contextlib.asynccontextmanager
async def live_call(port: int, seconds: float) -> AsyncIterator[BenchCall]:
    """A SIP call to the echo agent with `seconds` of caller media, sent from now on; BYE once it is all sent."""
    live = BenchCall(f"sip:echo@127.0.0.1:{port}", "127.0.0.1")
    await live.open()
    try:
        assert await live.invite()
        listening = asyncio.create_task(live.listen())
        media = asyncio.create_task(capacity._send_media([live], seconds))
        try:
            yield live
            await media
        finally:
            media.cancel()
            listening.cancel()
        await live.bye()
    finally:
        live.close()


async def test_floods_leave_a_live_call_alone(adapter: tuple[Adapter, dict[str, int]]) -> None:
    a, ports = adapter
    port = ports["sip"]
    async with live_call(port, 8.0) as live:
        await asyncio.sleep(1.0)
        before, rss0 = await scrape(ports["admin"]), rss(a)
        statuses, retry_after = await invite_flood(port, 400)
        flooded = await asyncio.to_thread(rtp_flood, live.remote_rtp, 4000)
        await asyncio.to_thread(junk_flood, port, 2000)
    await asyncio.sleep(1.0)
    after, rss1 = await scrape(ports["admin"]), rss(a)
    errors, packets, lost = capacity.call_figures(live.rtp.arrivals)  # type: ignore[attr-defined]
    foreign = (after['sip_to_ai_rtp_dropped_total{reason="foreign_source"}']
               - before['sip_to_ai_rtp_dropped_total{reason="foreign_source"}'])
    rtp_in = after['sip_to_ai_rtp_packets_total{direction="in"}']
    load = await asyncio.to_thread(Path("/proc/loadavg").read_text)
    print("\n" + await asyncio.to_thread(capacity.floor, 2.0))  # the machine's own jitter, beside the call's
    print(f"\nINVITE flood: {statuses} ({retry_after} with Retry-After); live call: {packets} packets, lost {lost}, "
          f"interval error p99 {np.percentile(errors, 99):.2f} ms, max {errors.max():.2f} ms; foreign RTP sent "
          f"{flooded}, counted {foreign:.0f}; caller packets taken {rtp_in:.0f} of {live.figures.sent}; "
          f"rss {rss0 / MB:.1f} -> {rss1 / MB:.1f} MB; "
          f"loadavg {load.split()[:3]}")
    assert statuses == {503: 400} and retry_after == 400  # MAX_CALLS=1 held by the live call
    assert lost == 0 and packets > 200  # of 8 s of 20 ms frames less the warm-up second, echoed back
    assert 0 < foreign <= flooded
    # No foreign packet taken for the caller's: the in-count is the caller's own, less what the kernel dropped
    # from the shared socket buffer while the flood filled it (printed; loopback under load loses a few).
    assert live.figures.sent // 2 < rtp_in <= live.figures.sent
    assert rss1 - rss0 < 8 * MB
    await capacity.wait_sip(port, 5.0)  # the SIP port still answers


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(4096):
                pass
        return True
    except TimeoutError:
        return False


OPTIONS = ("OPTIONS sip:echo@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bK{}\r\n"
           "From: <sip:t@127.0.0.1>;tag=1\r\nTo: <sip:echo@127.0.0.1>\r\nCall-ID: {}\r\nCSeq: 1 OPTIONS\r\n"
           "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n")


async def options_over(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    tag = secrets.token_hex(6)
    writer.write(OPTIONS.format(tag, tag).encode())
    async with asyncio.timeout(3):
        return await reader.readuntil(b"\r\n\r\n")


async def test_slow_and_idle_connections_are_bounded_and_timed_out(adapter: tuple[Adapter, dict[str, int]]) -> None:
    a, ports = adapter
    fds0 = len(os.listdir(f"/proc/{a.proc.pid}/fd"))  # type: ignore[union-attr]
    talker = await asyncio.open_connection("127.0.0.1", ports["sip"])
    assert (await options_over(*talker)).startswith(b"SIP/2.0 200")
    half_open = [await asyncio.open_connection("127.0.0.1", ports["sip"]) for _ in range(MAX_STREAMS - 2)]
    trickler = await asyncio.open_connection("127.0.0.1", ports["sip"])
    extra = [await asyncio.open_connection("127.0.0.1", ports["sip"]) for _ in range(5)]
    esl = await asyncio.open_connection("127.0.0.1", ports["esl"])
    admin_idle = await asyncio.open_connection("127.0.0.1", ports["admin"])
    admin_slow = await asyncio.open_connection("127.0.0.1", ports["admin"])
    admin_slow[1].write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    timed_out = 'sip_to_ai_connections_dropped_total{listener="sip",reason="timeout"}'
    before = (await scrape(ports["admin"]))[timed_out]
    start = time.monotonic()

    async def trickle() -> None:
        with contextlib.suppress(OSError):
            for byte in OPTIONS.format("t", "t").encode():
                trickler[1].write(bytes([byte]))
                await asyncio.sleep(0.1)

    trickling = asyncio.create_task(trickle())
    try:
        assert all(await asyncio.gather(*(_closed_within(r, 1.0) for r, _ in extra)))  # beyond MAX_STREAMS
        assert all(await asyncio.gather(*(_closed_within(r, MESSAGE_TIMEOUT + 2) for r, _ in half_open)))
        assert await _closed_within(trickler[0], 2.0)
        assert MESSAGE_TIMEOUT - 0.5 < time.monotonic() - start < MESSAGE_TIMEOUT + 3
        assert (await options_over(*talker)).startswith(b"SIP/2.0 200")  # spoke SIP: kept past the timeout
        assert all(await asyncio.gather(_closed_within(esl[0], COMMAND_TIMEOUT + 3),  # got "connect", no reply
                                        _closed_within(admin_idle[0], admin.IDLE_TIMEOUT + 3),
                                        _closed_within(admin_slow[0], admin.IDLE_TIMEOUT + 3)))
        assert (await scrape(ports["admin"]))[timed_out] - before == len(half_open) + 1  # and the trickler
    finally:
        trickling.cancel()
        for _, w in [talker, *half_open, trickler, *extra, esl, admin_idle, admin_slow]:
            w.close()
    await until(lambda: len(os.listdir(f"/proc/{a.proc.pid}/fd")) <= fds0, 5.0)  # type: ignore[union-attr]


async def test_idle_floods_beyond_the_caps_keep_fds_bounded(adapter: tuple[Adapter, dict[str, int]]) -> None:
    a, ports = adapter
    esl_cap, admin_cap, extra = 1 + listen.CALL_HEADROOM, listen.ADMIN_CONNECTIONS, 12  # MAX_CALLS=1

    def fds() -> int:
        return len(os.listdir(f"/proc/{a.proc.pid}/fd"))  # type: ignore[union-attr]

    flood: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    async with live_call(ports["sip"], 3.0) as live:
        try:
            await asyncio.sleep(0.3)
            fds0 = fds()
            flood += [await asyncio.open_connection("127.0.0.1", ports["esl"]) for _ in range(esl_cap + extra)]
            flood += [await asyncio.open_connection("127.0.0.1", ports["admin"]) for _ in range(admin_cap + extra)]
            closed = await asyncio.gather(*(_closed_within(r, 1.0) for r, _ in flood))
            during = fds()
            scraped = await scrape(ports["admin"])  # admitted: the oldest idle admin connection goes for it
        finally:
            for _, w in flood:
                w.close()
    errors, packets, lost = capacity.call_figures(live.rtp.arrivals)  # type: ignore[attr-defined]
    print(f"\nidle flood: {esl_cap + extra} ESL, {admin_cap + extra} admin connections; adapter FDs {fds0} -> "
          f"{during}; live call {packets} packets, lost {lost}, interval error p99 {np.percentile(errors, 99):.2f} ms")
    assert closed[:esl_cap + extra] == [False] * esl_cap + [True] * extra  # new ones beyond the cap, at once
    assert closed[esl_cap + extra:] == [True] * extra + [False] * admin_cap  # the oldest, for the new ones
    assert during - fds0 <= esl_cap + admin_cap
    assert scraped['sip_to_ai_connections_dropped_total{listener="esl",reason="limit"}'] == extra
    assert scraped['sip_to_ai_connections_dropped_total{listener="admin",reason="evicted"}'] == extra + 1
    assert scraped['sip_to_ai_connections_open{listener="esl"}'] == esl_cap
    assert lost == 0 and packets > 50  # 3 s of 20 ms frames less the warm-up second, echoed back
    await until(lambda: fds() <= fds0, 5.0)
