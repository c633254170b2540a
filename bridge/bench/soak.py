"""A sped-up hour of calls, and what it leaves behind: `python -m bridge.bench soak --minutes 60 --speed 10`.

One adapter process (`sip-to-ai serve`) per vendor path, each with its fake vendor in its own process (as the
capacity bench runs them: the fakes speak their vendors' wire protocols on loopback, the agent talks back every
few seconds and, between replies, barges in, calls a tool, drops its socket or sends goAway in turn). The tool is
capacity.TOOL, declared in the adapters' AGENT_PROMPT_FILE as a user declares one; the bridge has nothing to run
it and answers with an error result, and the fake counts the answers it gets. SIP callers keep arriving
(Poisson) and hanging up (exponential hold times) while sending 20 ms G.711 frames. `--speed` compresses the
clock: at `--speed 10` the arrivals of `--minutes` of real traffic, and each call's duration, come 10 times
faster, so `--minutes 60 --speed 10` runs 6 minutes of wall time with the same number of calls, overlapping as
much as in real time.

Every few seconds each adapter is sampled: resident memory and open file descriptors (/proc/<pid>), asyncio
tasks (`sip_to_ai_asyncio_tasks` on its admin endpoint), bound RTP ports (its UDP sockets in its RTP range) and
live calls. At the end, with every call over, it prints the curves and the verdict: memory flat (the last
quarter's mean within `--flat-mb` of the first quarter's), FDs, tasks and RTP ports back at their baseline
(the sample before the first call), the vendor mix counted by the adapter (`sip_to_ai_barge_ins_total`,
`sip_to_ai_tool_calls_total`, `sip_to_ai_vendor_reconnects_total` by reason), and every tool answer the fake got
counted by the adapter, no more.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import random
import re
import socket
import sys
import tempfile
import urllib.request
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bridge.bench.capacity import (
    FRAME,
    TOOL,
    Adapter,
    BenchCall,
    free_port,
    sip_to_ai,
    vendor_env,
    vendor_process,
    wait_sip,
)
from bridge.codec import g711
from bridge.media import Codec

RATE_PER_MINUTE = 6.0  # real-time call arrivals per adapter
MEAN_SECONDS = 60.0  # real-time mean call duration (exponential, at least MIN_SECONDS)
MIN_SECONDS = 10.0
RTP_SPAN = 200  # RTP ports per adapter
MB = 1 << 20
SETTLE = 20  # seconds after the last call for FDs, tasks, ports to come back (aiohttp keeps idle HTTP 15 s)


@dataclass
class Sample:
    t: float
    rss: int
    fds: int
    tasks: int
    rtp_ports: int
    calls: int


MIX_METRICS = {"barge-ins": ("sip_to_ai_barge_ins_total", ""), "tool calls": ("sip_to_ai_tool_calls_total", ""),
               "drops": ("sip_to_ai_vendor_reconnects_total", 'reason="dropped"'),
               "goAways": ("sip_to_ai_vendor_reconnects_total", 'reason="goaway"')}
GOAWAY_VENDORS = {"gemini"}  # whose fake sends goAway


@dataclass
class Path_:
    """One vendor path: its adapter, what it was asked and how it answered, and its samples."""

    vendor: str
    adapter: Adapter
    admin: int
    esl: int  # its ESL_LISTEN port
    rtp: tuple[int, int]
    ari: Any = None  # the fake Asterisk its ARI client is connected to (Stasis app soak-<vendor>)
    placed: int = 0
    answered: int = 0
    failed: int = 0
    esl_answered: int = 0
    ari_answered: int = 0
    samples: list[Sample] = field(default_factory=list)
    baseline: Sample | None = None  # before the first call
    fd_targets: list[str] = field(default_factory=list)  # at baseline, to name what an FD leak holds
    extra_fds: list[str] = field(default_factory=list)  # at the end, beyond fd_targets
    mix: dict[str, int] = field(default_factory=dict)  # the vendor fake's upsets the adapter counted, last scrape
    tool_outcomes: dict[str, int] = field(default_factory=dict)  # sip_to_ai_tool_calls_total by outcome, last scrape
    fake_tools: dict[str, int] = field(default_factory=dict)  # the fake's own count: TOOL calls made, answers got

    def fd_links(self) -> list[str]:
        out = []
        for fd in Path(f"/proc/{self.adapter.proc.pid}/fd").iterdir():  # type: ignore[union-attr]
            with contextlib.suppress(OSError):
                out.append(str(fd.readlink()))
        return out

    def sample(self, t: float) -> Sample:
        pid = self.adapter.proc.pid  # type: ignore[union-attr]
        fds, ports = len(list(Path(f"/proc/{pid}/fd").iterdir())), rtp_ports(pid, self.rtp)  # before the scrape's own
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=5).read().decode()
        tasks = int(float(re.search(r"^sip_to_ai_asyncio_tasks (\S+)", metrics, re.M).group(1)))  # type: ignore[union-attr]
        calls = sum(float(v) for v in re.findall(r"^sip_to_ai_calls_active\{[^}]*\} (\S+)", metrics, re.M))
        self.mix = {what: int(sum(float(v) for v in re.findall(rf"^{metric}\{{[^}}]*{label}[^}}]*\}} (\S+)",
                                                               metrics, re.M)))
                    for what, (metric, label) in MIX_METRICS.items()}
        self.tool_outcomes = {o: int(float(v)) for o, v in re.findall(
            r'^sip_to_ai_tool_calls_total\{[^}]*outcome="([^"]*)"[^}]*\} (\S+)', metrics, re.M)}
        s = Sample(t, self.adapter.rss_bytes(), fds, tasks, ports, int(calls))
        self.samples.append(s)
        return s


def rtp_span(rng: random.Random) -> int:
    """The first port of RTP_SPAN free UDP ports below the kernel's ephemeral range: the callers' sockets bound
    to port 0 then never take the port beside one of ours that the adapter asks FreeSWITCH to bind (ESL unicast
    local-port = ours + 1)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(100):
        base = rng.randrange(10000, low - RTP_SPAN) & ~1
        with contextlib.ExitStack() as held:
            try:
                for port in range(base, base + RTP_SPAN):
                    held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)).bind(("127.0.0.1", port))
            except OSError:
                continue
            return base
    raise RuntimeError(f"no {RTP_SPAN} free UDP ports below {low}")


