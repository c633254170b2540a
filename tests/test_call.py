"""The call session end to end over real loopback UDP sockets, with the echo agent."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from bridge.call import MediaCore
from bridge.errors import AgentRefused
from bridge.media import CallInfo, Codec, MediaLeg
from bridge.rtp.packet import RtpPacket
from bridge.vendors.echo import EchoAgent
from tests.conftest import RecordingControl, UdpPeer


async def send_frames(peer: UdpPeer, dest, frames: list[bytes], pt: int = 0) -> None:
    """Send RTP at a steady 20 ms on an absolute schedule."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i, frame in enumerate(frames):
        await asyncio.sleep(max(0.0, t0 + i * 0.02 - loop.time()))
        peer.transport.sendto(RtpPacket(pt, i, i * 160, 0x1234, frame, marker=i == 0).serialize(), dest)


async def test_ten_seconds_of_audio_come_back_in_order_with_consistent_headers(settings):
    core = MediaCore(settings)
    peer = await UdpPeer.open()
    call = await core.create_call(CallInfo("c1", "test"), MediaLeg(peer.address, Codec.PCMU))
    frames = [bytes([1 + i % 200]) * 160 for i in range(500)]  # 10 s; no byte is PCMU silence (0xFF)
    control = RecordingControl()
    runner = asyncio.create_task(call.run(control))
    await send_frames(peer, call.local_address, frames)
    await asyncio.sleep(0.5)
    call.end("test over")
    assert await runner == "test over"

    packets = [RtpPacket.parse(data) for _, data in peer.received]
    assert len(packets) > 500
    for a, b in zip(packets, packets[1:], strict=False):
        assert b.sequence == (a.sequence + 1) & 0xFFFF
        assert b.timestamp == (a.timestamp + 160) & 0xFFFFFFFF
        assert b.ssrc == a.ssrc and b.payload_type == 0
    echoed = [p.payload for p in packets if p.payload != b"\xff" * 160]
    assert echoed == frames
    first_audio = next(i for i, p in enumerate(packets) if p.payload != b"\xff" * 160)
    assert packets[first_audio].marker and not packets[0].marker or first_audio == 0
    assert call.endpoint.stats.received == 500 and call.endpoint.stats.malformed == 0
    assert core.ports.in_use == frozenset() and not core.calls


async def test_garbage_and_foreign_packets_never_end_the_call(settings):
    core = MediaCore(settings)
    peer, stranger = await UdpPeer.open(), await UdpPeer.open()
    call = await core.create_call(CallInfo("c2", "test"), MediaLeg(peer.address, Codec.PCMU))
    runner = asyncio.create_task(call.run(RecordingControl()))
    peer.transport.sendto(b"\x00garbage", call.local_address)
    await send_frames(peer, call.local_address, [b"\x10" * 160] * 5)
    stranger.transport.sendto(RtpPacket(0, 9, 9, 9, b"\x20" * 160).serialize(), call.local_address)
    await asyncio.sleep(0.3)
    assert not runner.done()
    call.end("done")
    await runner
    stats = call.endpoint.stats
    assert (stats.malformed, stats.foreign, stats.received) == (1, 1, 5)
    assert not stranger.received  # RTP never goes to a source that was not latched


async def test_a_hundred_short_calls_leave_no_task_socket_or_port(settings):
    core = MediaCore(settings)
    before = asyncio.all_tasks()
    peers = [await UdpPeer.open() for _ in range(100)]
    calls = [await core.create_call(CallInfo(f"s{i}", "test"), MediaLeg(p.address, Codec.PCMA))
             for i, p in enumerate(peers)]
    assert len(core.ports.in_use) == 100 and len(core.clock) == 0
    runners = [asyncio.create_task(c.run(RecordingControl())) for c in calls]
    await asyncio.sleep(0.2)
    assert len(core.clock) == 100
    for p, c in zip(peers, calls, strict=True):
        p.transport.sendto(RtpPacket(8, 1, 160, 5, b"\x55" * 160).serialize(), c.local_address)
    await asyncio.sleep(0.3)
    for c in calls:
        c.end("bye")
    reasons = await asyncio.gather(*runners)
    assert reasons == ["bye"] * 100
    await asyncio.sleep(0)
    assert all(p.received for p in peers)  # every call sent RTP
    assert core.ports.in_use == frozenset() and not core.calls and len(core.clock) == 0
    assert all(c.endpoint.transport.is_closing() for c in calls)
    assert asyncio.all_tasks() - before == set()
    for p in peers:
        p.transport.close()


