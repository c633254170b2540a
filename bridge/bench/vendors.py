"""Bridge-added latency per vendor against the fake servers: RTP in -> websocket out, websocket in -> RTP out, barge-in.

Run from the repository root (the fakes live in tests/fakes): `python -m bridge.bench vendors`.
One call through MediaCore (RTP on loopback, the vendor's agent, the fake on loopback), full duplex:
  * uplink: each 20 ms caller frame is tagged; latency = arrival of its `append` at the fake - RTP send time;
  * downlink: the fake starts short replies at random moments; latency = arrival at the PBX side of the RTP
    packet carrying a reply's first frame - the time the fake handed that delta to its socket. It includes
    the wait for the next tick of the shared 20 ms clock (0-20 ms, the pacing the wire demands); later
    frames of a reply only queue behind the first (the vendor sends faster than real time);
  * barge-in flush: the fake streams a reply faster than real time (so audio is queued in playout), signals
    the interruption; flush = last agent frame on the wire - the signal leaving the fake (0 if none came after).
Everything runs in one event loop on one machine, so the figures include that loop's scheduling of the fake.
Other vendors add an entry to BENCHES: an async function returning Figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bridge import config
from bridge.caller import RtpRecorder
from bridge.media import CallInfo, Codec, MediaLeg
from bridge.rtp.packet import RtpPacket

FRAME = 160
UPLINK_FRAMES = 250  # 5 s of caller audio
REPLIES = 60  # short replies, each starting at a random phase of the 20 ms clock
BARGE_INS = 20
KEY = "sk-bench-0123456789"


@dataclass
class Figures:
    """Milliseconds per measured frame or event."""

    uplink: list[float] = field(default_factory=list)
    downlink: list[float] = field(default_factory=list)
    flush: list[float] = field(default_factory=list)


def tag(n: int, filler: int = 0x20) -> bytes:
    """A G.711 frame that carries its index `n` in its first two bytes (never 0xFF, PCMU silence)."""
    return bytes([filler]) * (FRAME - 2) + bytes([n // 200, n % 200])


def untag(payload: bytes) -> int:
    return payload[-2] * 200 + payload[-1]


class _Control:
    async def hangup(self, reason: str) -> None:
        return None

    async def transfer(self, destination: str) -> None:
        return None


async def _send_caller_audio(pbx: RtpRecorder, dest: tuple[str, int], sent: dict[int, float], frames: int) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert pbx.transport is not None
    for n in range(frames):
        await asyncio.sleep(max(0.0, t0 + n * 0.02 - loop.time()))
        sent[n] = loop.time()
        pbx.transport.sendto(RtpPacket(0, n, n * FRAME, 0xBE7C, tag(n)).serialize(), dest)


async def bench_openai(scale: float = 1.0) -> Figures:
    """OpenAI Realtime (the Azure path is the same code) against tests/fakes/openai_realtime.py."""
    from tests.fakes.openai_realtime import FakeRealtime

    fake = FakeRealtime(KEY, speed=1.0, chunks=(FRAME,), check_server=False)
    return await _bench_realtime(fake, scale, ai_vendor="openai", openai_api_key=KEY, openai_ws_endpoint=await
                                 fake.start())


async def bench_grok(scale: float = 1.0) -> Figures:
    """xAI Grok Voice (the OpenAI client in xAI's dialect) against tests/fakes/grok_voice.py."""
    from tests.fakes.grok_voice import FakeGrok

    fake = FakeGrok(KEY, speed=1.0, chunks=(FRAME,))
    return await _bench_realtime(fake, scale, ai_vendor="grok", xai_api_key=KEY, grok_ws_endpoint=await fake.start())


async def _bench_realtime(fake: Any, scale: float, **vendor: str) -> Figures:
    """The measurements through a Realtime-protocol fake (already started), with `vendor` settings."""
    settings = dataclasses.replace(config.load(environ={}, dotenv=None), **vendor)
    figures = Figures()
    try:
        async with _bench_call(settings, vendor["ai_vendor"]) as (call, pbx):
            sess = await fake.session()
            sent: dict[int, float] = {}
            frames_up = int(UPLINK_FRAMES * scale)
            caller = asyncio.create_task(_send_caller_audio(pbx, call.local_address, sent, frames_up))
            for n in range(int(REPLIES * scale)):  # full duplex: the caller keeps talking meanwhile
                await asyncio.sleep(random.uniform(0.0, 0.04))
                resp = sess.respond(tag(n, 0x30) * 2)
                while not resp.done:
                    await asyncio.sleep(0.005)
                await asyncio.sleep(0.06)
            await caller
            await asyncio.sleep(0.3)
            figures.uplink = [(t - sent[untag(chunk)]) * 1000 for t, chunk in sess.appends if len(chunk) == FRAME]
            figures.downlink = _downlink(sess.sent_log, pbx.arrivals, 0x30)
            fake.speed, fake.chunks = 4.0, (480, 1200, 160, 2400)
            for _ in range(int(BARGE_INS * scale)):
                figures.flush.append(await _barge_in(sess, pbx))
    finally:
        await fake.stop()
    return figures


def _downlink(sent_log: list[tuple[float, dict]], arrivals: list[tuple[float, RtpPacket]], filler: int) -> list[float]:
    import base64

    left: dict[int, float] = {}  # reply -> when its first frame left the fake
    for t, event in sent_log:
        if event["type"] == "response.output_audio.delta":
            data = base64.b64decode(event["delta"])
            if len(data) == FRAME and data[0] == filler:
                left.setdefault(untag(data), t)
    first: dict[int, float] = {}  # reply -> when its first frame reached the PBX side
    for t, p in arrivals:
        if p.payload[0] == filler:
            first.setdefault(untag(p.payload), t)
    return [(first[n] - left[n]) * 1000 for n in first if n in left]


async def _barge_in(sess, pbx: RtpRecorder) -> float:  # type: ignore[no-untyped-def]
    """One reply interrupted after 300 ms on the wire; ms from the signal to the last agent frame."""
    filler = 0x40
    start = len(pbx.arrivals)
    resp = sess.respond(bytes([filler]) * FRAME * 150)
    while sum(1 for _, p in pbx.arrivals[start:] if p.payload[0] == filler) < 15:
        await asyncio.sleep(0.005)
    await sess.speech_started()
    signal = next(t for t, e in reversed(sess.sent_log) if e["type"] == "input_audio_buffer.speech_started")
    while not resp.done:
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.1)
    last = max(t for t, p in pbx.arrivals[start:] if p.payload[0] == filler)
    return max(0.0, (last - signal) * 1000)