def rtp_ports(pid: int, span: tuple[int, int]) -> int:
    """UDP sockets of `pid` bound to a port in `span` (inodes of its fds matched in /proc/<pid>/net/udp)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if (target := fd.readlink().name).startswith("socket:["):
                inodes.add(target[8:-1])
    n = 0
    for line in Path(f"/proc/{pid}/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        port = int(fields[1].rsplit(":", 1)[1], 16)
        n += span[0] <= port <= span[1] and fields[9] in inodes
    return n


async def esl_call(path: Path_, seconds: float, payloads: list[bytes]) -> None:
    """One FreeSWITCH channel handed over by `socket ... async full`: the fake FreeSWITCH of tests/fakes (run from
    a checkout, as the vendor fakes are), which speaks ESL and unicast media as mod_event_socket does."""
    from tests.fakes.esl import FakeSocketApp

    path.placed += 1
    frames = payloads * int(seconds / FRAME / len(payloads) + 1)
    async with FakeSocketApp(("127.0.0.1", path.esl), frames=frames) as fs:
        try:
            async with asyncio.timeout(10):
                while fs.media is None or not fs.media.received:
                    await asyncio.sleep(0.05)
        except TimeoutError:
            path.failed += 1
            return
        path.answered += 1
        path.esl_answered += 1
        await asyncio.sleep(seconds)
        await fs.hangup()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await fs.adapter_closed.wait()


async def ari_call(path: Path_, seconds: float, payloads: list[bytes]) -> None:
    """A caller's channel entering Stasis(soak-<vendor>) on the fake Asterisk, talking until it hangs up."""
    fake = path.ari
    path.placed += 1
    frames = itertools.cycle([g711.decode(Codec.PCMU, p).tobytes() for p in payloads])
    channel = fake.call_in(f"soak-{path.vendor}", source=lambda: next(frames))
    try:
        async with asyncio.timeout(10):
            while channel in fake.channels and not fake.heard(channel):
                await asyncio.sleep(0.05)
        if channel not in fake.channels:
            raise TimeoutError
    except TimeoutError:
        path.failed += 1
        return
    path.answered += 1
    path.ari_answered += 1
    await asyncio.sleep(seconds)
    if channel in fake.channels:
        fake.caller_hangup(channel)


