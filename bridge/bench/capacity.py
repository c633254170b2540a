"""How many concurrent calls one adapter process carries, per vendor path: `python -m bridge.bench capacity`.

Three kinds of process, as in production: the adapter (`sip-to-ai serve`, or any command given), the fake
vendor (tests/fakes, on loopback) and the caller. The caller places N SIP calls, sends 20 ms G.711 frames
on every call from one paced loop, and stamps each packet it receives with the kernel's receive time
(SO_TIMESTAMPNS), so its own scheduling does not show in the figures. A run passes when every call's
interval error p99 (|arrival gap - 20 ms x sequence step|) is within the limit and no packet is lost.
The adapter's CPU time and memory come from /proc/<pid> over the measured window only (calls up).

The fake vendor talks like a real one: each session gets a reply every few seconds (half the time the
agent speaks), streamed faster than real time in uneven chunks, so both directions carry audio.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from bridge.caller import TestCall
from bridge.codec import g711
from bridge.media import Codec

FRAME = 0.020
WARMUP = 1.0  # seconds of each call's arrivals left out (answer, vendor greeting)
P99_LIMIT_MS = 2.0
PROBE_INTERVAL = 3  # dialplan/kamailio.cfg: ds_ping_interval
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
KEYS = {"openai": "sk-bench-0123456789", "deepgram": "dg-bench-0123456789", "gemini": "gm-bench-0123456789"}
REPLY_SECONDS = 2.0  # each agent reply; one starts every 2 x REPLY_SECONDS per call
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# ---- the fake vendor process ----------------------------------------------------------------------------


def _vendor_main(kind: str, conn: Connection, mix: bool = False) -> None:
    warnings.simplefilter("ignore", RuntimeWarning)  # replies cut short at the end of a run are never awaited
    asyncio.run(_vendor(kind, conn, mix))


async def _vendor(kind: str, conn: Connection, mix: bool = False) -> None:
    """Run the fake `kind` until the parent says stop; send back its URL first, and its tool figures whenever
    the parent sends "tools". With `mix`, every session also takes, now and then, one of the vendor's upsets (a
    barge-in, a call of the prompt's TOOL, a dropped socket, a goAway) between replies."""
    loop = asyncio.get_running_loop()
    speech = g711.encode(Codec.PCMU, (np.random.default_rng(1).normal(0, 3000, int(8000 * REPLY_SECONDS)))
                         .clip(-32767, 32767).astype(np.int16))
    talkers: set[asyncio.Task[None]] = set()
    turns = itertools.count()  # the upsets taken, over every session: each kind gets its share
    async with _fake(kind) as (tool_figures, url, sessions, talk, upsets):
        conn.send(url)
        seen = 0
        asked = loop.run_in_executor(None, conn.recv)
        while True:
            for s in sessions()[seen:]:
                task = loop.create_task(_talker(talk, s, speech, upsets if mix else [], turns))
                talkers.add(task)
                task.add_done_callback(talkers.discard)
            seen = len(sessions())
            await asyncio.wait([asked], timeout=0.1)
            if asked.done():
                if asked.exception() is not None or asked.result() != "tools":
                    break
                conn.send(tool_figures())
                asked = loop.run_in_executor(None, conn.recv)
        for task in list(talkers):
            task.cancel()


async def _talker(talk, session, speech: bytes, upsets: list, turns: Iterator[int]) -> None:  # type: ignore[no-untyped-def]
    await asyncio.sleep(random.uniform(0, 2 * REPLY_SECONDS))
    with contextlib.suppress(Exception):  # the call ended under it, or an upset cut the connection
        while True:
            await talk(session, speech)
            if upsets:  # in turn; a drop or goAway ends this talker (the new connection gets its own)
                await upsets[next(turns) % len(upsets)](session, speech)
            await asyncio.sleep(REPLY_SECONDS)


