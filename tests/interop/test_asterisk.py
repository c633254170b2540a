"""sip-to-ai's Stasis application against a real Asterisk 22 started with the project's asterisk/ configuration.

A Local channel is originated into [sip-to-ai] (Stasis(sip-to-ai)); its far half plays a 440 Hz tone with
Playtones and records what it hears back. The echo agent must return the tone at the same frequency and level,
paced at 20 ms; after caller and agent hang-ups GET /channels and GET /bridges must be empty; an Asterisk
restart mid-call must be survived. Figures are printed (run with -s to see them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import urllib.error
import wave
from pathlib import Path

import numpy as np
import pytest

from bridge.codec.g711 import ulaw_decode
from bridge.vendors.base import AgentAudio, AgentTurnEnd, HangupRequest, TransferRequest
from tests.interop.asterisk_peer import AsteriskPeer, skip_reason
from tests.pbx.ari.harness import Adapter, ScriptedAgent, wait_until

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")

TONE_HZ = 440
SILENT_RMS = 100.0  # PCM16 RMS under which a frame counts as silence (Playtones is ~ 5000)


@pytest.fixture
def asterisk(tmp_path: Path):
    peer = AsteriskPeer(tmp_path, tone_hz=TONE_HZ, record_seconds=4)
    peer.start()
    yield peer
    peer.stop()


@pytest.fixture
def ari_settings(settings, asterisk):
    return dataclasses.replace(settings, ari_url=asterisk.url, ari_username=asterisk.username,
                               ari_password=asterisk.password, echo_delay_ms=200)


async def aget(peer: AsteriskPeer, path: str) -> object:
    return await asyncio.to_thread(peer.get, path)


async def registered(peer: AsteriskPeer, timeout: float = 15.0) -> None:
    """Wait until the adapter's events websocket has registered the app (Stasis() would FAIL before)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await aget(peer, "/applications/sip-to-ai")
            return
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                pytest.fail("the adapter did not register its Stasis application")
            await asyncio.sleep(0.1)


async def originate(peer: AsteriskPeer, far_end: str) -> None:
    """A Local channel whose ;1 half runs [sip-to-ai] and whose ;2 half runs `far_end` (exten@context)."""
    path = f"/channels?endpoint=Local/{far_end}&context=sip-to-ai&extension=s&priority=1&formats=ulaw"
    await asyncio.to_thread(peer.post, path)


async def nothing_left(peer: AsteriskPeer) -> None:
    """GET /channels and GET /bridges both empty (Local channel teardown takes a few ms)."""
    for _ in range(200):
        channels, bridges = await aget(peer, "/channels"), await aget(peer, "/bridges")
        if not channels and not bridges:
            return
        await asyncio.sleep(0.025)
    pytest.fail(f"left behind in Asterisk: channels={channels} bridges={bridges}")


class Tap:
    """Timestamps of every RTP datagram the call's socket sends and receives (the wire, seen from our side)."""

    def __init__(self, call) -> None:  # type: ignore[no-untyped-def]
        endpoint = call.endpoint
        self.sent: list[tuple[float, bytes]] = []
        self.received: list[tuple[float, bytes]] = []
        # the clock sends through endpoint._sendto (the socket's own sendto): time-stamp there
        send, receive = endpoint._sendto, endpoint.datagram_received

        def sendto(data: bytes, addr) -> object:  # type: ignore[no-untyped-def]
            self.sent.append((time.monotonic(), data))
            return send(data, addr)

        def datagram_received(data: bytes, addr) -> None:  # type: ignore[no-untyped-def]
            self.received.append((time.monotonic(), data))
            receive(data, addr)

        endpoint._sendto = sendto
        endpoint.datagram_received = datagram_received


async def tap_call(adapter: Adapter) -> Tap:
    await wait_until(lambda: adapter.core.calls, timeout=5, what="the call reached the core")
    call = next(iter(adapter.core.calls.values()))
    await wait_until(lambda: call.endpoint.transport is not None, what="RTP socket open")
    return Tap(call)


def rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0