async def one_call(path: Path_, seconds: float, payloads: list[bytes]) -> None:
    c = BenchCall(f"sip:soak@127.0.0.1:{path.adapter.port}", "127.0.0.1")
    path.placed += 1
    await c.open()
    try:
        if not await c.invite():
            path.failed += 1
            return
        path.answered += 1
        listening = asyncio.create_task(c.listen())
        loop = asyncio.get_running_loop()
        t0, k = loop.time(), 0
        while k * FRAME < seconds and not c.hung_up.is_set():
            await asyncio.sleep(max(0.0, t0 + k * FRAME - loop.time()))
            header = bytes([0x80, c.pt | (0x80 if k == 0 else 0)]) + (k & 0xFFFF).to_bytes(2, "big") + \
                ((k * 160) & 0xFFFFFFFF).to_bytes(4, "big") + c.ssrc.to_bytes(4, "big")
            c.rtp.transport.sendto(header + payloads[k % len(payloads)], c.remote_rtp)  # type: ignore[union-attr,arg-type]
            k += 1
        listening.cancel()
        if not c.hung_up.is_set():
            await c.bye()
    finally:
        c.close()


async def guarded(call: Coroutine[Any, Any, None], path: Path_) -> None:
    """A call whose caller side broke counts as failed (and says why), not as an unread task exception."""
    try:
        await call
    except Exception as exc:  # noqa: BLE001 - any failure of the fake caller is a failed call of the run
        path.failed += 1
        print(f"   [{path.vendor}] a call failed: {exc!r}", flush=True)


async def traffic(paths: list[Path_], wall: float, speed: float, every: float, ingresses: tuple[str, ...]) -> None:
    """Calls arriving on every path for `wall` seconds, sampling all the while; then until every call is over."""
    rng = random.Random(16)
    pcm = np.random.default_rng(16).normal(0, 3000, 8000).clip(-32767, 32767).astype(np.int16)
    payloads = [g711.encode(Codec.PCMU, pcm[i:i + 160]) for i in range(0, 8000, 160)]
    loop = asyncio.get_running_loop()
    start = loop.time()
    calls: set[asyncio.Task[None]] = set()

    async def arrivals(path: Path_) -> None:
        while True:
            await asyncio.sleep(rng.expovariate(RATE_PER_MINUTE * speed / 60))
            if loop.time() - start >= wall:
                return
            seconds = max(MIN_SECONDS, rng.expovariate(1 / MEAN_SECONDS)) / speed
            place = {"sip": one_call, "esl": esl_call, "ari": ari_call}[rng.choice(ingresses)]
            task = asyncio.create_task(guarded(place(path, seconds, payloads), path))
            calls.add(task)
            task.add_done_callback(calls.discard)

    async def sampling() -> None:
        next_at = start
        while True:
            next_at += every
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            for p in paths:
                await asyncio.to_thread(p.sample, loop.time() - start)

    sampler = asyncio.create_task(sampling())
    await asyncio.gather(*(arrivals(p) for p in paths))
    while calls:
        await asyncio.wait(set(calls))
    sampler.cancel()
    for _ in range(SETTLE):  # the adapters release what the last calls held (vendor sockets close in the background)
        await asyncio.sleep(1.0)
        ends = [await asyncio.to_thread(p.sample, loop.time() - start) for p in paths]
        if all(at_baseline(p.baseline, e) for p, e in zip(paths, ends, strict=True)):  # type: ignore[arg-type]
            break


