"""The chan_websocket ingress against the fake Asterisk WebSocket channel (chan_websocket.c at 22.10.1)."""

from __future__ import annotations

import asyncio
import ipaddress
import math
import struct

import aiohttp
import numpy as np
import pytest

from bridge.call import MediaCore
from bridge.codec import g711
from bridge.media import CallInfo, Codec, MediaLeg
from bridge.pbx.websocket.server import WebSocketServer
from bridge.vendors.base import AgentAudio, AgentTurnEnd, HangupRequest
from tests.conftest import RecordingControl, make_settings
from tests.fakes.chan_websocket import FakeChanWebSocket
from tests.pbx.ari.harness import ScriptedAgent, ServedIngress, pcm_stats, scripted, wait_until


def ulaw_tone(hz: float, frames: int, amplitude: int = 8000) -> list[bytes]:
    samples = [int(amplitude * math.sin(2 * math.pi * hz * n / 8000)) for n in range(frames * 160)]
    return [g711.ulaw_encode(np.array(samples[i * 160 : (i + 1) * 160], dtype=np.int16)) for i in range(frames)]


class Running(ServedIngress):
    def __init__(self, factory=None, **overrides) -> None:  # type: ignore[no-untyped-def]
        values = dict(websocket_listen=("127.0.0.1", 0), echo_delay_ms=60)
        values.update(overrides)
        self.settings = make_settings(**values)
        self.core = MediaCore(self.settings, factory)
        self.server = WebSocketServer(self.core, self.settings)

    @property
    def uri(self) -> str:
        return "ws://{}:{}/media".format(*self.server.address)



def pcm(frames: list[bytes]) -> list[bytes]:
    return [struct.pack(f"<{len(f)}h", *g711.ulaw_decode(f)) for f in frames]


async def test_dialplan_call_echoes_the_tone_at_the_same_pitch_and_level_then_asterisk_hangs_up():
    sent = ulaw_tone(440, 50)
    async with Running() as running:
        fake = FakeChanWebSocket(running.uri)
        await fake.connect(sent)
        await wait_until(lambda: len(fake.played) > 75, timeout=5, what="1.5 s of audio played by Asterisk")
        await fake.close()
        await wait_until(lambda: not running.core.calls and not running.server.sessions, what="call released")
    back = [f for _, f in fake.played if f != b"\xff" * 160]
    f_in, level_in = pcm_stats(pcm(sent))
    f_out, level_out = pcm_stats(pcm(back[5:40]))
    assert abs(f_out - f_in) < 10 and 0.95 < level_out / level_in < 1.05
    assert len(fake.queue) < 5  # one frame per 20 ms: Asterisk's queue never builds up


async def test_metadata_from_the_uri_and_json_media_start_and_dtmf_reach_the_agent():
    made: list[ScriptedAgent] = []
    async with Running(scripted(made)) as running:
        fake = FakeChanWebSocket(running.uri + "?caller=1001", json_format=True)
        await fake.connect(variables={"ACCOUNT": "42"})
        await wait_until(lambda: made, what="call up")
        await fake.send_dtmf("5")
        await wait_until(lambda: made[0].digits == ["5"], what="DTMF at the agent")
        meta = made[0].ctx.call.metadata
        assert (meta["caller"], meta["ACCOUNT"], meta["channel_id"]) == ("1001", "42", fake.channel_id)
        await fake.close()
        await wait_until(lambda: not running.core.calls, what="call released")


async def test_agent_hangup_plays_the_goodbye_then_sends_hangup_in_the_channels_format():
    goodbye = bytes([0x10]) * 160 * 10
    made: list[ScriptedAgent] = []
    async with Running(scripted(made, [AgentAudio(goodbye), AgentTurnEnd(), HangupRequest("bye")])) as running:
        fake = FakeChanWebSocket(running.uri, json_format=True)
        await fake.connect()
        await asyncio.wait_for(fake.ended.wait(), 5)
        await wait_until(lambda: not running.core.calls and not running.server.sessions, what="call released")
        await fake.close()
    assert fake.hangup_reason == "HANGUP" and fake.texts == ['{"command":"HANGUP"}']
    assert sum(1 for f in fake.queue + [f for _, f in fake.played] if f == bytes([0x10]) * 160) == 10


async def test_a_format_the_core_does_not_carry_is_hung_up():
    async with Running() as running:
        fake = FakeChanWebSocket(running.uri, fmt="slin16")
        await fake.connect()
        await asyncio.wait_for(fake.ended.wait(), 5)
        await fake.close()
        assert fake.hangup_reason == "HANGUP" and not running.core.calls


async def test_garbage_text_is_counted_and_the_call_goes_on():
    async with Running() as running:
        fake = FakeChanWebSocket(running.uri)
        await fake.connect(ulaw_tone(440, 100))
        await wait_until(lambda: running.server.sessions, what="session")
        session = next(iter(running.server.sessions))
        await fake.send_text("{broken")
        await fake.send_text("hello there")
        await wait_until(lambda: session.garbage == 2, what="garbage counted")
        played = len(fake.played)
        await wait_until(lambda: len(fake.played) > played + 20, what="the call goes on")
        assert running.core.calls
        await fake.close()


async def test_first_message_must_be_media_start():
    async with Running() as running, aiohttp.ClientSession() as http:
        async with http.ws_connect(running.uri, protocols=("media",)) as ws:
            await ws.send_bytes(b"\xff" * 160)
            msg = await asyncio.wait_for(ws.receive(), 5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert not running.core.calls


async def test_a_call_waiting_for_its_channel_id_gets_the_connection_and_its_dtmf_is_left_to_ari():
    async with Running() as running:
        core = running.core
        made: list[ScriptedAgent] = []
        core._agent_factory = scripted(made)
        call = await core.create_call(CallInfo("ari-1", "ari"), MediaLeg(None, Codec.PCMU, stream=True))
        core.expect_stream("ari-1-media", call)
        run = asyncio.create_task(call.run(RecordingControl()))
        fake = FakeChanWebSocket(running.uri, channel_id="ari-1-media")
        await fake.connect(ulaw_tone(440, 50))
        await fake.send_dtmf("7")
        await wait_until(lambda: made[0].heard > 160 * 20, what="audio on the ARI call")
        assert list(core.calls) == ["ari-1"] and made[0].digits == []
        call.end("caller left")
        await run
        await asyncio.wait_for(fake.ended.wait(), 5)  # the release closes the media websocket
        await fake.close()


async def test_connection_from_outside_allowed_cidrs_is_refused():
    cidrs = (ipaddress.ip_network("10.0.0.0/8"),)
    async with Running(websocket_allowed_cidrs=cidrs) as running, aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(running.uri, protocols=("media",))
        assert refused.value.status == 403 and running.server.cap.denied == 1