def frequency(pcm: np.ndarray, rate: int = 8000) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    return float(np.argmax(spectrum) * rate / len(pcm))


def db(a: float, b: float) -> float:
    return 20 * np.log10(a / b)


def first_loud(frames: list[tuple[float, bytes]]) -> float | None:
    return next((t for t, d in frames if rms(ulaw_decode(d[12:])) > SILENT_RMS), None)


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (8000, 2, 1)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def echoed_part(recording: np.ndarray) -> np.ndarray:
    """The recording from 100 ms after the echo's onset to 100 ms before its end."""
    blocks = recording[: len(recording) // 160 * 160].reshape(-1, 160)
    loud = [i for i, b in enumerate(blocks) if rms(b) > SILENT_RMS]
    assert loud, "nothing came back to Asterisk"
    return blocks[loud[0] + 5 : loud[-1] - 5].reshape(-1)


def interval_errors_ms(times: list[float]) -> np.ndarray:
    return np.abs(np.diff(np.array(times)) * 1000 - 20.0)


async def test_tone_comes_back_same_frequency_and_level_paced_at_20ms_then_caller_hangs_up(asterisk, ari_settings):
    async with Adapter(ari_settings) as adapter:
        await registered(asterisk)
        await originate(asterisk, "rec-1@interop-tone")
        tap = await tap_call(adapter)
        # the far half records 4 s, then hangs up: that is the caller hanging up
        await wait_until(lambda: not adapter.core.calls, timeout=9, what="caller hang-up ended the call")
        await nothing_left(asterisk)

    inbound = np.concatenate([ulaw_decode(d[12:]) for _, d in tap.received])
    loud_in = inbound[np.abs(inbound) > 0]
    out = echoed_part(read_wav(asterisk.recordings / "rec-1.wav"))
    level_in, level_out = rms(inbound[len(inbound) // 4 :]), rms(out)
    f_in, f_out = frequency(loud_in), frequency(out)
    sent_times = [t for t, _ in tap.sent]
    errors = interval_errors_ms(sent_times)
    recv_errors = interval_errors_ms([t for t, _ in tap.received])
    t_in, t_out = first_loud(tap.received), first_loud(tap.sent)
    echo_ms = (t_out - t_in) * 1000 if t_in and t_out else float("nan")
    print(
        f"\nreal Asterisk 22: tone in {f_in:.1f} Hz rms {level_in:.0f}, back {f_out:.1f} Hz rms {level_out:.0f}"
        f" ({db(level_out, level_in):+.2f} dB); echo delay at our socket {echo_ms:.0f} ms"
        f" (ECHO_DELAY_MS={ari_settings.echo_delay_ms});"
        f" our send pacing |interval-20ms| p50 {np.percentile(errors, 50):.2f} ms p99 {np.percentile(errors, 99):.2f}"
        f" ms over {len(sent_times)} packets; Asterisk's p50 {np.percentile(recv_errors, 50):.2f}"
        f" p99 {np.percentile(recv_errors, 99):.2f} ms over {len(tap.received)}"
    )
    assert abs(f_in - TONE_HZ) < 10 and abs(f_out - f_in) < 5
    assert abs(db(level_out, level_in)) < 1.0
    assert 19.0 < float(np.median(np.diff(sent_times)) * 1000) < 21.0
    assert all(len(d) == 172 and d[1] & 0x7F == 0 for _, d in tap.sent)  # 160-byte PCMU frames


async def test_agent_hangup_leaves_nothing_behind(asterisk, ari_settings):
    goodbye = bytes([0x10]) * 160 * 10

    def factory(ctx):  # type: ignore[no-untyped-def]
        return ScriptedAgent(ctx, [AgentAudio(goodbye), AgentTurnEnd(), HangupRequest("goodbye")])

    async with Adapter(ari_settings, factory) as adapter:
        await registered(asterisk)
        await originate(asterisk, "s@interop-tone")
        tap = await tap_call(adapter)
        await wait_until(lambda: not adapter.core.calls, timeout=5, what="agent hang-up ended the call")
        await nothing_left(asterisk)
    assert sum(1 for _, d in tap.sent if d[12:] == bytes([0x10]) * 160) == 10  # goodbye played before hang-up


async def test_asterisk_restart_mid_call_then_next_call_is_served(asterisk, ari_settings):
    async with Adapter(ari_settings) as adapter:
        await registered(asterisk)
        await originate(asterisk, "s@interop-tone")
        tap = await tap_call(adapter)
        await wait_until(lambda: len(tap.received) > 10, what="media from Asterisk")
        await asyncio.to_thread(asterisk.stop)
        await asyncio.to_thread(asterisk.start)
        await registered(asterisk)  # the adapter reconnected by itself
        await wait_until(lambda: not adapter.core.calls, timeout=5, what="the lost call cleaned up")
        await originate(asterisk, "rec-2@interop-tone")
        tap = await tap_call(adapter)
        await wait_until(lambda: not adapter.core.calls, timeout=9, what="second call ended")
        await nothing_left(asterisk)
    out = echoed_part(read_wav(asterisk.recordings / "rec-2.wav"))
    assert abs(frequency(out) - TONE_HZ) < 10


async def test_dtmf_from_the_caller_reaches_the_agent(asterisk, ari_settings):
    made: list[ScriptedAgent] = []

    def factory(ctx):  # type: ignore[no-untyped-def]
        made.append(ScriptedAgent(ctx, []))
        return made[-1]

    async with Adapter(ari_settings, factory) as adapter:
        await registered(asterisk)
        await originate(asterisk, "dtmf@interop-tone")  # the far half sends SendDTMF(5#) after 1.5 s
        await wait_until(lambda: made and made[0].digits == ["5", "#"], timeout=6, what="DTMF 5# at the agent")
        await asyncio.to_thread(asterisk.post, "/channels/" + next(iter(adapter.core.calls)) + "/continue")
        await wait_until(lambda: not adapter.core.calls, what="call released")
    await nothing_left(asterisk)


async def test_agent_transfer_continues_the_caller_in_the_dialplan(asterisk, ari_settings):
    settings = dataclasses.replace(ari_settings, transfer_context="interop-transfer")

    def factory(ctx):  # type: ignore[no-untyped-def]
        return ScriptedAgent(ctx, [TransferRequest("2000")])

    async with Adapter(settings, factory) as adapter:
        await registered(asterisk)
        await originate(asterisk, "s@interop-tone")
        await wait_until(lambda: adapter.core.calls, what="call up")
        caller = next(iter(adapter.core.calls))
        await wait_until(lambda: not adapter.core.calls, what="call handed back")
        channel = await aget(asterisk, f"/channels/{caller}")
        assert channel["dialplan"]["context"] == "interop-transfer" and channel["dialplan"]["exten"] == "2000"
        assert await aget(asterisk, "/bridges") == []
    await nothing_left(asterisk)  # [interop-transfer] hangs up after 1 s


async def wait_for_log(peer: AsteriskPeer, text: str, timeout: float = 5.0) -> None:
    log = peer.dir / "var" / "log" / "messages.log"
    deadline = time.monotonic() + timeout
    while text not in (log.read_text(errors="replace") if log.exists() else ""):
        if time.monotonic() > deadline:
            pytest.fail(f"{text!r} never appeared in Asterisk's log")
        await asyncio.sleep(0.05)


async def test_beyond_max_calls_the_dialplan_fallback_runs(asterisk, ari_settings):
    settings = dataclasses.replace(ari_settings, max_calls=0)
    async with Adapter(settings):
        await registered(asterisk)
        await originate(asterisk, "s@interop-tone")
        # extensions.conf: back from Stasis with SIP_TO_AI_REFUSED set -> the `unavailable` branch
        await wait_for_log(asterisk, "sip-to-ai unavailable: SUCCESS max calls (0) reached")
    await nothing_left(asterisk)


async def test_without_the_adapter_stasis_fails_into_the_fallback(asterisk):
    await originate(asterisk, "s@interop-tone")
    await wait_for_log(asterisk, "sip-to-ai unavailable: FAILED")
    await nothing_left(asterisk)
