"""The AudioSocket ingress against the fake Asterisk AudioSocket client (res_audiosocket.c at 22.10.1)."""

from __future__ import annotations

import asyncio
import ipaddress
import uuid as uuidlib

import pytest

from bridge.call import MediaCore
from bridge.media import CallInfo, Codec, MediaLeg
from bridge.pbx.audiosocket.server import AudioSocketServer
from bridge.vendors.base import AgentAudio, AgentTurnEnd, HangupRequest, TransferRequest
from tests.conftest import RecordingControl, make_settings
from tests.fakes.audiosocket import FakeAudioSocketClient, tone
from tests.pbx.ari.harness import ScriptedAgent, ServedIngress, pcm_stats, scripted, wait_until


class Running(ServedIngress):
    """An AudioSocketServer on 127.0.0.1:<free port> with its own MediaCore; cancelled on exit."""

    def __init__(self, factory=None, **overrides) -> None:  # type: ignore[no-untyped-def]
        values = dict(audiosocket_listen=("127.0.0.1", 0), echo_delay_ms=60)
        values.update(overrides)
        self.settings = make_settings(**values)
        self.core = MediaCore(self.settings, factory)
        self.server = AudioSocketServer(self.core, self.settings)



async def test_dialplan_call_echoes_the_tone_at_the_same_pitch_and_level_then_asterisk_hangs_up():
    sent = tone(440, 50)
    async with Running() as running:
        fake = FakeAudioSocketClient(running.server.address)
        await fake.connect(sent)
        await wait_until(lambda: len(fake.received) > 75, timeout=5, what="1.5 s of audio back")
        await fake.close()
        await wait_until(lambda: not running.core.calls and not running.server.sessions, what="call released")
    back = [p for _, p in fake.received if any(p)]
    assert all(len(p) == 320 for _, p in fake.received)  # 20 ms of slin 8 kHz per message
    f_in, level_in = pcm_stats(sent)
    f_out, level_out = pcm_stats(back[5:40])
    assert abs(f_out - f_in) < 10 and abs(f_out - 440) < 15
    assert 0.9 < level_out / level_in < 1.1  # through μ-law: within 1 dB


async def test_dtmf_reaches_the_agent():
    made: list[ScriptedAgent] = []
    async with Running(scripted(made)) as running:
        fake = FakeAudioSocketClient(running.server.address)
        await fake.connect()
        await wait_until(lambda: made, what="call up")
        fake.send_dtmf("5")
        fake.send_dtmf("#")
        await wait_until(lambda: made[0].digits == ["5", "#"], what="DTMF at the agent")
        await fake.close()
        await wait_until(lambda: not running.core.calls, what="call released")


async def test_agent_hangup_plays_the_goodbye_then_sends_kind_0x00():
    goodbye = bytes([0x10]) * 160 * 10
    made: list[ScriptedAgent] = []
    async with Running(scripted(made, [AgentAudio(goodbye), AgentTurnEnd(), HangupRequest("bye")])) as running:
        fake = FakeAudioSocketClient(running.server.address)
        await fake.connect()
        await asyncio.wait_for(fake.ended.wait(), 5)
        await wait_until(lambda: not running.core.calls and not running.server.sessions, what="call released")
    assert fake.hangup_reason == "hangup"
    loud = [p for _, p in fake.received if any(p)]
    assert len(loud) == 10  # the goodbye, then the 0x00


async def test_transfer_is_not_available_and_ends_the_audiosocket():
    made: list[ScriptedAgent] = []
    async with Running(scripted(made, [TransferRequest("2000")])) as running:
        fake = FakeAudioSocketClient(running.server.address)
        await fake.connect()
        await asyncio.wait_for(fake.ended.wait(), 5)
        await wait_until(lambda: not running.core.calls, what="call released")
    assert fake.hangup_reason == "hangup"


async def test_unknown_kind_and_bad_audio_are_counted_and_the_call_goes_on():
    async with Running() as running:
        fake = FakeAudioSocketClient(running.server.address)
        await fake.connect(tone(440, 100))
        await wait_until(lambda: running.server.sessions, what="session")
        session = next(iter(running.server.sessions))
        fake.send_raw(bytes([0x42, 0, 2]) + b"zz" + bytes([0x10, 0, 3]) + b"abc")
        await wait_until(lambda: session.parser.garbage == 2, what="garbage counted")
        heard = len(fake.received)
        await wait_until(lambda: len(fake.received) > heard + 20, what="the call goes on")
        assert running.core.calls
        await fake.close()


async def test_a_call_waiting_for_its_uuid_gets_the_connection():
    async with Running() as running:
        core = running.core
        call_uuid = str(uuidlib.uuid4())
        call = await core.create_call(CallInfo("ari-1", "ari"), MediaLeg(None, Codec.PCMU, stream=True))
        core.expect_stream(call_uuid, call)
        control = RecordingControl()
        run = asyncio.create_task(call.run(control))
        fake = FakeAudioSocketClient(running.server.address, call_uuid)
        await fake.connect(tone(440, 50))
        await wait_until(lambda: len([p for _, p in fake.received if any(p)]) > 20, what="echo on the ARI call")
        assert list(core.calls) == ["ari-1"]  # no call of its own
        call.end("caller left")
        await run
        await asyncio.wait_for(fake.ended.wait(), 5)  # the call's release closes its media connection
        assert core.claim_stream(call_uuid) is None


async def test_connection_from_outside_allowed_cidrs_is_closed_unanswered():
    cidrs = (ipaddress.ip_network("10.0.0.0/8"),)
    async with Running(audiosocket_allowed_cidrs=cidrs) as running:
        fake = FakeAudioSocketClient(running.server.address)
        await fake.connect()
        await asyncio.wait_for(fake.ended.wait(), 5)
        assert running.server.cap.denied == 1 and not running.core.calls and fake.received == []


@pytest.mark.parametrize("overrides", [{"max_calls": 0}], ids=["max-calls"])
async def test_a_refused_call_is_told_to_hang_up(overrides):
    async with Running(**overrides) as running:
        fake = FakeAudioSocketClient(running.server.address)
        await fake.connect()
        await asyncio.wait_for(fake.ended.wait(), 5)
    assert fake.hangup_reason == "hangup" and fake.received == []


async def test_a_peer_that_stops_reading_costs_bounded_memory():
    from bridge.pbx.audiosocket.server import MAX_UNSENT_BYTES

    async with Running() as running:
        fake = FakeAudioSocketClient(running.server.address)
        await fake.connect()
        await wait_until(lambda: running.server.sessions and running.core.calls, what="call up")
        session = next(iter(running.server.sessions))
        transport = session.writer.transport
        transport.pause_reading()
        # the kernel buffers of a loopback socket hold minutes of 20 ms frames: pretend they are full
        transport.get_write_buffer_size = lambda: MAX_UNSENT_BYTES + 1
        dropped = session.dropped
        await wait_until(lambda: session.dropped > dropped + 5, what="frames dropped, not queued")
        await fake.close()


async def test_a_connection_for_a_call_that_already_ended_is_closed_and_starts_nothing():
    async with Running() as running:
        core = running.core
        call_uuid = str(uuidlib.uuid4())
        call = await core.create_call(CallInfo("ari-2", "ari"), MediaLeg(None, Codec.PCMU, stream=True))
        core.expect_stream(call_uuid, call)
        await call.aclose()  # e.g. the caller hung up while ExternalMedia was being created
        fake = FakeAudioSocketClient(running.server.address, call_uuid)
        await fake.connect()
        await asyncio.wait_for(fake.ended.wait(), 5)
        assert fake.hangup_reason == "eof" and not core.calls
