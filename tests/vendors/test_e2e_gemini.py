"""AI_VENDOR=gemini end to end: a SIP phone calls the SIP responder, the media core talks to the fake Gemini Live."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from bridge.codec import g711
from bridge.config import AgentPrompt
from bridge.media import Codec
from tests.fakes.gemini_live import FakeGeminiLive
from tests.fakes.ws_vendor import wait_for
from tests.vendors.harness import check_no_rtp_gap, sip_bridge

SILENCE = b"\xff" * 160
PROMPT = AgentPrompt(instructions="You are a test agent.", greeting="Hello!")


def bridge(fake: FakeGeminiLive, **overrides):
    values = dict(ai_vendor="gemini", gemini_api_key=fake.api_key, gemini_ws_endpoint=fake.url,
                  gemini_model="gemini-test-live", sip_port=0, rtp_port_min=42000, rtp_port_max=42999,
                  prompt=PROMPT, reconnect_delay_sec=0.05, ai_connection_timeout_sec=3.0)
    return sip_bridge(**(values | overrides))


def peak_hz(pcm: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(float) * np.hanning(len(pcm))))
    return float(np.argmax(spectrum) * rate / len(pcm))


def tone_frames(freq: float, n: int) -> list[bytes]:
    t = np.arange(n * 160) / 8000
    ulaw = g711.encode(Codec.PCMU, (8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16))
    return [ulaw[i * 160:(i + 1) * 160] for i in range(n)]


async def test_greeting_tone_at_24k_arrives_as_440_hz_at_8k_first():
    async with FakeGeminiLive(greeting_seconds=1.0) as fake, bridge(fake) as (core, phone):
        assert await phone.call() == 200
        await fake.connection()
        await wait_for(lambda: sum(p.payload != SILENCE for _, p in phone.collect()) >= 48, 4.0, "the greeting")
        heard = b"".join(p.payload for _, p in phone.collect() if p.payload != SILENCE)
        pcm = g711.decode(Codec.PCMU, heard)
        assert abs(peak_hz(pcm, 8000) - 440) < 5
        assert 45 <= len(heard) // 160 <= 52  # one second of 24 kHz became one second of 8 kHz frames
        await phone.hangup()
        assert fake.violations == []


async def test_caller_tone_reaches_gemini_as_16k_pcm_with_its_pitch_and_length():
    async with FakeGeminiLive(answer_turns=False) as fake, bridge(fake) as (core, phone):
        assert await phone.call() == 200
        conn = await fake.connection()
        await phone.play(tone_frames(1000, 50))
        await conn.wait_audio(50 * 640 - 64)  # one second at 16 kHz, less the resampler's tail
        pcm = np.frombuffer(bytes(conn.audio), dtype="<i2")
        assert conn.audio_rates == {16000}
        assert abs(peak_hz(pcm, 16000) - 1000) < 10
        await phone.hangup()


async def test_barge_in_stops_playback_within_40ms_on_the_wire():
    async with FakeGeminiLive(answer_turns=False) as fake, bridge(fake) as (core, phone):
        assert await phone.call() == 200
        conn = await fake.connection()
        await conn.speak(3.0, 440, done=False)
        await wait_for(lambda: sum(p.payload != SILENCE for _, p in phone.collect()) >= 25, 3.0, "the reply")
        sent_at = asyncio.get_running_loop().time()
        await conn.interrupt()
        await asyncio.sleep(0.3)
        reply = [at for at, p in phone.collect() if p.payload != SILENCE]
        flush = reply[-1] - sent_at
        print(f"gemini barge-in: last agent frame {flush * 1000:.1f} ms after `interrupted` left the fake")
        assert flush <= 0.040 and len(reply) < 150
        await phone.hangup()


async def moved_mid_call(fake: FakeGeminiLive, phone, frames: int, move: Callable[[Any], Awaitable[None]]):
    """The phone talks `frames` frames; 0.4 s in, `move(conn)` sends the agent to a second connection, which
    hears the caller. Returns (first, second) connection."""
    conn = await fake.connection()
    player = asyncio.create_task(phone.play(tone_frames(1000, frames)))
    await asyncio.sleep(0.4)
    await move(conn)
    second = await fake.connection(1)
    await player
    await second.wait_audio(640)
    return conn, second


async def test_go_away_mid_call_resumes_with_no_rtp_gap():
    async with FakeGeminiLive(answer_turns=False) as fake, bridge(fake) as (core, phone):
        assert await phone.call() == 200
        conn, second = await moved_mid_call(fake, phone, 75, lambda conn: conn.go_away(time_left=2.0))
        assert second.resumed_from is not None and fake.cut_by_goaway == 0
        await second.speak(0.2, 440)
        await wait_for(lambda: sum(p.payload != SILENCE for _, p in phone.collect()) >= 9, 3.0, "the reply")
        assert len(conn.audio) + len(second.audio) == 75 * 640  # no caller frame lost in the move
        check_no_rtp_gap(phone.collect(), "gemini goAway")
        assert await phone.hangup() == 200


async def test_dropped_socket_mid_call_resumes_with_its_handle_and_no_rtp_gap():
    async with FakeGeminiLive(answer_turns=False) as fake, bridge(fake) as (core, phone):
        assert await phone.call() == 200
        _, second = await moved_mid_call(fake, phone, 60, lambda conn: conn.drop())
        assert second.resumed_from in fake.handles
        check_no_rtp_gap(phone.collect())
        assert await phone.hangup() == 200


async def test_refused_handle_mid_call_goes_on_in_a_fresh_session_with_the_earlier_turns():
    async with FakeGeminiLive(answer_turns=False) as fake, bridge(fake) as (core, phone):
        assert await phone.call() == 200
        conn = await fake.connection()
        await conn.transcribe_input("I need a plumber")
        await conn.speak(0.2, 440, "Sure, where are you?")
        await wait_for(lambda: sum(p.payload != SILENCE for _, p in phone.collect()) >= 9, 3.0, "the reply")
        fake.handles.clear()  # the handle expired: resuming is refused with 1007
        player = asyncio.create_task(phone.play(tone_frames(1000, 40)))
        await conn.drop()
        fresh = await fake.connection(2)
        await player
        await wait_for(lambda: fresh.turns, 3.0, "the conversation so far")
        said = [(t["role"], t["parts"][0]["text"]) for t in fresh.turns[0]["turns"]]
        assert fresh.resumed_from is None and ("user", "I need a plumber") in said
        await fresh.wait_audio(640)  # the caller is heard by the new session
        await fresh.speak(0.2, 660)
        await wait_for(lambda: sum(p.payload != SILENCE for _, p in phone.collect()) >= 18, 3.0, "the next reply")
        check_no_rtp_gap(phone.collect(), "gemini refused handle")
        assert await phone.hangup() == 200
        assert len(fake.violations) == 1 and "resumption handle" in fake.violations[0]  # the one refusal


async def test_end_call_byes_after_the_goodbye():
    async with FakeGeminiLive(answer_turns=False) as fake, bridge(fake) as (core, phone):
        assert await phone.call() == 200
        conn = await fake.connection()
        await conn.speak(0.4, 440, "Goodbye", done=False)
        await conn.tool_call("end_call", {"reason": "done"})
        await conn.turn_complete()
        bye_at = await phone.wait_bye()
        goodbye = [at for at, p in phone.collect() if p.payload != SILENCE]
        assert len(goodbye) >= 19 and all(at < bye_at for at in goodbye)


async def test_refused_session_answers_the_invite_with_an_error():
    async with FakeGeminiLive() as fake, bridge(fake, gemini_model="gemini-unknown") as (core, phone):
        status = await phone.call()
        assert 500 <= status < 600 and not core.calls