async def test_an_agent_that_never_connects_is_a_refusal_and_leaves_nothing(settings):
    class Hanging(EchoAgent):
        async def connect(self) -> None:
            await asyncio.sleep(3600)

    core = MediaCore(dataclasses.replace(settings, ai_connection_timeout_sec=0.0), Hanging)
    with pytest.raises(AgentRefused, match="did not connect"):
        await core.create_call(CallInfo("slow", "test"), MediaLeg(("127.0.0.1", 9), Codec.PCMU))
    assert not core.calls and core.ports.in_use == frozenset()


class Steps:
    """An ingress's words for MediaCore.serve_call, recorded."""

    def __init__(self, gone_at: str = "", fail: Exception | None = None) -> None:
        self.said: list[str] = []
        self.gone_at = gone_at  # "created": the caller hangs up while the agent connects; "connected": during media
        self.fail = fail
        self.gone_reason = ""

    async def refuse(self, exc: Exception) -> None:
        self.said.append(f"refuse {type(exc).__name__}")

    async def connect(self, call) -> None:
        self.said.append("connect")
        if self.fail is not None:
            raise self.fail
        if self.gone_at == "connected":
            self.gone_reason = "caller left"
        else:
            call.end("over")  # the PBX side ends it at once: run() returns

    def gone(self) -> str:
        if self.gone_at == "created" and not self.said:
            self.gone_reason = "caller left"
        return self.gone_reason

    async def serve(self, core: MediaCore, control=None) -> str | None:
        leg = MediaLeg(("127.0.0.1", 9), Codec.PCMU)
        return await core.serve_call(CallInfo("s", "test"), leg, control or RecordingControl(), refuse=self.refuse,
                                     connect=self.connect, gone=self.gone)


class TestServeCall:
    async def test_a_call_runs_and_is_released(self, settings):
        core, steps = MediaCore(settings), Steps()
        assert await steps.serve(core) == "over"
        assert steps.said == ["connect"] and not core.calls and core.ports.in_use == frozenset()

    async def test_a_vendor_refusal_is_the_ingress_refusal(self, settings):
        class Refusing(EchoAgent):
            async def connect(self) -> None:
                raise AgentRefused("no")

        core, steps = MediaCore(settings, Refusing), Steps()
        assert await steps.serve(core) is None
        assert steps.said == ["refuse AgentRefused"] and not core.calls and core.ports.in_use == frozenset()

    async def test_no_rtp_port_is_a_refusal(self, settings):
        core, steps = MediaCore(dataclasses.replace(settings, rtp_port_min=40000, rtp_port_max=40001)), Steps()
        with core.ports.bind(settings.media_host):  # the only port of the range is taken
            assert await steps.serve(core) is None
        assert steps.said == ["refuse NoPortAvailable"] and not core.calls

    @pytest.mark.parametrize("gone_at, said", [("created", []), ("connected", ["connect"])])
    async def test_a_caller_gone_during_setup_ends_the_call_without_running_it(self, settings, gone_at, said):
        core, steps, control = MediaCore(settings), Steps(gone_at), RecordingControl()
        assert await steps.serve(core, control) == "caller left"
        assert steps.said == said and control.hangups == [] and not core.calls and core.ports.in_use == frozenset()

    async def test_a_failed_media_setup_releases_the_call_and_is_raised(self, settings):
        core, steps = MediaCore(settings), Steps(fail=ConnectionResetError("pbx said no"))
        with pytest.raises(ConnectionResetError):
            await steps.serve(core)
        assert not core.calls and core.ports.in_use == frozenset()