# The harmless tool of the mix: declared in the prompt file (AGENT_PROMPT_FILE) as a user would; the bridge runs
# nothing for it, so it answers {"ok": false, ...} and the model goes on (counted as outcome "unavailable").
TOOL = {"name": "opening_hours", "description": "The shop's opening hours on a given day.",
        "parameters": {"type": "object", "properties": {"day": {"type": "string"}}, "required": []}}
TOOL_WAIT = 5.0  # seconds a fake waits for the bridge's answer to its tool call
AT_HANGUP = 1.0  # an answer this close before its connection closed came as the call ended: the bridge may have
# sent it while closing, after the call stopped reading its agent's events (so not counted in its metrics)


@contextlib.asynccontextmanager
async def _fake(kind: str):  # type: ignore[no-untyped-def]
    """(tool_figures(), url, sessions(), talk(session, g711), upsets) for one vendor kind; each upset(session,
    g711). tool_figures() is {"called": TOOL calls sent on a live connection, "answered": answers received,
    "at_hangup": answers followed by their connection's close within AT_HANGUP} over every session."""
    tally = collections.Counter[str]()  # called, at_hangup
    if kind == "openai":
        from tests.fakes.openai_realtime import FakeRealtime

        fake = FakeRealtime(KEYS[kind], speed=2.0, check_server=False, check_audio=False)  # one core carries more
        url = await fake.start()

        async def talk(s, audio: bytes) -> None:  # type: ignore[no-untyped-def]
            await s.updated.wait()
            resp = s.respond(audio)
            await resp.task
            await asyncio.sleep(REPLY_SECONDS / 2)  # streamed at 2x: the rest of it plays

        async def barge(s, audio: bytes) -> None:  # type: ignore[no-untyped-def]
            s.respond(audio)
            await asyncio.sleep(REPLY_SECONDS / 4)
            await s.speech_started()  # interrupt_response cancels the reply mid-stream

        async def use_tool(s, audio: bytes) -> None:  # type: ignore[no-untyped-def]
            if _declared([t.get("name") for t in s.config.get("tools", [])]):
                before = len(s.tool_outputs)
                resp = s.call_tool(TOOL["name"], {"day": "today"})
                await resp.task  # the function_call output item, then response.done: the bridge answers and
                await _tool_answered(s, lambda: len(s.tool_outputs) > before, tally)
                await _until(lambda: s.response is not resp and s.response.done)  # asks a response, played out

        try:
            yield (lambda: _figures(tally, fake.sessions, "tool_outputs"), url, lambda: fake.sessions, talk,
                   [barge, use_tool, _drop])
        finally:
            await fake.stop()
    elif kind == "deepgram":
        from tests.fakes.deepgram_agent import FakeDeepgram

        async with FakeDeepgram(KEYS[kind], speak_greeting=False) as dg:
            async def talk(c, audio: bytes) -> None:  # type: ignore[no-untyped-def]
                await c.applied.wait()
                await c.speak(audio)
                await asyncio.sleep(REPLY_SECONDS)

            async def barge(c, audio: bytes) -> None:  # type: ignore[no-untyped-def]
                await c.speak(audio, done=False)
                await c.barge_in()

            async def use_tool(c, audio: bytes) -> None:  # type: ignore[no-untyped-def]
                if _declared([f.get("name") for f in c.settings["agent"]["think"].get("functions", [])]):
                    fid = await c.function_call(TOOL["name"], {"day": "today"})
                    await _tool_answered(c, lambda: fid in c.responses, tally)

            yield (lambda: _figures(tally, dg.connections, "responses"), dg.url, lambda: dg.connections, talk,
                   [barge, use_tool, _drop])
    elif kind == "gemini":
        from tests.fakes.gemini_live import FakeGeminiLive

        async with FakeGeminiLive(KEYS[kind], answer_turns=False) as gm:
            async def talk(c, audio: bytes) -> None:  # type: ignore[no-untyped-def]
                await c.ready.wait()
                await c.speak(REPLY_SECONDS)
                await asyncio.sleep(REPLY_SECONDS)

            async def barge(c, audio: bytes) -> None:  # type: ignore[no-untyped-def]
                speaking = asyncio.ensure_future(c.speak(REPLY_SECONDS))
                await asyncio.sleep(REPLY_SECONDS / 4)
                speaking.cancel()
                await c.interrupt()

            async def use_tool(c, audio: bytes) -> None:  # type: ignore[no-untyped-def]
                if _declared([f.get("name") for t in c.setup.get("tools", []) for f in t.get("functionDeclarations",
                                                                                              [])]):
                    fid = await c.tool_call(TOOL["name"], {"day": "today"})
                    await _tool_answered(c, lambda: fid in c.tool_responses, tally)

            async def go_away(c, audio: bytes) -> None:  # type: ignore[no-untyped-def]
                await c.go_away()  # the bridge resumes on a new connection; this one is over
                raise ConnectionResetError("moved")

            yield (lambda: _figures(tally, gm.connections, "tool_responses"), gm.url, lambda: gm.connections, talk,
                   [barge, use_tool, go_away, _drop])
    else:
        raise ValueError(kind)


