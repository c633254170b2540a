"""AI_VENDOR=openai/azure/grok end to end: test caller -> SIP responder -> call -> OpenAIAgent -> fake server.

Grok (xAI) runs the same tests against its own fake (tests/fakes/grok_voice.py): same client, another dialect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import pytest

from bridge import caller as uac
from bridge.call import MediaCore
from bridge.codec import g711
from bridge.config import AgentPrompt
from bridge.media import FRAME_SAMPLES, Codec
from bridge.rtp.packet import RtpPacket
from bridge.sip.transport import SipServer
from tests.conftest import make_settings
from tests.fakes.gemini_live import tone
from tests.fakes.grok_voice import FakeGrok
from tests.fakes.openai_realtime import FakeRealtime

KEY = "sk-test-0123456789"
VENDORS = ["openai", "grok"]
FRAME = 160
CALLER = bytes([0x10]) * FRAME  # what the caller says (never PCMU silence 0xFF)
GREETING = bytes([0x21]) * FRAME * 16  # 320 ms
REPLY = bytes([0x42]) * FRAME
GOODBYE = bytes([0x63]) * FRAME


@dataclass
class Env:
    fake: FakeRealtime
    core: MediaCore
    target: str


@contextlib.asynccontextmanager
async def environment(api_key: str = KEY, vendor_name: str = "openai", openai_audio_format: str = "",
                      **fake_options) -> AsyncIterator[Env]:
    grok = vendor_name == "grok"
    fake = FakeGrok(KEY, **fake_options) if grok else FakeRealtime(KEY, azure=vendor_name == "azure", **fake_options)
    url = await fake.start()
    vendor = {
        "openai": dict(ai_vendor="openai", openai_api_key=api_key, openai_ws_endpoint=url),
        "azure": dict(ai_vendor="azure", azure_openai_api_key=api_key, azure_openai_endpoint=url,
                      azure_openai_deployment="my-realtime"),
        "grok": dict(ai_vendor="grok", xai_api_key=api_key, grok_ws_endpoint=url),
    }[vendor_name]
    settings = make_settings(
        **vendor, sip_port=0, sip_domain="127.0.0.1", openai_audio_format=openai_audio_format,
        rtp_port_min=41000, rtp_port_max=41999, reconnect_delay_sec=0.02, ai_connection_timeout_sec=3.0,
        prompt=AgentPrompt(instructions="Be brief.", greeting="Welcome to ACME."))
    core = MediaCore(settings)
    server = SipServer(core, settings)
    ready = asyncio.Event()
    task = asyncio.create_task(server.run(ready))
    try:
        await ready.wait()
        yield Env(fake, core, f"sip:ai@127.0.0.1:{server.address[1]}")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await fake.stop()


class Caller:
    """The test caller with a steady 20 ms RTP stream (absolute schedule) and a record of what it hears."""

    def __init__(self, target: str) -> None:
        self.call = uac.TestCall(target, "127.0.0.1")
        self.tasks: list[asyncio.Task] = []
        self.sent = 0
        self.payload = lambda n: bytes([0x10 + n % 32]) * FRAME  # frame n of what the caller says

    async def dial(self) -> bool:
        await self.call.open()
        if not await self.call.invite():
            return False
        self.tasks = [asyncio.create_task(self.call.listen()), asyncio.create_task(self._talk())]
        return True

    async def _talk(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while not self.call.hung_up.is_set():
            await asyncio.sleep(max(0.0, t0 + self.sent * 0.02 - loop.time()))
            payload = self.payload(self.sent)
            packet = RtpPacket(self.call.pt, self.sent & 0xFFFF, self.sent * FRAME_SAMPLES, 0x5151, payload)
            self.call.rtp.transport.sendto(packet.serialize(), self.call.remote_rtp)
            self.sent += 1

    def heard(self, frame: bytes) -> list[float]:
        """Arrival times of the packets carrying `frame`."""
        return [t for t, p in self.call.rtp.arrivals if p.payload == frame]

    def payloads(self) -> list[bytes]:
        return [p.payload for _, p in self.call.rtp.arrivals]

    async def hang_up(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if not self.call.hung_up.is_set():
            await self.call.bye()
        self.call.close()


async def refused_with_503(env: Env) -> None:
    """A call to the bridge is refused with 503 (the vendor said no before the answer)."""
    call = uac.TestCall(env.target, "127.0.0.1")
    await call.open()
    try:
        assert not await call.invite()
        assert call.figures.status == 503
    finally:
        call.close()


async def until(predicate, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("vendor", ["openai", "azure", "grok"])
async def test_greeting_first_and_caller_audio_complete_in_order(vendor):
    async with environment(vendor_name=vendor, reply_audio=GREETING) as env:
        caller = Caller(env.target)
        assert await caller.dial()
        await until(lambda: len(caller.heard(GREETING[:FRAME])) == 16)
        audio = [p for p in caller.payloads() if p != b"\xff" * FRAME]
        assert audio[:16] == [GREETING[:FRAME]] * 16  # the first thing the caller hears
        await asyncio.sleep(0.3)
        sent = caller.sent
        await caller.hang_up()
        sess = env.fake.sessions[0]
        await until(lambda: len(sess.audio) >= (sent - 2) * FRAME)
        expected = b"".join(bytes([0x10 + n % 32]) * FRAME for n in range(len(sess.audio) // FRAME))
        assert bytes(sess.audio) == expected  # complete, in order, nothing transcoded
        assert env.fake.violations == []


@pytest.mark.parametrize("vendor", VENDORS)
async def test_barge_in_flushes_within_40ms_and_truncates_to_what_was_heard(vendor):
    async with environment(vendor_name=vendor, speed=1.0) as env:
        caller = Caller(env.target)
        assert await caller.dial()
        sess = await env.fake.session()
        sess.respond(REPLY * 150)  # 3 s, streamed in real time
        await until(lambda: len(caller.heard(REPLY)) >= 40)  # 800 ms heard
        await sess.speech_started()
        event_at = next(t for t, e in sess.sent_log if e["type"] == "input_audio_buffer.speech_started")
        if vendor == "openai":
            await until(lambda: sess.truncates)
        await asyncio.sleep(0.2)
        arrivals = caller.heard(REPLY)
        flush_ms = max(0.0, (arrivals[-1] - event_at) * 1000)
        heard_ms = len(arrivals) * 20
        assert flush_ms <= 40, f"agent audio kept playing {flush_ms:.1f} ms after speech_started"
        if vendor == "openai":
            assert abs(sess.truncates[0]["audio_end_ms"] - heard_ms) <= 20
        else:  # xAI has no conversation.item.truncate: the flush is all (its fake refuses a truncate)
            assert sess.truncates == [] and sess.response.done
        assert env.fake.violations == []
        await caller.hang_up()


@pytest.mark.parametrize("vendor", VENDORS)
async def test_end_call_hangs_up_with_bye_after_the_goodbye(vendor):
    async with environment(vendor_name=vendor) as env:
        caller = Caller(env.target)
        assert await caller.dial()
        sess = await env.fake.session()
        sess.call_tool("end_call", {"reason": "done"}, say=GOODBYE * 25)  # 500 ms goodbye
        await until(caller.call.hung_up.is_set)
        bye_at = asyncio.get_running_loop().time()
        goodbye = caller.heard(GOODBYE)
        assert len(goodbye) == 25 and goodbye[-1] <= bye_at
        assert caller.call.figures.ended_by == "adapter"
        await caller.hang_up()
        await until(lambda: not env.core.calls)


@pytest.mark.parametrize("vendor", VENDORS)
async def test_dropped_vendor_socket_leaves_no_rtp_gap(vendor):
    async with environment(vendor_name=vendor) as env:
        caller = Caller(env.target)
        assert await caller.dial()
        first = await env.fake.session()
        await asyncio.sleep(0.3)
        await first.drop()
        second = await env.fake.session(2)
        second.respond(REPLY * 10)
        await until(lambda: len(caller.heard(REPLY)) == 10)
        await asyncio.sleep(0.1)
        times = [t for t, _ in caller.call.rtp.arrivals]
        gaps = [(b - a) * 1000 for a, b in zip(times, times[1:], strict=False)]
        assert max(gaps) <= 40, f"RTP gap of {max(gaps):.1f} ms"
        assert not caller.call.hung_up.is_set()
        await caller.hang_up()


@pytest.mark.parametrize("vendor", VENDORS)
async def test_socket_dead_unnoticed_loses_no_caller_frame(vendor):
    """The vendor stops reading (a dead socket nobody noticed yet), 300 ms later the connection dies: the next
    session receives every caller frame after the last one the first acknowledged."""
    async with environment(vendor_name=vendor) as env:
        caller = Caller(env.target)
        caller.payload = lambda n: bytes([0x20]) * (FRAME - 2) + bytes([n // 200, n % 200])  # numbered frames
        assert await caller.dial()
        first = await env.fake.session()
        await until(lambda: len(first.appends) >= 25)
        first.request.transport.pause_reading()
        await asyncio.sleep(0.3)
        await first.drop()
        second = await env.fake.session(2)
        await until(lambda: len(second.appends) >= 40)
        await caller.hang_up()

        def numbers(sess) -> list[int]:  # noqa: ANN001
            return [c[-2] * 200 + c[-1] for _, c in sess.appends]

        got, again = numbers(first), numbers(second)
        assert again[0] <= got[-1] + 1  # resent from the last frame the first session acknowledged on
        assert set(got) | set(again) >= set(range(got[0], again[-1] + 1))  # no caller frame lost
        assert env.fake.violations == []


@pytest.mark.parametrize("vendor", VENDORS)
async def test_refusal_before_answer_is_a_sip_error(vendor):
    async with environment(api_key="sk-wrong-000000000000", vendor_name=vendor) as env:
        await refused_with_503(env)
        assert not env.core.calls and env.core.ports.in_use == frozenset()



def spectrum(pcm: np.ndarray, rate: int) -> tuple[float, np.ndarray, np.ndarray]:
    """(peak frequency, frequencies, power) of `pcm` under a Hann window."""
    power = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm)))) ** 2
    freqs = np.fft.rfftfreq(len(pcm), 1 / rate)
    return float(freqs[int(np.argmax(power))]), freqs, power


async def test_pcm16_gateway_440hz_out_and_caller_audio_in_at_24khz():
    """OPENAI_AUDIO_FORMAT=pcm16 against a gateway that carries audio/pcm only: tones cross both resamplers."""
    reply = tone(440, 1.0, 24000)
    async with environment(formats=("audio/pcm",), openai_audio_format="pcm16") as env:
        caller = Caller(env.target)
        said = g711.encode(Codec.PCMU, np.frombuffer(tone(1000, 2.0, 8000, amplitude=6000), "<i2"))
        caller.payload = lambda n: said[n % 100 * FRAME:(n % 100 + 1) * FRAME]
        assert await caller.dial()
        sess = await env.fake.session()
        assert sess.config["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        sess.respond(reply)
        await until(lambda: sess.response.done and len(caller.payloads()) > 60)
        await asyncio.sleep(0.3)
        heard = np.concatenate([g711.decode(Codec.PCMU, p) for p in caller.payloads() if p != b"\xff" * FRAME])
        assert len(heard) >= 7000  # ~1 s at 8 kHz
        peak, freqs, power = spectrum(heard[400:-400].astype(float), 8000)
        band = power[(freqs > 400) & (freqs < 480)].sum() / power.sum()
        assert abs(peak - 440) < 10 and band > 0.98, (peak, band)
        await until(lambda: len(sess.audio) >= 48000 * 2)  # 1 s of caller audio at 24 kHz PCM16
        got = np.frombuffer(bytes(sess.audio[:96000]), "<i2").astype(float)[2400:]
        peak, freqs, power = spectrum(got, 24000)
        images = power[freqs > 4500].sum() / power.sum()  # what 8 -> 24 kHz upsampling must not leave
        assert abs(peak - 1000) < 10 and images < 1e-4, (peak, images)
        assert env.fake.violations == []
        await caller.hang_up()


async def test_pcm_only_gateway_refuses_g711_cleanly():
    """Without OPENAI_AUDIO_FORMAT=pcm16 a PCM-only gateway refuses the session: the SIP call gets 503."""
    async with environment(formats=("audio/pcm",)) as env:
        await refused_with_503(env)
        assert env.fake.violations and "audio format" in env.fake.violations[0]