# ---- Deepgram and Gemini: the same measurements through their fakes ------------------------------------------


@contextlib.asynccontextmanager
async def _bench_call(settings: config.Settings, name: str) -> AsyncIterator[tuple[Any, RtpRecorder]]:
    """One call through MediaCore to the configured vendor, its PBX side on loopback; yields (call, pbx)."""
    from bridge.call import MediaCore

    core = MediaCore(dataclasses.replace(settings, media_address="127.0.0.1", rtp_port_min=43000,
                                         rtp_port_max=43999, prompt=config.AgentPrompt(instructions="bench")))
    loop = asyncio.get_running_loop()
    _, pbx = await loop.create_datagram_endpoint(RtpRecorder, local_addr=("127.0.0.1", 0))
    call = await core.create_call(CallInfo(f"bench-{name}", "bench"),
                                  MediaLeg(pbx.transport.get_extra_info("sockname")[:2], Codec.PCMU))
    runner = asyncio.create_task(call.run(_Control()))
    try:
        yield call, pbx
    finally:
        call.end("bench over")
        await runner
        pbx.transport.close()


async def _replies(pbx: RtpRecorder, reply: Callable[[int], Awaitable[None]], is_agent: Callable[[bytes], bool],
                   count: int) -> list[float]:
    """Short replies at random moments; ms from handing each to the fake's socket to its first frame on the wire."""
    loop = asyncio.get_running_loop()
    out = []
    for n in range(count):
        await asyncio.sleep(random.uniform(0.0, 0.04))
        start = len(pbx.arrivals)
        left = loop.time()
        await reply(n)
        while not any(is_agent(p.payload) for _, p in pbx.arrivals[start:]):
            await asyncio.sleep(0.001)
        out.append((next(t for t, p in pbx.arrivals[start:] if is_agent(p.payload)) - left) * 1000)
        await asyncio.sleep(0.06)  # the reply plays out
    return out


async def _flush(pbx: RtpRecorder, speak: Callable[[], Awaitable[object]], interrupt: Callable[[], Awaitable[None]],
                 is_agent: Callable[[bytes], bool]) -> float:
    """A reply streamed fast, interrupted once 15 frames were on the wire; ms from the signal to the last frame."""
    loop = asyncio.get_running_loop()
    start = len(pbx.arrivals)
    await speak()
    while sum(1 for _, p in pbx.arrivals[start:] if is_agent(p.payload)) < 15:
        await asyncio.sleep(0.005)
    signal = loop.time()
    await interrupt()
    await asyncio.sleep(0.15)
    last = max(t for t, p in pbx.arrivals[start:] if is_agent(p.payload))
    return max(0.0, (last - signal) * 1000)


