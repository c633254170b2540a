"""The ESL outbound server against the fake FreeSWITCH `socket` app (pbx.md §2.4, §2.7): one call per socket."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import statistics

import numpy as np
import pytest

from bridge.call import MediaCore
from bridge.errors import AgentRefused
from bridge.media import FRAME_MS, AudioFormat
from bridge.pbx.esl.server import EslOutboundServer
from bridge.vendors.base import Agent, AgentAudio, AgentEvent, AgentTurnEnd, HangupRequest, TransferRequest
from tests.conftest import make_settings
from tests.fakes.esl import FakeSocketApp

FRAMES = [bytes([i]) * 160 for i in range(1, 41)]  # 40 distinct, recognisable frames (never 0xFF silence)


def esl_settings(**overrides):
    base = random.randrange(20000, 60000, 1000)  # a port range of its own per test
    values = dict(esl_listen=("127.0.0.1", 0), rtp_port_min=base, rtp_port_max=base + 998, echo_delay_ms=60,
                  media_address="127.0.0.1")
    values.update(overrides)
    return make_settings(**values)


class ScriptedAgent(Agent):
    """A test agent: emits its script, records DTMF, then stays quiet until closed."""

    def __init__(self, ctx, script: list[AgentEvent]) -> None:
        super().__init__(ctx)
        self.input_format = self.output_format = AudioFormat.of(ctx.codec)
        self.script = script
        self.dtmf: list[str] = []
        self.heard = 0
        self._closed = asyncio.Event()

    async def connect(self) -> None:
        return None

    def send_audio(self, data: bytes) -> None:
        self.heard += 1

    def send_dtmf(self, digit: str) -> None:
        self.dtmf.append(digit)

    async def events(self):
        for event in self.script:
            yield event
        await self._closed.wait()

    async def aclose(self) -> None:
        self._closed.set()


def scripted(agents: list, script: list[AgentEvent]):
    def factory(ctx):
        agents.append(ScriptedAgent(ctx, script))
        return agents[-1]
    return factory


@contextlib.asynccontextmanager
async def adapter(settings, agent_factory=None):
    core = MediaCore(settings, agent_factory)
    server = EslOutboundServer(core, settings)
    ready = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(server.serve(ready))
        await ready.wait()
        try:
            yield core, server
        finally:
            task.cancel()


@contextlib.asynccontextmanager
async def esl_call(settings, agent_factory=None, **fake):
    """The adapter's ESL server and one fake FreeSWITCH channel connected to it."""
    async with adapter(settings, agent_factory) as (core, server), FakeSocketApp(server.address, **fake) as fs:
        yield core, fs