def _declared(names: list[str]) -> bool:
    """Whether the session declared TOOL (a model calls only the tools it was given)."""
    return TOOL["name"] in names


def _figures(tally: collections.Counter[str], sessions: list, answers: str) -> dict[str, int]:  # type: ignore[type-arg]
    """The tool figures: the tally, and the answers every session's fake connection holds in `answers`."""
    return {"called": tally["called"], "answered": sum(len(getattr(s, answers)) for s in sessions),
            "at_hangup": tally["at_hangup"]}


async def _tool_answered(session, answered, tally: collections.Counter[str]) -> None:  # type: ignore[no-untyped-def]
    """A tool call just sent: counted when its connection was still up, then waited for until the bridge has
    answered; counted at_hangup when the connection closes within AT_HANGUP after."""
    if session.closed.is_set():
        return  # the call ended first: nothing went out (and the talker ends at its next step)
    tally["called"] += 1
    await _until(answered)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(AT_HANGUP):
            await session.closed.wait()
        tally["at_hangup"] += 1


async def _until(predicate) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(TOOL_WAIT):
        while not predicate():
            await asyncio.sleep(0.01)


async def _drop(session, audio: bytes) -> None:  # type: ignore[no-untyped-def]
    """A network failure: the adapter must reconnect and the call go on."""
    await session.drop()
    raise ConnectionResetError("dropped")


def vendor_env(kind: str, url: str) -> dict[str, str]:
    """The adapter settings that point `kind` at its fake."""
    if kind == "echo":
        return {"AI_VENDOR": "echo"}
    env = {"AI_VENDOR": kind, f"{kind.upper()}_API_KEY": KEYS[kind], f"{kind.upper()}_WS_ENDPOINT": url}
    if kind == "gemini":
        env["GEMINI_MODEL"] = "gemini-test-live"
    return env


# ---- the caller process ---------------------------------------------------------------------------------


