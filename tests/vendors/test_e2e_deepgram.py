"""AI_VENDOR=deepgram end to end: a SIP phone calls the SIP responder, the media core talks to the fake Deepgram."""

from __future__ import annotations

import asyncio

import pytest

from bridge.config import AgentPrompt
from tests.fakes.deepgram_agent import GREETING_BYTE, FakeDeepgram
from tests.fakes.ws_vendor import wait_for
from tests.vendors.harness import check_no_rtp_gap, sip_bridge
from tests.vendors.sip_phone import Phone

SILENCE = b"\xff" * 160  # PCMU digital silence
PROMPT = AgentPrompt(instructions="You are a test agent.", greeting="Hello!")


def caller_frames(n: int) -> list[bytes]:
    return [bytes([1 + i % 120]) * 160 for i in range(n)]  # never μ-law silence (0xFF / 0x7F)


def bridge(fake: FakeDeepgram, **overrides):
    values = dict(ai_vendor="deepgram", deepgram_api_key=fake.api_key, deepgram_ws_endpoint=fake.url, sip_port=0,
                  rtp_port_min=41000, rtp_port_max=41999, prompt=PROMPT, reconnect_delay_sec=0.05,
                  ai_connection_timeout_sec=3.0)
    return sip_bridge(**(values | overrides))


def audio_packets(phone: Phone, byte: int) -> list[tuple[float, bytes]]:
    return [(at, p.payload) for at, p in phone.collect() if p.payload == bytes([byte]) * 160]


async def test_greeting_first_audio_in_order_then_end_call_byes_after_goodbye():
    async with FakeDeepgram(greeting_bytes=1600) as fake, bridge(fake) as (core, phone):
        assert await phone.call() == 200
        conn = await fake.connection()
        frames = caller_frames(50)
        await phone.play(frames)
        await conn.wait_audio(50 * 160)
        assert bytes(conn.audio) == b"".join(frames)  # complete and in order, untouched G.711

        heard = [p.payload for _, p in phone.collect() if p.payload != SILENCE]
        assert heard[:10] == [bytes([GREETING_BYTE]) * 160] * 10  # the greeting, first

        await conn.speak(b"\x44" * 1600, "Goodbye!")
        await conn.function_call("end_call", {"reason": "caller is done"})
        bye_at = await phone.wait_bye()
        goodbye = audio_packets(phone, 0x44)
        assert len(goodbye) == 10 and all(at < bye_at for at, _ in goodbye)  # all of it played, then BYE
        assert fake.violations == []


async def test_barge_in_stops_playback_within_40ms_on_the_wire():
    async with FakeDeepgram(speak_greeting=False) as fake, bridge(fake) as (core, phone):
        assert await phone.call() == 200
        conn = await fake.connection()
        await conn.speak(b"\x55" * 24000, done=False)  # 3 s queued at once, as TTS streams it
        await wait_for(lambda: len(audio_packets(phone, 0x55)) >= 25, 3.0, "half a second of the reply")
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        await conn.barge_in()
        await asyncio.sleep(0.3)
        reply = audio_packets(phone, 0x55)
        flush = reply[-1][0] - sent_at
        print(f"deepgram barge-in: last agent frame {flush * 1000:.1f} ms after UserStartedSpeaking left the fake")
        assert flush <= 0.040
        assert len(reply) < 150  # most of the 3 s reply was dropped, not played
        late = [p.payload for at, p in phone.collect() if at > sent_at + 0.05]
        assert late and all(payload == SILENCE for payload in late)
        await phone.hangup()


async def test_vendor_drop_mid_call_keeps_rtp_flowing_and_reconnects():
    async with FakeDeepgram(speak_greeting=False) as fake, bridge(fake) as (core, phone):
        assert await phone.call() == 200
        conn = await fake.connection()
        player = asyncio.create_task(phone.play(caller_frames(100)))
        await asyncio.sleep(0.5)
        await conn.drop()
        second = await fake.connection(1)
        await player
        await second.wait_audio(160)
        await second.speak(b"\x66" * 800, "still here")
        await wait_for(lambda: len(audio_packets(phone, 0x66)) == 5, 3.0, "the reply after the reconnect")
        check_no_rtp_gap(phone.collect(), "deepgram drop")
        assert len(conn.audio) + len(second.audio) > 90 * 160  # caller audio kept flowing to the vendor
        assert await phone.hangup() == 200


async def test_dtmf_reaches_the_model_as_text():
    async with FakeDeepgram(speak_greeting=False) as fake, bridge(fake) as (core, phone):
        assert await phone.call() == 200
        conn = await fake.connection()
        await phone.play(caller_frames(5))
        await phone.dtmf("7")
        await wait_for(lambda: {"type": "InjectUserMessage", "content": "caller pressed 7"} in conn.messages,
                       3.0, "the key press as text")
        await phone.hangup()


async def test_refused_session_answers_the_invite_with_an_error():
    async with FakeDeepgram() as fake, bridge(fake, deepgram_api_key="wrong-key") as (core, phone):
        status = await phone.call()
        assert 500 <= status < 600
        assert not core.calls and fake.connections == []


@pytest.mark.parametrize("pt", [8])
async def test_alaw_call_is_alaw_to_the_vendor(pt):
    async with FakeDeepgram(speak_greeting=False) as fake, bridge(fake) as (core, phone):
        phone.pt = pt
        assert await phone.call() == 200
        conn = await fake.connection()
        assert conn.settings["audio"]["input"]["encoding"] == "alaw"
        frames = caller_frames(10)
        await phone.play(frames)
        await conn.wait_audio(1600)
        assert bytes(conn.audio) == b"".join(frames)
        await phone.hangup()