async def until(predicate, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def audio_frames(media):
    """What the channel got written, less silence (0xFF, or 0x7F: -1 from comfort noise's 0xFF L16 samples)."""
    return [data for _, data in media.received if data.strip(b"\xff\x7f")]


async def test_echo_call_commands_audio_order_and_pacing():
    settings = esl_settings(esl_variables=("sip_h_X-Account", "sip_h_X-Empty", "unset_var"))
    async with adapter(settings) as (core, server):
        async with FakeSocketApp(server.address, frames=list(FRAMES),
                                 variables={"sip_h_X-Account": "a b&c=d"}) as fs:
            await until(lambda: fs.media is not None and len(audio_frames(fs.media)) >= len(FRAMES))
            call = core.calls[fs.uuid]
            assert call.info.caller == "1001" and call.info.callee == "7000" and call.info.ingress == "esl"
            assert dict(call.info.metadata) == {"sip_h_X-Account": "a b&c=d", "sip_h_X-Empty": ""}
            assert audio_frames(fs.media)[: len(FRAMES)] == FRAMES  # every frame back, in order

            assert fs.commands == ["connect", "myevents plain", "linger", "sendmsg", "sendmsg"]
            answer, fork = fs.sendmsgs
            assert answer["call-command"] == "execute" and answer["execute-app-name"] == "answer"
            assert fork["call-command"] == "unicast" and fork["transport"] == "udp"
            assert "flags" not in fork  # not `native`: L16 both ways, see bridge.pbx.esl.server.media_leg
            assert call.endpoint.leg.format == AudioFormat("pcm16", 8000)
            assert fork["local-ip"] == "127.0.0.1" and fork["remote-ip"] == "127.0.0.1"
            assert int(fork["remote-port"]) == call.local_address[1]
            assert int(fork["local-port"]) == call.local_address[1] + 1

            times = [t for t, _ in fs.media.received]
            gaps = [(b - a) * 1000 for a, b in zip(times, times[1:], strict=False)]
            errors = sorted(abs(g - FRAME_MS) for g in gaps)
            p50, p99 = statistics.median(errors), errors[int(len(errors) * 0.99)]
            print(f"\nunicast frames back: {len(gaps)} intervals, error p50 {p50:.2f} ms, p99 {p99:.2f} ms")
            mean = (times[-1] - times[0]) * 1000 / len(gaps)
            assert 15 < mean < 25  # paced at 20 ms (a generous bound; exact figures are printed)

            await fs.hangup()
            await until(lambda: fs.adapter_closed.is_set() and not core.calls)
        assert not any(m["call-command"] == "hangup" for m in fs.sendmsgs)  # the caller hung up, not us
        assert not core.ports.in_use


async def test_caller_hangup_releases_the_call():
    async with esl_call(esl_settings()) as (core, fs):
        await until(lambda: fs.media is not None and fs.uuid in core.calls)
        call = core.calls[fs.uuid]
        await fs.hangup("NORMAL_CLEARING")
        await until(lambda: not core.calls and fs.adapter_closed.is_set())
        assert call.reason == "caller hung up (NORMAL_CLEARING)"
        assert fs.commands[-1] == "sendmsg"  # nothing sent after the unicast


async def test_agent_hangup_after_goodbye_audio():
    goodbye = [bytes([0x40 + i]) * 160 for i in range(15)]
    agents: list[ScriptedAgent] = []
    script = [AgentAudio(b"".join(goodbye)), AgentTurnEnd(), HangupRequest("done")]
    async with esl_call(esl_settings(), scripted(agents, script)) as (core, fs):
        await until(lambda: fs.hung_up.is_set() and not core.calls and fs.adapter_closed.is_set())
        assert fs.sendmsgs[-1] == {"call-command": "hangup", "hangup-cause": "NORMAL_CLEARING"}
        assert fs.hangup_cause == "NORMAL_CLEARING"
        assert audio_frames(fs.media) == goodbye  # all of the goodbye was played before the hangup


async def test_transfer_uses_uuid_transfer_then_lets_go_of_the_socket():
    """The transfer ends the socket app (CHANNEL_EXECUTE_COMPLETE socket); then the adapter closes its socket,
    and the transferred channel goes on: neither hung up nor sent on in the socket's dialplan."""
    agents: list[ScriptedAgent] = []
    settings = esl_settings(transfer_context="sales", transfer_extension="2000")
    async with esl_call(settings, scripted(agents, [TransferRequest("3001")])) as (core, fs):
        await until(lambda: fs.transfers and not core.calls)
        assert fs.api_calls == [f"uuid_transfer {fs.uuid} 3001 XML sales"]
        assert fs.transfers == ["3001 XML sales"]
        assert not core.ports.in_use  # media released at once
        await until(fs.adapter_closed.is_set)
        assert not fs.hangup_cause and not fs.continued
        assert not any(m["call-command"] == "hangup" for m in fs.sendmsgs)


async def test_transfer_default_extension_without_full_uses_execute():
    agents: list[ScriptedAgent] = []
    settings = esl_settings(transfer_context="support", transfer_extension="2000")
    async with esl_call(settings, scripted(agents, [TransferRequest("")]), full=False) as (core, fs):
        await until(lambda: fs.transfers and not core.calls)
        assert fs.commands[:3] == ["connect", "myevents plain", "linger"]  # linger: -ERR command not found
        assert fs.sendmsgs[-1]["execute-app-name"] == "transfer"
        assert fs.transfers == ["2000 XML support"] and fs.api_calls == []


async def test_transfer_to_an_injected_target_hangs_up_instead():
    agents: list[ScriptedAgent] = []
    async with esl_call(esl_settings(), scripted(agents, [TransferRequest("2000 XML evil")])) as (core, fs):
        await until(lambda: fs.hung_up.is_set() and not core.calls)
        assert fs.api_calls == [] and fs.transfers == []
        assert fs.sendmsgs[-1]["call-command"] == "hangup"


async def test_dtmf_reaches_the_agent():
    agents: list[ScriptedAgent] = []
    async with esl_call(esl_settings(), scripted(agents, [])) as (core, fs):
        await until(lambda: fs.media is not None and agents and agents[0].heard > 0)
        for key in "5#":
            fs.press(key)
        await until(lambda: agents[0].dtmf == ["5", "#"])
        await fs.hangup()
        await until(lambda: not core.calls)


async def test_freeswitch_vanishing_mid_call():
    async with adapter(esl_settings()) as (core, server):
        async with FakeSocketApp(server.address) as fs:
            await until(lambda: fs.media is not None and fs.uuid in core.calls)
            call = core.calls[fs.uuid]
            fs.vanish()
            await until(lambda: not core.calls)
            assert call.reason.startswith("freeswitch gone")
            assert not core.ports.in_use
        async with FakeSocketApp(server.address) as again:  # the server still takes calls
            await until(lambda: again.media is not None and again.uuid in core.calls)
            await again.hangup()
            await until(lambda: not core.calls)


async def test_refused_call_goes_back_to_the_dialplan_unanswered():
    async with esl_call(esl_settings(max_calls=0)) as (core, fs):
        await until(fs.adapter_closed.is_set)
        assert fs.commands == ["connect", "myevents plain", "sendmsg", "resume", "exit"]
        assert fs.sendmsgs[0]["execute-app-name"] == "set"
        assert fs.variables["SIP_TO_AI_REFUSED"] == "max calls (0) reached"
        assert fs.continued and not fs.answered and not fs.hangup_cause


async def test_non_g711_channel_gets_linear_unicast_at_its_rate():
    """OPUS: unicast without `native`, 16-bit linear at 48 kHz (960 samples a frame) both ways."""
    caller = np.full(960, 1000, "<i2").tobytes()
    async with esl_call(esl_settings(), answered=True, codec="OPUS", rate=48000, frames=[caller] * 50) as (core, fs):
        await until(lambda: fs.media is not None and fs.uuid in core.calls)
        assert fs.unicast_flags == ""
        call = core.calls[fs.uuid]
        assert call.endpoint.leg.format == AudioFormat("pcm16", 48000)
        await until(lambda: any(len(d) == 1920 and np.frombuffer(d, "<i2").mean() > 900 for _, d in fs.media.received),
                    timeout=3)  # the echo agent's audio came back as 20 ms L16 frames at 48 kHz
        assert {len(d) for _, d in fs.media.received} == {1920}
        await fs.hangup()
        await until(lambda: not core.calls)


async def test_channel_without_a_read_codec_is_given_back():
    async with esl_call(esl_settings(), answered=True, codec="", rate=0) as (core, fs):
        await until(fs.adapter_closed.is_set)
        assert "no audio to fork" in fs.variables["SIP_TO_AI_REFUSED"]
        assert fs.continued and not core.calls and fs.media is None


async def test_agent_refusal_gives_the_call_back():
    def refusing(ctx):
        raise AgentRefused("openai: invalid_api_key")

    async with esl_call(esl_settings(), refusing) as (core, fs):
        await until(fs.adapter_closed.is_set)
        assert fs.variables["SIP_TO_AI_REFUSED"] == "openai: invalid_api_key"
        assert fs.continued and not core.calls and not core.ports.in_use


async def test_already_answered_channel_is_not_answered_again():
    async with esl_call(esl_settings(), answered=True, codec="PCMA") as (core, fs):
        await until(lambda: fs.media is not None and fs.uuid in core.calls)
        assert [m["call-command"] for m in fs.sendmsgs] == ["unicast"]
        assert core.calls[fs.uuid].endpoint.leg.format == AudioFormat("pcm16", 8000)
        await fs.hangup()
        await until(lambda: not core.calls)


@pytest.mark.parametrize("garbage", [b"this is not a header\n\n", b"X-Filler: " + b"a" * (300 * 1024)])
async def test_garbage_closes_only_that_connection(garbage):
    async with adapter(esl_settings()) as (core, server):
        reader, writer = await asyncio.open_connection(*server.address)
        assert await reader.readuntil(b"\n\n") == b"connect\n\n"
        writer.write(garbage)
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # the adapter closed this socket
        writer.close()
        async with FakeSocketApp(server.address) as fs:  # and still serves the next one
            await until(lambda: fs.media is not None and fs.uuid in core.calls)
            await fs.hangup()
            await until(lambda: not core.calls)


async def test_comfort_noise_frames_do_not_end_the_call():
    """During CN FreeSWITCH sends 320 bytes of 0xFF, native or not (pbx.md §2.4): the call goes on."""
    script = FRAMES[:10] + [b"\xff" * 320] + FRAMES[10:20]
    async with esl_call(esl_settings(), frames=script) as (core, fs):
        await until(lambda: fs.media is not None and len(audio_frames(fs.media)) >= 20)
        assert audio_frames(fs.media)[:20] == FRAMES[:20]
        assert fs.uuid in core.calls and not fs.hangup_cause
        await fs.hangup()
        await until(lambda: not core.calls)


async def test_shutdown_hangs_up_live_calls():
    settings = esl_settings()
    core = MediaCore(settings)
    server = EslOutboundServer(core, settings)
    ready = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(server.serve(ready))
        await ready.wait()
        async with FakeSocketApp(server.address) as fs:
            await until(lambda: fs.media is not None and fs.uuid in core.calls)
            task.cancel()  # what bridge.app does after the drain deadline
            await until(lambda: fs.hung_up.is_set() and fs.adapter_closed.is_set())
            assert fs.sendmsgs[-1] == {"call-command": "hangup", "hangup-cause": "NORMAL_CLEARING"}
    assert not core.calls and not core.ports.in_use


async def test_a_failed_fork_is_logged(monkeypatch, caplog):
    monkeypatch.setattr("bridge.pbx.esl.server.NO_MEDIA_WARNING", 0.2)
    async with esl_call(esl_settings(), unicast_port_taken=True) as (core, fs):
        await until(lambda: "no unicast audio from freeswitch" in caplog.text)
        assert fs.uuid in core.calls  # the call is not dropped for it: the operator decides
        await fs.hangup()
        await until(lambda: not core.calls)


async def test_connections_from_outside_the_allowed_networks_are_refused():
    settings = esl_settings(esl_allowed_cidrs=(ipaddress.ip_network("10.0.0.0/8"),))
    async with adapter(settings) as (core, server):
        reader, writer = await asyncio.open_connection(*server.address)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed before a single command
        writer.close()
        assert server.cap.denied == 1 and not core.calls and not core.ports.in_use


async def test_unicast_audio_stopping_hangs_the_channel_up():
    """RTP_TIMEOUT_SEC on the ESL ingress: FreeSWITCH's unicast audio stops (the socket stays): hang-up."""
    async with esl_call(esl_settings(rtp_timeout_sec=1)) as (core, fs):
        await until(lambda: fs.media is not None and fs.uuid in core.calls)
        await asyncio.sleep(1.5)  # silence frames keep coming: the call stays
        assert fs.uuid in core.calls and not fs.hangup_cause
        fs.media.close()
        await until(lambda: fs.hung_up.is_set() and not core.calls)
        assert {"call-command": "hangup", "hangup-cause": "NORMAL_CLEARING"} in fs.sendmsgs