class _StampedRtp:
    """The caller's RTP socket, read with kernel receive timestamps; looks like a datagram transport to TestCall."""

    def __init__(self, host: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.setblocking(False)
        self.transport = self
        self.arrivals: list[tuple[int, int]] = []  # (kernel ns, RTP sequence)
        self.ssrc: bytes | None = None  # the stream measured: the first one heard
        self.foreign = 0  # packets of any other stream (another call's audio sent here)

    def get_extra_info(self, name: str) -> object:
        return self.sock.getsockname() if name == "sockname" else None

    def sendto(self, data: bytes, address: tuple[str, int]) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendto(data, address)

    def read(self) -> None:
        while True:
            try:
                data, anc, _, _ = self.sock.recvmsg(2048, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(data) < 12 or data[1] & 0x7F not in (0, 8):
                continue
            if self.ssrc is None:
                self.ssrc = data[8:12]
            elif data[8:12] != self.ssrc:
                self.foreign += 1
                continue
            for _, kind, d in anc:
                if kind == SO_TIMESTAMPNS:
                    sec, ns = struct.unpack("qq", d[:16])
                    self.arrivals.append((sec * 1_000_000_000 + ns, struct.unpack_from("!H", data, 2)[0]))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


class BenchCall(TestCall):
    """A TestCall (SIP as `sip-to-ai call` does it) whose RTP is kernel-stamped."""

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self.sip, local_addr=(self.local_host, 0))
        self.rtp = _StampedRtp(self.local_host)  # type: ignore[assignment]
        loop.add_reader(self.rtp.sock.fileno(), self.rtp.read)  # type: ignore[attr-defined]


@dataclass
class CallerResult:
    calls: int = 0
    answered: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    worst_p99_ms: float = 0.0  # the largest per-call p99
    p99_ms: float = 0.0  # over every interval of every call
    max_ms: float = 0.0
    received: int = 0
    lost: int = 0
    foreign: int = 0  # packets of another stream on a call's socket (another call's audio)
    window: float = 0.0  # seconds all calls were up together


def call_figures(arrivals: list[tuple[int, int]], window: tuple[int, int] | None = None
                 ) -> tuple[np.ndarray, int, int]:
    """(interval errors in ms, packets, lost) of one call after its warm-up, within `window` (kernel-stamp ns)."""
    if len(arrivals) < 3:
        return np.zeros(0), len(arrivals), 0
    t = np.array([a for a, _ in arrivals], dtype=np.int64)
    seq = np.unwrap(np.array([s for _, s in arrivals], dtype=np.float64), period=65536)
    keep = t >= t[0] + int(WARMUP * 1e9)
    if window is not None:
        keep &= (t >= window[0]) & (t <= window[1])
    t, seq = t[keep], seq[keep]
    if len(t) < 3:
        return np.zeros(0), len(t), 0
    steps = np.diff(seq)
    errors = np.abs(np.diff(t) / 1e6 - 20.0 * steps)
    lost = max(0, int(seq.max() - seq.min() + 1) - len(np.unique(seq)))
    return errors, len(t), lost


def _caller_main(target: str, n: int, seconds: float, conn: Connection) -> None:
    conn.send(asyncio.run(_caller(target, n, seconds, conn)))


async def _caller(target: str, n: int, seconds: float, conn: Connection) -> CallerResult:
    calls = [BenchCall(target, "127.0.0.1") for _ in range(n)]
    result = CallerResult(calls=n)
    gate = asyncio.Semaphore(50)  # INVITEs in flight at once: a burst of hundreds is not what is measured

    async def invite(c: BenchCall) -> bool:
        async with gate:
            await c.open()
            return await c.invite()

    try:
        answered = await asyncio.gather(*(invite(c) for c in calls))
        up = [c for c, ok in zip(calls, answered, strict=True) if ok]
        for c in calls:
            result.statuses[c.figures.status] = result.statuses.get(c.figures.status, 0) + 1
        result.answered = len(up)
        listeners = [asyncio.create_task(c.listen()) for c in up]
        conn.send("up")
        start, up_ns = time.monotonic(), time.time_ns()  # SO_TIMESTAMPNS stamps are CLOCK_REALTIME
        await _send_media(up, seconds)
        result.window = time.monotonic() - start
        # measured while every call is up: after the warm-up that follows the last answer, until the media
        # stops (the setup of hundreds of calls and their BYEs are call-rate work, not the steady beat)
        window = (up_ns + int(WARMUP * 1e9), time.time_ns())
        conn.send("down")
        for task in listeners:
            task.cancel()
        await asyncio.gather(*(c.bye() for c in up if not c.hung_up.is_set()), return_exceptions=True)
        per_call = [call_figures(c.rtp.arrivals, window) for c in up]  # type: ignore[attr-defined]
        errors = [e for e, _, _ in per_call if len(e)]
        result.received = sum(p for _, p, _ in per_call)
        result.lost = sum(lost for _, _, lost in per_call)
        result.foreign = sum(c.rtp.foreign for c in up)  # type: ignore[attr-defined]
        if errors:
            result.worst_p99_ms = max(float(np.percentile(e, 99)) for e in errors)
            flat = np.concatenate(errors)
            result.p99_ms, result.max_ms = float(np.percentile(flat, 99)), float(flat.max())
        if len(errors) < len(up):
            result.worst_p99_ms = float("inf")  # a call that heard nothing
    finally:
        for c in calls:
            c.close()
    return result


async def _send_media(calls: list[BenchCall], seconds: float) -> None:
    """One frame per call every 20 ms on an absolute schedule, from one loop (not one task per call)."""
    loop = asyncio.get_running_loop()
    pcm = np.random.default_rng(4475).normal(0, 3000, 8000).clip(-32767, 32767).astype(np.int16)
    payloads = [g711.encode(Codec.PCMU, pcm[i:i + 160]) for i in range(0, 8000, 160)]
    t0 = loop.time()
    for k in range(int(seconds / FRAME)):
        await asyncio.sleep(max(0.0, t0 + k * FRAME - loop.time()))
        payload = payloads[k % len(payloads)]
        for c in calls:
            header = struct.pack("!BBHII", 0x80 | 0, c.pt | (0x80 if k == 0 else 0), k & 0xFFFF,
                                 (k * 160) & 0xFFFFFFFF, c.ssrc)
            c.rtp.transport.sendto(header + payload, c.remote_rtp)  # type: ignore[union-attr,arg-type]
            c.figures.sent += 1


# ---- the adapter process --------------------------------------------------------------------------------


def free_port(run: int = 1) -> int:
    """A UDP port p on 127.0.0.1 with p .. p + run - 1 all free (probed, not held)."""
    for _ in range(100):
        with contextlib.ExitStack() as held:
            first = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            try:
                for k in range(1, run):
                    held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)).bind(("127.0.0.1", port + k))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no {run} consecutive free UDP ports")


