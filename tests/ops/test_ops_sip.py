"""Metrics, readiness, records and webhooks around real calls through the SIP responder (echo agent)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import wave

import numpy as np
import pytest
from aiohttp import web

from bridge import caller as uac
from bridge.media import CallInfo, Codec, MediaLeg
from bridge.vendors.base import AgentAudio, AgentInterrupted, AgentReconnected, ToolCall
from tests.conftest import RecordingControl
from tests.ops.harness import get, ops_bridge, scrape, until
from tests.ops.test_webhooks import receiver
from tests.sip.sip_live import ScriptedAgent


def sample(metrics, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_the_exposition_counts_the_calls_and_packets_made():
    async with ops_bridge() as bridge:
        figures = await uac.place_calls(bridge.target, calls=3, seconds=1.0)
        assert all(f.answered for f in figures)
        await until(lambda: not bridge.core.calls)
        m = await scrape(bridge)
    assert sample(m, "sip_to_ai_calls_total", ingress="sip", vendor="echo", outcome="completed") == 3
    assert sample(m, "sip_to_ai_calls_active", ingress="sip", vendor="echo") == 0
    assert sample(m, "sip_to_ai_rtp_packets_total", direction="in") == sum(f.sent for f in figures)
    out = sample(m, "sip_to_ai_rtp_packets_total", direction="out")
    assert sum(f.received for f in figures) <= out <= sum(f.received for f in figures) + 3 * 5  # sent before BYE
    assert sample(m, "sip_to_ai_call_setup_seconds_count", ingress="sip") == 3
    assert sample(m, "sip_to_ai_vendor_connect_seconds_count", vendor="echo") == 3
    ticks = sample(m, "sip_to_ai_send_lateness_seconds_count")
    assert out / 3 * 0.8 <= ticks <= out  # the three calls shared the clock's ticks
    assert ticks == sample(m, "sip_to_ai_send_lateness_seconds_bucket", le="+Inf")
    assert sample(m, "sip_to_ai_rtp_dropped_total", reason="malformed") == 0
    assert ("process_cpu_seconds_total", ()) in m and sample(m, "sip_to_ai_ready") == 1
    assert sample(m, "sip_to_ai_asyncio_tasks") >= 1  # the scrape itself runs in one


async def test_sources_outside_the_allowed_networks_are_counted_by_listener_and_transport():
    """SIP from outside SIP_ALLOWED_CIDRS: each UDP datagram, each TCP connection (closed as it opens)."""
    outside = (ipaddress.ip_network("10.0.0.0/8"),)
    async with ops_bridge(sip_allowed_cidrs=outside, sip_transport_type="both") as bridge:
        udp, _ = await asyncio.get_running_loop().create_datagram_endpoint(asyncio.DatagramProtocol,
                                                                            remote_addr=("127.0.0.1", bridge.sip_port))
        for _ in range(3):
            udp.sendto(b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\n\r\n")
        reader, writer = await asyncio.open_connection("127.0.0.1", bridge.sip_port)
        assert await asyncio.wait_for(reader.read(), 2) == b""  # closed by the adapter, nothing said
        writer.close()
        udp.close()
        await until(lambda: bridge.core.datagrams_denied["sip"] == 3)
        m = await scrape(bridge)
    assert sample(m, "sip_to_ai_datagrams_denied_total", listener="sip") == 3
    assert sample(m, "sip_to_ai_connections_dropped_total", listener="sip", reason="not_allowed") == 1
    assert sample(m, "sip_to_ai_connections_dropped_total", listener="sip", reason="timeout") == 0


async def test_tool_calls_and_reconnects_are_counted_by_outcome_and_reason(tmp_path):
    script = [(0.1, ToolCall("end_call", {}, "ok")), (0.0, ToolCall("lookup_order", {"id": "1"}, "unavailable")),
              (0.0, ToolCall("made_up", {}, "unknown")), (0.0, ToolCall("lookup_order", {}, "unavailable")),
              (0.0, AgentReconnected("dropped")), (0.0, AgentReconnected("goaway"))]
    async with ops_bridge(lambda ctx: ScriptedAgent(ctx, script), call_records_dir=str(tmp_path)) as bridge:
        await uac.place_calls(bridge.target, calls=1, seconds=0.6)
        await until(lambda: not bridge.core.calls)
        m = await scrape(bridge)
    calls = {o: sample(m, "sip_to_ai_tool_calls_total", vendor="echo", outcome=o)
             for o in ("ok", "unavailable", "unknown")}
    assert calls == {"ok": 1, "unavailable": 2, "unknown": 1}
    assert sample(m, "sip_to_ai_vendor_reconnects_total", vendor="echo", reason="dropped") == 1
    assert sample(m, "sip_to_ai_vendor_reconnects_total", vendor="echo", reason="goaway") == 1
    (summary,) = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert [(t["name"], t["outcome"]) for t in summary["tool_calls"]] == [
        ("end_call", "ok"), ("lookup_order", "unavailable"), ("made_up", "unknown"), ("lookup_order", "unavailable")]
    assert summary["reconnects"] == 2


async def test_ready_is_503_at_max_calls_and_the_refusal_is_counted():
    async with ops_bridge(max_calls=1) as bridge:
        assert await get(f"{bridge.admin}/ready") == (200, "ready\n")
        first = asyncio.create_task(uac.place_calls(bridge.target, calls=1, seconds=1.5))
        await until(lambda: bridge.core.calls)
        status, body = await get(f"{bridge.admin}/ready")
        assert status == 503 and "max calls (1) reached" in body
        (second,) = await uac.place_calls(bridge.target, calls=1, seconds=0.2)
        assert second.status == 503
        await first
        await until(lambda: not bridge.core.calls)
        assert (await get(f"{bridge.admin}/ready"))[0] == 200
        assert (await get(f"{bridge.admin}/health")) == (200, "ok\n")
        m = await scrape(bridge)
    assert sample(m, "sip_to_ai_calls_total", ingress="sip", vendor="echo", outcome="refused") == 1
    assert sample(m, "sip_to_ai_calls_total", ingress="sip", vendor="echo", outcome="completed") == 1


def read_stereo(path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (2, 8000, 2)
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2).astype(np.float64)


async def test_a_recorded_echo_call_is_stereo_aligned_with_the_echo_delay(tmp_path):
    async with ops_bridge(call_records_dir=str(tmp_path), echo_delay_ms=200) as bridge:
        (fig,) = await uac.place_calls(bridge.target, calls=1, seconds=3.0)
        await until(lambda: not bridge.core.calls)
    (wav,) = tmp_path.glob("*.wav")
    (summary,) = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    pcm = read_stereo(wav)
    assert len(pcm) == summary["rtp"]["sent"] * 160  # the timeline is the sender's: every frame sent, 20 ms each
    # as long as the call, less its set-up and its release after the BYE (0.01 s idle, up to 0.27 s on a loaded CPU)
    assert 0 <= summary["duration_seconds"] - len(pcm) / 8000 <= 0.5
    left, right = pcm[:, 0], pcm[:, 1]
    lags = range(0, 8 * 400)
    corr = [np.dot(left[: len(left) - lag], right[lag:]) for lag in lags]
    lag = int(np.argmax(corr))
    a, b = left[: len(left) - lag], right[lag:]
    coefficient = np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
    print(f"\nrecorded echo: right = left delayed {lag / 8:.1f} ms, correlation {coefficient:.3f}")
    assert abs(lag / 8 - 200) <= 25 and coefficient >= 0.9
    assert summary["rtp"]["received"] == fig.sent and summary["outcome"] == "completed"
    assert summary["recording"] == wav.name and summary["ingress"] == "sip"


async def test_a_barge_in_silences_the_right_channel_where_the_caller_stopped_hearing(tmp_path):
    tone = bytes([0x10, 0x90]) * 8000 * 2  # 4 s of loud PCMU audio queued at once
    script = [(0.2, AgentAudio(tone, "reply-1")), (1.0, AgentInterrupted())]
    async with ops_bridge(lambda ctx: ScriptedAgent(ctx, script), call_records_dir=str(tmp_path)) as bridge:
        await uac.place_calls(bridge.target, calls=1, seconds=2.5)
        await until(lambda: not bridge.core.calls)
    (summary,) = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    right = np.abs(read_stereo(next(tmp_path.glob("*.wav")))[:, 1])
    loud = np.flatnonzero(right > 1000)
    heard = (loud[-1] - loud[0]) / 8000
    print(f"\nbarge-in: agent audio heard for {heard * 1000:.0f} ms, then silence")
    assert 0.9 <= heard <= 1.15  # the 1 s between the reply and the barge-in, not the 4 s generated
    assert not right[loud[-1] + 1:].any()
    assert summary["barge_ins"] == 1


async def test_hostile_call_ids_write_inside_the_directory_and_calls_complete(tmp_path):
    records = tmp_path / "records"
    hostile = ["../../x", "a/b", "nul\x00byte", "x" * 500, "..", "/etc/passwd"]
    async with ops_bridge(call_records_dir=str(records)) as bridge:
        await until(records.exists)
        for call_id in hostile:
            call = await bridge.core.create_call(CallInfo(call_id, "test"), MediaLeg(("127.0.0.1", 9), Codec.PCMU))
            runner = asyncio.create_task(call.run(RecordingControl()))
            await asyncio.sleep(0.1)
            call.end("test over")
            assert await runner == "test over"
        phone = uac.TestCall(bridge.target, "127.0.0.1")
        phone.call_id = "../../../sip-" + "y" * 300  # a legal SIP Call-ID (word chars include / and .)
        await phone.open()
        try:
            assert await phone.invite()
            await asyncio.sleep(0.2)
            await phone.bye()
        finally:
            phone.close()
        await until(lambda: not bridge.core.calls)
        await until(lambda: bridge.ops.records.counts["summary", "written"] == 7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["records"]
    assert len(list(records.glob("*.json"))) == len(list(records.glob("*.wav"))) == 7
    ids = {json.loads(p.read_text())["call_id"] for p in records.glob("*.json")}
    assert ids == {*hostile, phone.call_id}


async def test_an_unwritable_directory_and_a_failing_webhook_cost_nothing_but_themselves(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response()

    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=500)

    for handler in (hang, fail):
        async with receiver(handler) as url, ops_bridge(call_records_dir=str(tmp_path / "file" / "records"),
                                                        events_webhook_url=url) as bridge:
            bridge.ops.webhooks.timeout, bridge.ops.webhooks.retry_delays = 0.5, (0.05,)
            figures = await uac.place_calls(bridge.target, calls=2, seconds=1.0)
            assert all(f.answered and f.received >= 45 and f.ended_by == "caller" for f in figures)
            await until(lambda: not bridge.core.calls)
            await until(lambda: sum(n for (_, r), n in bridge.ops.webhooks.counts.items() if r == "failed") == 4,
                        timeout=10)
            assert bridge.ops.records.counts["audio", "written"] == 0
            release.set()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize("secret", ["", "hook-secret"])
async def test_webhooks_carry_started_and_ended_with_the_summary(secret):
    got: list[tuple[dict, str]] = []

    async def handler(request: web.Request) -> web.Response:
        got.append((json.loads(await request.read()), request.headers.get("X-Sip-To-Ai-Signature", "")))
        return web.Response(status=204)

    async with receiver(handler) as url, ops_bridge(events_webhook_url=url, events_webhook_secret=secret) as bridge:
        (fig,) = await uac.place_calls(bridge.target, calls=1, seconds=0.5)
        await until(lambda: len(got) == 2)
    (started, sig1), (ended, sig2) = got
    assert started["event"] == "call.started" and ended["event"] == "call.ended"
    assert started["call_id"] == ended["call_id"] and ended["rtp"]["received"] == fig.sent
    assert bool(sig1) == bool(sig2) == bool(secret)
