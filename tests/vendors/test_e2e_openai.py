"""AI_VENDOR=openai end to end: the test caller -> SIP responder -> call -> OpenAIAgent -> fake Realtime server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from bridge import caller as uac
from bridge.call import MediaCore
from bridge.config import AgentPrompt
from bridge.media import FRAME_SAMPLES
from bridge.rtp.packet import RtpPacket
from bridge.sip.transport import SipServer
from tests.conftest import make_settings
from tests.fakes.openai_realtime import FakeRealtime

KEY = "sk-test-0123456789"
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
async def environment(api_key: str = KEY, azure: bool = False, **fake_options) -> AsyncIterator[Env]:
    fake = FakeRealtime(KEY, azure=azure, **fake_options)
    url = await fake.start()
    vendor = dict(ai_vendor="azure", azure_openai_api_key=api_key, azure_openai_endpoint=url,
                  azure_openai_deployment="my-realtime") if azure else dict(
                  ai_vendor="openai", openai_api_key=api_key, openai_ws_endpoint=url)
    settings = make_settings(
        **vendor, sip_port=0, sip_domain="127.0.0.1",
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
            payload = bytes([0x10 + self.sent % 32]) * FRAME
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


async def until(predicate, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("azure", [False, True], ids=["openai", "azure"])
async def test_greeting_first_and_caller_audio_complete_in_order(azure):
    async with environment(azure=azure, reply_audio=GREETING) as env:
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


async def test_barge_in_flushes_within_40ms_and_truncates_to_what_was_heard():
    async with environment(speed=1.0) as env:
        caller = Caller(env.target)
        assert await caller.dial()
        sess = await env.fake.session()
        sess.respond(REPLY * 150)  # 3 s, streamed in real time
        await until(lambda: len(caller.heard(REPLY)) >= 40)  # 800 ms heard
        await sess.speech_started()
        event_at = next(t for t, e in sess.sent_log if e["type"] == "input_audio_buffer.speech_started")
        await until(lambda: sess.truncates)
        await asyncio.sleep(0.2)
        arrivals = caller.heard(REPLY)
        flush_ms = max(0.0, (arrivals[-1] - event_at) * 1000)
        heard_ms = len(arrivals) * 20
        assert flush_ms <= 40, f"agent audio kept playing {flush_ms:.1f} ms after speech_started"
        assert abs(sess.truncates[0]["audio_end_ms"] - heard_ms) <= 20
        assert env.fake.violations == []
        await caller.hang_up()


async def test_end_call_hangs_up_with_bye_after_the_goodbye():
    async with environment() as env:
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


async def test_dropped_vendor_socket_leaves_no_rtp_gap():
    async with environment() as env:
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


async def test_refusal_before_answer_is_a_sip_error():
    async with environment(api_key="sk-wrong-000000000000") as env:
        call = uac.TestCall(env.target, "127.0.0.1")
        await call.open()
        try:
            assert not await call.invite()
            assert call.figures.status == 503
        finally:
            call.close()
        assert not env.core.calls and env.core.ports.in_use == frozenset()