@dataclass
class Adapter:
    """A command that serves SIP on `port` (sip-to-ai, or another implementation to compare)."""

    argv: list[str]
    env: dict[str, str]
    port: int
    cwd: str | None = None
    answers_options: bool = True  # else ready once its SIP port is bound (the original answers no OPTIONS)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, log: Path) -> None:
        self.proc = subprocess.Popen(self.argv, env={**os.environ, **self.env}, cwd=self.cwd,
                                     stdin=subprocess.DEVNULL, stdout=log.open("ab"), stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime

    def rss_bytes(self) -> int:
        assert self.proc is not None
        return int(Path(f"/proc/{self.proc.pid}/statm").read_text().split()[1]) * PAGE


def sip_to_ai(port: int, rtp: tuple[int, int], env: dict[str, str]) -> Adapter:
    """This project's adapter: `python -m bridge serve` with SIP on `port`."""
    base = {"SIP_PORT": str(port), "SIP_DOMAIN": "127.0.0.1", "RTP_PORT_MIN": str(rtp[0]), "RTP_PORT_MAX": str(rtp[1]),
            "MAX_CALLS": "2000", "LOG_LEVEL": "WARNING", "LOG_FORMAT": "text", "SHUTDOWN_DRAIN_SEC": "0",
            "ADMIN_LISTEN": f"127.0.0.1:{free_port()}"}
    return Adapter([sys.executable, "-m", "bridge", "serve"], {**base, **env}, port)


async def wait_sip(port: int, timeout: float = 20.0) -> None:
    """Until something answers SIP OPTIONS on 127.0.0.1:`port`."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        me = s.getsockname()[1]
        deadline = loop.time() + timeout
        n = 0
        while loop.time() < deadline:
            n += 1
            s.sendto((f"OPTIONS sip:probe@127.0.0.1:{port} SIP/2.0\r\n"
                      f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bKp{n}\r\nMax-Forwards: 70\r\n"
                      f"From: <sip:bench@127.0.0.1>;tag=b{n}\r\nTo: <sip:probe@127.0.0.1>\r\n"
                      f"Call-ID: probe{n}@bench\r\nCSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n").encode(),
                     ("127.0.0.1", port))
            await asyncio.sleep(0.2)
            with contextlib.suppress(BlockingIOError):
                if s.recv(4096).startswith(b"SIP/2.0"):
                    return
    raise TimeoutError(f"nothing answered SIP OPTIONS on port {port} within {timeout:g} s")


async def wait_bound(port: int, timeout: float = 20.0) -> None:
    """Until something holds UDP 127.0.0.1:`port`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                await asyncio.sleep(0.5)  # bound: give it a moment to finish starting
                return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"nothing bound UDP port {port} within {timeout:g} s")