def at_baseline(baseline: Sample, end: Sample) -> bool:
    return (end.fds <= baseline.fds and end.tasks <= baseline.tasks and end.rtp_ports <= baseline.rtp_ports
            and end.calls == 0)


def report(p: Path_, flat_mb: float) -> bool:
    s, baseline = p.samples, p.baseline
    assert baseline is not None
    quarter = max(1, len(s) // 4)
    first = float(np.mean([x.rss for x in s[:quarter]])) / MB
    last = float(np.mean([x.rss for x in s[-quarter:]])) / MB
    end = s[-1]
    sip = p.answered - p.esl_answered - p.ari_answered
    print(f"\n[{p.vendor}] calls placed {p.placed}, answered {p.answered} ({sip} SIP, {p.esl_answered} ESL, "
          f"{p.ari_answered} ARI), failed {p.failed}")
    print("   t(s)  rss(MB)   fds  tasks  rtp  calls")
    step = max(1, len(s) // 12)
    for x in [baseline, *s[::step], end]:
        print(f"{x.t:7.0f}  {x.rss / MB:7.1f}  {x.fds:4d}  {x.tasks:5d}  {x.rtp_ports:3d}  {x.calls:5d}")
    expected = {w: n for w, n in p.mix.items() if w != "goAways" or p.vendor in GOAWAY_VENDORS}
    mixed = p.vendor == "echo" or all(expected.values())  # the echo agent has no vendor to upset it
    print(f"   vendor mix: {', '.join(f'{n} {what}' for what, n in expected.items())}"
          f"{'' if mixed else ' (the mix did not happen)'}")
    tools_ok = tools_answered(p)
    ok = last - first <= flat_mb and at_baseline(baseline, end) and p.failed == 0 and mixed and tools_ok
    print(f"   memory first quarter {first:.1f} MB, last quarter {last:.1f} MB ({last - first:+.1f}); "
          f"fds {baseline.fds} -> {end.fds}; tasks {baseline.tasks} -> {end.tasks}; "
          f"rtp ports {baseline.rtp_ports} -> {end.rtp_ports}: {'PASS' if ok else 'FAIL'}")
    if p.extra_fds:
        print(f"   fds held beyond the baseline: {', '.join(p.extra_fds)}")
    return ok


def tools_answered(p: Path_) -> bool:
    """The adapter counted every answer its fake got to a tool call, as `unavailable` (the fake calls only the
    prompt's TOOL, which the bridge declares and cannot run), and no more; an answer sent as the call ended
    (its connection closed within AT_HANGUP after) may go uncounted: the call stops reading its agent's events."""
    if p.vendor == "echo":
        return True
    counted = sum(p.tool_outcomes.values())
    answered, late = p.fake_tools.get("answered", -1), p.fake_tools.get("at_hangup", 0)
    ok = 0 < answered - late <= counted <= answered and p.tool_outcomes.get("unavailable", 0) == counted
    outcomes = ", ".join(f"{o} {n}" for o, n in sorted(p.tool_outcomes.items())) or "none"
    print(f"   tool calls ({TOOL['name']}): the fake made {p.fake_tools.get('called')} and got {answered} answers "
          f"({late} as its call ended); the adapter counted {counted} ({outcomes})"
          f"{'' if ok else ': MISMATCH' if answered - late > 0 else ': NONE ANSWERED'}")
    return ok


def run(minutes: float, speed: float, vendors: list[str], every: float, flat_mb: float,
        ingresses: tuple[str, ...] = ("sip", "esl", "ari")) -> bool:
    """The soak; True when every path passed."""
    wall = minutes * 60 / speed
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        fakes = {vendor: stack.enter_context(vendor_process(vendor, mix=True)) for vendor in vendors}
        prompt = work / "agent_prompt.yaml"  # the mix's harmless tool, declared as a user declares tools
        prompt.write_text(yaml.safe_dump({"instructions": "Answer the caller briefly.", "tools": [TOOL]}))
        paths: list[Path_] = []
        load0 = Path("/proc/loadavg").read_text().split()[:3]
        try:
            asyncio.run(_run(paths, {v: f.url for v, f in fakes.items()}, work, wall, speed, every, ingresses))
            for p in paths:
                p.fake_tools = fakes[p.vendor].tool_figures()
        finally:
            for p in paths:
                p.adapter.stop()
        load1 = Path("/proc/loadavg").read_text().split()[:3]
        print(f"# loadavg at start {' '.join(load0)}, at end {' '.join(load1)}")
        ok = all([report(p, flat_mb) for p in paths])
        for p in paths:
            if p.failed or not ok:
                print(f"   ({p.vendor} adapter log: {work / (p.vendor + '.log')}, last lines:)")
                print("   " + "\n   ".join((work / f"{p.vendor}.log").read_text().splitlines()[-5:]))
        return ok


async def _run(paths: list[Path_], urls: dict[str, str], work: Path, wall: float, speed: float, every: float,
               ingresses: tuple[str, ...]) -> None:
    """Start the fake Asterisk (when ARI is soaked) and one adapter per vendor path, then the traffic."""
    async with contextlib.AsyncExitStack() as stack:
        ari = None
        if "ari" in ingresses:
            from tests.fakes.ari import FakeAsterisk  # the fake Asterisk, run from a checkout as the other fakes

            ari = await FakeAsterisk().start()
            stack.push_async_callback(ari.stop)
        for vendor, url in urls.items():
            rtp0 = rtp_span(random.Random())
            admin, esl = free_port(), free_port()
            env = {**vendor_env(vendor, url), "ADMIN_LISTEN": f"127.0.0.1:{admin}", "MAX_CALLS": "100",
                   "ESL_LISTEN": f"127.0.0.1:{esl}", "AGENT_PROMPT_FILE": str(work / "agent_prompt.yaml")}
            if ari is not None:
                env.update(ARI_URL=ari.url, ARI_USERNAME="adapter", ARI_PASSWORD="secret", ARI_APP=f"soak-{vendor}")
            adapter = sip_to_ai(free_port(), (rtp0, rtp0 + RTP_SPAN - 1), env)
            adapter.start(work / f"{vendor}.log")
            paths.append(Path_(vendor, adapter, admin, esl, (rtp0, rtp0 + RTP_SPAN - 1), ari))
        for p in paths:
            await wait_sip(p.adapter.port)
            if ari is not None:
                async with asyncio.timeout(20):
                    while f"soak-{p.vendor}" not in ari.registered:
                        await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        for p in paths:
            p.baseline, p.fd_targets = p.sample(0.0), p.fd_links()
            p.samples.clear()
        await traffic(paths, wall, speed, every, ingresses)
        for p in paths:
            p.extra_fds = p.fd_links()
            for target in p.fd_targets:
                with contextlib.suppress(ValueError):
                    p.extra_fds.remove(target)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bridge.bench soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="minutes of real-time traffic to replay")
    parser.add_argument("--speed", type=float, default=10.0,
                        help="time compression: call arrivals and durations come this many times faster "
                             "(--minutes 60 --speed 10 = 6 minutes of wall time, the same calls and overlap)")
    parser.add_argument("--vendors", default="echo,openai,deepgram,gemini", help="vendor paths, one adapter each")
    parser.add_argument("--ingress", default="sip,esl,ari",
                        help="where calls come from, in equal shares: sip, esl (fake FreeSWITCH), ari (fake Asterisk)")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--flat-mb", type=float, default=5.0, help="allowed last-minus-first-quarter memory growth")
    args = parser.parse_args(argv)
    print("$ python -m bridge.bench soak " + " ".join(argv if argv is not None else sys.argv[2:]))
    print(f"# per adapter: {RATE_PER_MINUTE:g} calls/min, mean {MEAN_SECONDS:g} s (real time), x{args.speed:g}; "
          f"{args.minutes * 60 / args.speed:.0f} s of wall time")
    if not run(args.minutes, args.speed, args.vendors.split(","), args.every, args.flat_mb,
               tuple(args.ingress.split(","))):
        sys.exit(1)