async def bench_deepgram(scale: float = 1.0) -> Figures:
    """Deepgram Voice Agent (G.711 straight through, binary frames) against tests/fakes/deepgram_agent.py."""
    from tests.fakes.deepgram_agent import FakeDeepgram

    async def reply(n: int) -> None:
        await conn.ws.send_bytes(tag(n, 0x30) * 2)
        await conn.send({"type": "AgentAudioDone"})

    figures = Figures()
    async with FakeDeepgram(speak_greeting=False) as fake:
        settings = dataclasses.replace(config.load(environ={}, dotenv=None), ai_vendor="deepgram",
                                       deepgram_api_key=fake.api_key, deepgram_ws_endpoint=fake.url)
        async with _bench_call(settings, "deepgram") as (call, pbx):
            conn = await fake.connection()
            sent: dict[int, float] = {}
            frames_up = int(UPLINK_FRAMES * scale)
            caller = asyncio.create_task(_send_caller_audio(pbx, call.local_address, sent, frames_up))
            figures.downlink = await _replies(pbx, reply, lambda p: p[0] == 0x30, int(REPLIES * scale))
            await caller
            await asyncio.sleep(0.3)
            frames = [bytes(conn.audio[i:i + FRAME]) for i in range(0, len(conn.audio), FRAME)]
            figures.uplink = [(t - sent[untag(f)]) * 1000 for t, f in zip(conn.audio_times, frames, strict=True)]
            for _ in range(int(BARGE_INS * scale)):
                figures.flush.append(await _flush(pbx, lambda: conn.speak(bytes([0x40]) * FRAME * 150, done=False),
                                                  conn.barge_in, lambda p: p[0] == 0x40))
    return figures


async def bench_gemini(scale: float = 1.0) -> Figures:
    """Gemini Live (G.711 <-> PCM16, 16 kHz up and 24 kHz down through the resamplers) against the fake.

    Resampled audio keeps no tags: uplink frames are matched in order (one `realtimeInput.audio` message per
    caller frame, in order), and a reply is a 40 ms tone whose first non-silent frame on the wire is timed.
    """
    import base64

    from tests.fakes.gemini_live import OUT_MIME, FakeGeminiLive, tone

    silence = bytes([0xFF]) * FRAME
    blip = base64.b64encode(tone(440, 0.04)).decode()

    async def reply(n: int) -> None:
        part = {"inlineData": {"mimeType": OUT_MIME, "data": blip}}
        await conn.send({"serverContent": {"modelTurn": {"parts": [part]}}})
        await conn.send({"serverContent": {"turnComplete": True}})

    figures = Figures()
    async with FakeGeminiLive(answer_turns=False) as fake:
        settings = dataclasses.replace(config.load(environ={}, dotenv=None), ai_vendor="gemini",
                                       gemini_api_key=fake.api_key, gemini_ws_endpoint=fake.url,
                                       gemini_model=fake.models[0])
        async with _bench_call(settings, "gemini") as (call, pbx):
            conn = await fake.connection()
            sent: dict[int, float] = {}
            frames_up = int(UPLINK_FRAMES * scale)
            caller = asyncio.create_task(_send_caller_audio(pbx, call.local_address, sent, frames_up))
            figures.downlink = await _replies(pbx, reply, lambda p: p != silence, int(REPLIES * scale))
            await caller
            await asyncio.sleep(0.3)
            figures.uplink = [(t - sent[n]) * 1000 for n, t in enumerate(conn.audio_times)]
            for _ in range(int(BARGE_INS * scale)):
                figures.flush.append(await _flush(pbx, lambda: conn.speak(3.0, 440, done=False), conn.interrupt,
                                                  lambda p: p != silence))
    return figures


BENCHES: dict[str, Callable[[float], Awaitable[Figures]]] = {  # (scale) -> figures
    "openai": bench_openai, "grok": bench_grok, "deepgram": bench_deepgram, "gemini": bench_gemini}


def _pct(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q):6.1f}" if values else "     -"


def run(scale: float = 1.0) -> None:
    """Print, per vendor, p50/p99 of the bridge-added latency both ways and of the barge-in flush.

    `scale` shrinks the sample counts (the smoke test uses 0.1).
    """
    print("command: python -m bridge.bench vendors  (from the repository root; fakes on 127.0.0.1)")
    print(f"{'vendor':10} {'RTP->ws p50':>11} {'p99':>6} {'ws->RTP p50':>11} {'p99':>6} "
          f"{'flush p50':>9} {'p99':>6}  (ms; n up/down/barge-ins)")
    logging.getLogger("bridge").setLevel(logging.WARNING)
    for name, bench in BENCHES.items():
        try:
            f = asyncio.run(bench(scale))
        except ModuleNotFoundError as exc:  # run outside the repository: no tests/fakes
            print(f"{name:10} not available: {exc}")
            continue
        print(f"{name:10} {_pct(f.uplink, 50):>11} {_pct(f.uplink, 99)} {_pct(f.downlink, 50):>11} "
              f"{_pct(f.downlink, 99)} {_pct(f.flush, 50):>9} {_pct(f.flush, 99)}  "
              f"(n {len(f.uplink)}/{len(f.downlink)}/{len(f.flush)})")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        run()