# ---- one run --------------------------------------------------------------------------------------------


@dataclass
class Run:
    label: str
    path: str
    calls: int
    result: CallerResult
    cpu: float  # adapter CPU seconds over the window (all processes summed)
    rss_per_call: float  # bytes
    load: str

    @property
    def cpu_per_call_minute(self) -> float:
        return self.cpu / (self.result.answered * self.result.window / 60) if self.result.answered else float("nan")

    @property
    def passed(self) -> bool:
        r = self.result
        return r.answered == r.calls and r.lost == 0 and r.foreign == 0 and r.worst_p99_ms <= P99_LIMIT_MS


@dataclass
class VendorProcess:
    """A fake vendor running in its own process: its URL ('' for echo), and what its tool calls got."""

    url: str
    conn: Connection | None = None

    def tool_figures(self) -> dict[str, int]:
        """{"called": TOOL calls the fake made, "answered": answers it received} so far ({} for echo)."""
        if self.conn is None:
            return {}
        self.conn.send("tools")
        if not self.conn.poll(10):
            raise RuntimeError("the fake vendor did not report its tool calls")
        return self.conn.recv()


@contextlib.contextmanager
def vendor_process(kind: str, mix: bool = False) -> Iterator[VendorProcess]:
    """The fake vendor in its own process (with `mix`: barge-ins, tool calls, drops, goAways; see `_vendor`)."""
    if kind == "echo":
        yield VendorProcess("")
        return
    parent, child = mp.get_context("fork").Pipe()
    proc = mp.get_context("fork").Process(target=_vendor_main, args=(kind, child, mix), daemon=True)
    proc.start()
    try:
        if not parent.poll(20):
            raise RuntimeError(f"the fake {kind} did not start")
        yield VendorProcess(parent.recv(), parent)
    finally:
        with contextlib.suppress(Exception):
            parent.send("stop")
        proc.join(5)
        if proc.is_alive():
            proc.kill()


def measure(label: str, path: str, adapters: list[Adapter], target_port: int, n: int, seconds: float,
            workdir: Path, profile: Path | None = None) -> Run:
    """Start `adapters`, place `n` calls at `target_port` for `seconds`, stop everything; the figures."""
    for a in adapters:
        a.start(workdir / f"adapter-{a.port}.log")
    spy = None
    try:
        for a in adapters:
            asyncio.run(wait_sip(a.port) if a.answers_options else wait_bound(a.port))
        if target_port not in [a.port for a in adapters]:  # a proxy: its OPTIONS probes must see them up
            asyncio.run(wait_sip(target_port))
            time.sleep(PROBE_INTERVAL + 1)
        rss0 = sum(a.rss_bytes() for a in adapters)
        parent, child = mp.get_context("fork").Pipe()
        caller = mp.get_context("fork").Process(target=_caller_main,
                                                args=(f"sip:service@127.0.0.1:{target_port}", n, seconds, child))
        caller.start()
        try:
            if not parent.poll(60 + n / 5) or parent.recv() != "up":
                raise RuntimeError("the calls were not set up in time")
            cpu0 = sum(a.cpu_seconds() for a in adapters)
            load = Path("/proc/loadavg").read_text().split()[:3]
            if profile is not None:
                spy = py_spy(adapters[0], seconds, profile)
            if not parent.poll(seconds + 30):
                raise RuntimeError("the caller stalled")
            parent.recv()  # "down"
            cpu = sum(a.cpu_seconds() for a in adapters) - cpu0
            rss = sum(a.rss_bytes() for a in adapters) - rss0
            result: CallerResult = parent.recv() if parent.poll(60) else CallerResult(calls=n)
        finally:
            caller.join(10)
            if caller.is_alive():
                caller.kill()
    finally:
        if spy is not None:
            spy.wait(30)
        for a in adapters:
            a.stop()
    return Run(label, path, n, result, cpu, rss / max(result.answered, 1), " ".join(load))


def py_spy(adapter: Adapter, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """`py-spy record` on the adapter (sampling without pausing it), collapsed stacks into `out`."""
    assert adapter.proc is not None
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    argv = [exe, "record", "-p", str(adapter.proc.pid), "-d", str(max(1, int(seconds - 2))), "-r", "100",
            "--nonblocking", "-f", "raw", "-o", str(out)]
    print("# " + " ".join(argv), flush=True)
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ---- the report -----------------------------------------------------------------------------------------

HEADER = (f"{'adapter':<22}{'path':<9}{'calls':>6}{'answered':>9}{'lost':>7}{'foreign':>8}{'worst call p99':>15}"
          f"{'all p99':>8}"
          f"{'max':>7}{'CPU-s/call-min':>15}{'MiB/call':>9}  {'loadavg':<15} verdict")


def row(r: Run) -> str:
    res = r.result
    return (f"{r.label:<22}{r.path:<9}{r.calls:>6}{res.answered:>9}{res.lost:>7}{res.foreign:>8}"
            f"{res.worst_p99_ms:>15.2f}{res.p99_ms:>8.2f}{res.max_ms:>7.1f}{r.cpu_per_call_minute:>15.3f}"
            f"{r.rss_per_call / 2**20:>9.3f}  "
            f"{r.load:<15} {'ok' if r.passed else 'FAIL'}")


def floor(seconds: float) -> str:
    """The machine's floor: a bare asyncio.sleep(0.02) sender, measured the same way (bridge.bench.pacing)."""
    from bridge.bench import pacing

    fig, _ = pacing.measure(1, seconds, bare=True)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return (f"# floor: bare asyncio.sleep(0.02) loop, 1 stream, {seconds:g} s: interval error p50 "
            f"{fig.get('p50', 0):.2f} ms, p99 {fig.get('p99', 0):.2f} ms, max {fig.get('max', 0):.2f} ms "
            f"(loadavg {load})")


def ladder(start: int, stop: int) -> Iterator[int]:
    n = start
    while n <= stop:
        yield n
        n = int(n * 1.5 + 0.5)


def search(label: str, path: str, make: callable, target: callable, start: int, stop: int, seconds: float,  # type: ignore[valid-type]
           workdir: Path, exact: list[int] | None = None) -> Run | None:
    """Raise the call count (x1.5) until a run fails, then halve the gap twice; print every run. The best pass."""
    best: Run | None = None
    worst_fail: int | None = None

    def one(n: int) -> Run:
        adapters = make()
        try:
            r = measure(label, path, adapters, target(adapters), n, seconds, workdir)
        except RuntimeError as exc:  # calls not set up in time, or the caller stalled: a failed run
            print(f"{label:<22}{path:<9}{n:>6}  not measured: {exc}", flush=True)
            return Run(label, path, n, CallerResult(calls=n), 0.0, 0.0, "")
        print(row(r), flush=True)
        return r

    for n in exact or ladder(start, stop):
        r = one(n)
        if r.passed:
            best = r if best is None or n > best.calls else best
        elif not exact:
            worst_fail = n
            break
    if exact or worst_fail is None or best is None:
        return best
    lo, hi = best.calls, worst_fail
    for _ in range(2):
        if hi - lo <= max(2, lo // 20):
            break
        mid = (lo + hi) // 2
        r = one(mid)
        if r.passed:
            best, lo = r, mid
        else:
            hi = mid
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bridge.bench capacity", description=__doc__.splitlines()[0])
    parser.add_argument("--paths", default="echo,openai,deepgram,gemini")
    parser.add_argument("--seconds", type=float, default=10.0, help="media seconds per run")
    parser.add_argument("--start", type=int, default=50, help="first call count of the search")
    parser.add_argument("--max", type=int, default=1000, help="highest call count tried")
    parser.add_argument("--calls", default="", help="comma-separated counts to run instead of searching")
    parser.add_argument("--processes", type=int, default=1, help="adapter processes (2+: behind Kamailio)")
    parser.add_argument("--profile", type=Path, help="py-spy raw profile of the (first) adapter during one run")
    parser.add_argument("--original", type=Path, help="also run the original sip-to-ai from this checkout")
    parser.add_argument("--original-python", default=str(Path.home() / ".pyenv/versions/3.12.1/bin/python"))
    args = parser.parse_args(argv)
    print("$ python -m bridge.bench capacity " + " ".join(argv if argv is not None else sys.argv[2:]))
    print(f"# pass: every call answered, no packet lost, every call's interval error p99 <= {P99_LIMIT_MS:g} ms "
          f"(kernel receive stamps while all calls are up, from {WARMUP:g} s after the last answer); CPU and RSS of "
          "the adapter process(es) from /proc over the window the calls were up")
    print(floor(5.0), flush=True)
    exact = [int(x) for x in args.calls.split(",") if x]
    with tempfile.TemporaryDirectory(prefix="capacity-") as tmp:
        work = Path(tmp)
        print(HEADER, flush=True)
        for path in args.paths.split(","):
            with vendor_process(path) as fake:
                env = vendor_env(path, fake.url)
                if args.profile is not None:
                    port = free_port()
                    r = measure("sip-to-ai", path, [sip_to_ai(port, (30000, 39999), env)], port, exact[0] if exact
                                else args.start, args.seconds, work, args.profile)
                    print(row(r), flush=True)
                    continue
                if args.processes == 1:
                    search("sip-to-ai", path, lambda env=env: [sip_to_ai(free_port(), (30000, 39999), env)],
                           lambda a: a[0].port, args.start, args.max, args.seconds, work, exact)
                else:
                    _behind_kamailio(path, env, args, work, exact)
                if args.original is not None and path == "openai":  # its other vendors' URLs are fixed
                    search("original (py3.12)", path,
                           lambda env=env: [original(args.original, args.original_python, free_port(), env)],
                           lambda a: a[0].port, args.start, args.max, args.seconds, work, exact)


@contextlib.contextmanager
def kamailio_process(work: Path, adapters: list[int]) -> Iterator[int]:
    """A real Kamailio with dialplan/kamailio.cfg (dispatcher, OPTIONS probing) in front of `adapters`."""
    from tests.interop.kamailio.peer import kamailio_argv

    port = free_port()
    argv = kamailio_argv(work, port, adapters)
    print("# " + " ".join(argv), flush=True)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=(work / "kamailio.log").open("wb"))
    try:
        asyncio.run(wait_sip(port))
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _behind_kamailio(path: str, env: dict[str, str], args: argparse.Namespace, work: Path,
                     exact: list[int]) -> None:
    base = free_port(args.processes)  # one configuration: instance i serves SIP on base + i
    with kamailio_process(work, [base + i for i in range(args.processes)]) as kport:
        def make() -> list[Adapter]:
            adapters = [sip_to_ai(base, (30000, 39999), {**env, "SIP_TO_AI_INSTANCE": str(i)})
                        for i in range(args.processes)]
            for i, a in enumerate(adapters):
                a.port = base + i
            return adapters

        search(f"sip-to-ai x{args.processes} kamailio", path, make, lambda a: kport, args.start, args.max,
               args.seconds, work, exact)


def original(checkout: Path, python: str, port: int, env: dict[str, str]) -> Adapter:
    """The original sip-to-ai (app.main) from `checkout`, with the same settings it reads."""
    base = {"SIP_PORT": str(port), "SIP_DOMAIN": "127.0.0.1", "LOG_LEVEL": "WARNING", "LOG_FORMAT": "json",
            "OPENAI_MODEL": "gpt-realtime", "AGENT_PROMPT_FILE": "agent_prompt.yaml"}
    return Adapter([python, "-m", "app.main"], {**base, **env}, port, cwd=str(checkout), answers_options=False)


if __name__ == "__main__":
    main()
