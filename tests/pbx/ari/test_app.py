"""The Stasis application against the fake Asterisk: call flow, teardown, control, reconnect, admission."""

from __future__ import annotations

import dataclasses
import math

import pytest

from bridge.call import MediaCore
from bridge.errors import ConfigError
from bridge.pbx.ari.app import REFUSED_VARIABLE, serve_ari
from bridge.vendors.base import AgentAudio, AgentTurnEnd, HangupRequest, TransferRequest
from tests.fakes.ari import AriReply, FakeAsterisk, tone
from tests.pbx.ari.harness import Adapter, ScriptedAgent, pcm_stats, wait_until

TONE_HZ = 440
TONE_AMPLITUDE = 8000


def agents(script=(), refuse=False):
    """An agent factory that remembers the agents it made."""
    made: list[ScriptedAgent] = []

    def factory(ctx):
        agent = ScriptedAgent(ctx, list(script), refuse)
        made.append(agent)
        return agent

    factory.made = made  # type: ignore[attr-defined]
    return factory


def bridged(fake: FakeAsterisk) -> bool:
    return any(len(b.channels) == 2 for b in fake.bridges.values())


async def settle_empty(fake: FakeAsterisk, adapter: Adapter) -> None:
    await wait_until(lambda: not fake.leftovers(), what="GET /channels and /bridges empty")
    await wait_until(lambda: not adapter.core.calls, what="no live call in the core")
    assert not adapter.core.ports.in_use


class TestEchoCall:
    async def test_tone_comes_back_at_the_same_frequency_and_level(self, fake, ari_settings):
        async with Adapter(ari_settings) as adapter:
            caller = fake.call_in(caller="1001", source=tone(TONE_HZ, TONE_AMPLITUDE))
            await wait_until(lambda: len(fake.heard(caller)) >= 60, what="60 echoed frames")
            frames = [pcm for _, pcm in fake.heard(caller)[10:60]]
            freq, rms = pcm_stats(frames)
            assert abs(freq - TONE_HZ) < 10
            sent_rms = TONE_AMPLITUDE / math.sqrt(2)
            assert abs(20 * math.log10(rms / sent_rms)) < 0.5  # dB; G.711 twice costs a few tenths at most
            media = fake.media_channel()
            assert media is not None and media.rtp is not None
            assert media.rtp.learned == media.rtp.target  # we send from the socket named in external_host
            assert media.rtp.dropped == 0
            assert len(adapter.core.calls) == 1  # the ExternalMedia channel's own StasisStart made no call
            fake.caller_hangup(caller)
            await settle_empty(fake, adapter)

    async def test_requests_in_order_for_one_call(self, fake, ari_settings):
        async with Adapter(ari_settings) as adapter:
            caller = fake.call_in(source=tone(TONE_HZ))
            await wait_until(lambda: fake.heard(caller), what="first echoed frame")
            fake.caller_hangup(caller)
            await settle_empty(fake, adapter)
        calls = [(m, p) for m, p, _ in fake.requests]
        assert calls == [
            ("GET", "/channels"),  # at connect: callers already waiting in Stasis are adopted (none here)
            ("POST", f"/channels/{caller}/answer"),
            ("POST", "/channels/externalMedia"),
            ("POST", "/bridges"),
            ("POST", f"/bridges/{caller}-bridge/addChannel"),
            ("DELETE", f"/channels/{caller}-media"),
            ("DELETE", f"/bridges/{caller}-bridge"),
        ]
        params = fake.requests[2][2]
        assert params["format"] == "ulaw" and params["channelId"] == f"{caller}-media"
        assert params["app"] == "sip-to-ai" and params["external_host"].startswith("127.0.0.1:")
        assert not fake.rejected

    async def test_an_answered_channel_is_not_answered_again(self, fake, ari_settings):
        async with Adapter(ari_settings) as adapter:
            caller = fake.call_in(state="Up")
            await wait_until(lambda: bridged(fake), what="bridged")
            fake.caller_hangup(caller)
            await settle_empty(fake, adapter)
        assert ("POST", f"/channels/{caller}/answer") not in [(m, p) for m, p, _ in fake.requests]

    async def test_alaw_format(self, fake, ari_settings):
        settings = dataclasses.replace(ari_settings, ari_format="alaw")
        async with Adapter(settings) as adapter:
            caller = fake.call_in(source=tone(TONE_HZ, TONE_AMPLITUDE))
            await wait_until(lambda: len(fake.heard(caller)) >= 40, what="40 echoed frames")
            freq, _ = pcm_stats([pcm for _, pcm in fake.heard(caller)[10:40]])
            assert abs(freq - TONE_HZ) < 10
            assert {pt for _, pt, _ in fake.media_channel().rtp.received} == {8}
            fake.caller_hangup(caller)
            await settle_empty(fake, adapter)

    async def test_caller_data_reaches_the_agent(self, fake, ari_settings):
        settings = dataclasses.replace(ari_settings, ari_variables=("ACCOUNT", "MISSING"))
        factory = agents()
        async with Adapter(settings, factory) as adapter:
            caller = fake.call_in(caller="+15551234", args=("sales", "vip"), variables={"ACCOUNT": "42"})
            await wait_until(lambda: factory.made, what="agent created")
            info = factory.made[0].ctx.call
            assert info.call_id == caller and info.ingress == "ari" and info.caller == "+15551234"
            assert info.metadata["ACCOUNT"] == "42" and "MISSING" not in info.metadata
            assert info.metadata["args"] == "sales,vip" and info.metadata["arg2"] == "vip"
            fake.caller_hangup(caller)
            await settle_empty(fake, adapter)


class TestTeardown:
    async def test_caller_hangup_releases_everything(self, fake, ari_settings):
        factory = agents()
        async with Adapter(ari_settings, factory) as adapter:
            caller = fake.call_in(source=tone(TONE_HZ))
            await wait_until(lambda: fake.heard(caller), what="media flowing")
            fake.caller_hangup(caller)
            await settle_empty(fake, adapter)
            assert factory.made[0]._closed.is_set()  # the vendor session was closed

    async def test_agent_hangup_plays_the_goodbye_then_hangs_up(self, fake, ari_settings):
        goodbye = bytes([0x10]) * 160 * 10  # 200 ms of loud PCMU
        factory = agents([AgentAudio(goodbye), AgentTurnEnd(), HangupRequest("done")])
        async with Adapter(ari_settings, factory) as adapter:
            caller = fake.call_in()
            await settle_empty(fake, adapter)
            media = [ch for ch in fake.requests if ch[1].endswith("-media") and ch[0] == "DELETE"]
            assert media
            assert ("DELETE", f"/channels/{caller}") in [(m, p) for m, p, _ in fake.requests]
        loud = [p for _, pt, p in fake.media_history[0].received if p == bytes([0x10]) * 160]
        assert len(loud) == 10  # the whole goodbye reached Asterisk before the hang-up

    async def test_shutdown_hangs_up_live_calls(self, fake, ari_settings):
        adapter = Adapter(ari_settings)
        async with adapter:
            fake.call_in(source=tone(TONE_HZ))
            await wait_until(lambda: bridged(fake) and adapter.core.calls, what="call up")
        assert not fake.leftovers()
        assert not adapter.core.calls


class TestControl:
    async def test_transfer_continues_in_the_dialplan(self, fake, ari_settings):
        settings = dataclasses.replace(ari_settings, transfer_context="agents")
        factory = agents([TransferRequest("sales")])
        async with Adapter(settings, factory) as adapter:
            caller = fake.call_in()
            await wait_until(lambda: fake.continued, what="continue")
            assert fake.continued == [(caller, {"context": "agents", "extension": "sales", "priority": "1"})]
            await wait_until(lambda: not fake.bridges and not adapter.core.calls, what="released")
            assert list(fake.channels) == [caller]  # it runs on in the dialplan
            fake.caller_hangup(caller)
            await settle_empty(fake, adapter)

    async def test_transfer_by_redirect(self, fake, ari_settings):
        settings = dataclasses.replace(ari_settings, ari_transfer_mode="redirect")
        factory = agents([TransferRequest("PJSIP/2000")])
        async with Adapter(settings, factory) as adapter:
            caller = fake.call_in()
            await settle_empty(fake, adapter)
            assert fake.redirected == [(caller, "PJSIP/2000")]

    async def test_dtmf_reaches_the_agent(self, fake, ari_settings):
        factory = agents()
        async with Adapter(ari_settings, factory) as adapter:
            caller = fake.call_in()
            await wait_until(lambda: bridged(fake), what="bridged")
            for digit in "5#":
                fake.press(caller, digit)
            await wait_until(lambda: factory.made[0].digits == ["5", "#"], what="DTMF at the agent")
            fake.caller_hangup(caller)
            await settle_empty(fake, adapter)


class TestAdmission:
    async def test_beyond_max_calls_the_channel_continues_with_the_reason(self, fake, ari_settings):
        settings = dataclasses.replace(ari_settings, max_calls=1)
        async with Adapter(settings) as adapter:
            first = fake.call_in()
            await wait_until(lambda: bridged(fake), what="first call bridged")
            second = fake.call_in()
            await wait_until(lambda: fake.continued, what="second continued")
            assert fake.continued == [(second, {})]
            assert fake.channels[second].variables[REFUSED_VARIABLE].startswith("max calls")
            assert fake.channels[second].state == "Ring"  # never answered
            fake.caller_hangup(second)
            fake.caller_hangup(first)
            await settle_empty(fake, adapter)

    async def test_agent_refused_continues_the_channel(self, fake, ari_settings):
        async with Adapter(ari_settings, agents(refuse=True)) as adapter:
            caller = fake.call_in()
            await wait_until(lambda: fake.continued, what="continued")
            assert "AgentRefused" in fake.channels[caller].variables[REFUSED_VARIABLE]
            fake.caller_hangup(caller)
            await settle_empty(fake, adapter)

    async def test_slin16_is_refused_at_start(self, ari_settings):
        settings = dataclasses.replace(ari_settings, ari_format="slin16")
        with pytest.raises(ConfigError, match="slin16"):
            await serve_ari(MediaCore(settings), settings)


class TestReconnect:
    async def test_websocket_drop_mid_call_the_call_goes_on(self, fake, ari_settings):
        async with Adapter(ari_settings) as adapter:
            caller = fake.call_in(source=tone(TONE_HZ))
            await wait_until(lambda: len(fake.heard(caller)) > 5, what="media flowing")
            await fake.drop_websockets()
            before = len(fake.heard(caller))
            await wait_until(lambda: "sip-to-ai" in fake.sockets, what="reconnected")
            await wait_until(lambda: len(fake.heard(caller)) > before + 10, what="media still flowing")
            assert adapter.core.calls
            fake.caller_hangup(caller)  # its events reach the new websocket
            await settle_empty(fake, adapter)

    async def test_caller_gone_while_disconnected_is_cleaned_up(self, fake, ari_settings):
        async with Adapter(ari_settings) as adapter:
            caller = fake.call_in()
            await wait_until(lambda: bridged(fake), what="bridged")
            await fake.drop_websockets()
            fake.caller_hangup(caller)  # its StasisEnd is lost
            await wait_until(lambda: "sip-to-ai" in fake.sockets, what="reconnected")
            await settle_empty(fake, adapter)

    async def test_asterisk_restart_mid_call_then_next_call_served(self, fake, ari_settings):
        async with Adapter(ari_settings) as adapter:
            fake.call_in(source=tone(TONE_HZ))
            await wait_until(lambda: bridged(fake), what="bridged")
            await fake.restart()
            await wait_until(lambda: "sip-to-ai" in fake.sockets, what="reconnected")
            await wait_until(lambda: not adapter.core.calls, what="lost call ended")
            caller = fake.call_in(source=tone(TONE_HZ))
            await wait_until(lambda: len(fake.heard(caller)) > 5, what="next call echoes")
            fake.caller_hangup(caller)
            await settle_empty(fake, adapter)


class TestSetupRaces:
    async def test_media_stasisstart_lost_the_call_still_bridges(self, fake, ari_settings, monkeypatch):
        emit = fake._emit

        def lose_media_stasis_start(app, kind, **fields):  # as if the websocket dropped at that moment
            if kind == "StasisStart" and fields["channel"]["name"].startswith("UnicastRTP/"):
                return
            emit(app, kind, **fields)

        monkeypatch.setattr(fake, "_emit", lose_media_stasis_start)
        async with Adapter(ari_settings) as adapter:
            caller = fake.call_in(source=tone(TONE_HZ))
            await wait_until(lambda: len(fake.heard(caller)) > 5, what="echo flowing")
            fake.caller_hangup(caller)
            await settle_empty(fake, adapter)

    async def test_caller_hangs_up_during_setup(self, fake, ari_settings, monkeypatch):
        external_media = fake._external_media

        async def hang_up_first(op, path, q):
            reply = await external_media(op, path, q)
            fake.caller_hangup(next(c.id for c in fake.channels.values() if c.name.startswith("PJSIP/")))
            return reply

        monkeypatch.setitem(fake.handlers, "externalMedia", hang_up_first)
        async with Adapter(ari_settings) as adapter:
            fake.call_in()
            await settle_empty(fake, adapter)

    async def test_caller_entering_while_disconnected_is_served_after_reconnect(self, fake, ari_settings):
        async with Adapter(ari_settings) as adapter:
            await fake.drop_websockets()
            caller = fake.call_in(args=("late",), source=tone(TONE_HZ))  # its StasisStart is lost
            await wait_until(lambda: "sip-to-ai" in fake.sockets, what="reconnected")
            await wait_until(lambda: len(fake.heard(caller)) > 5, what="echo flowing")
            assert adapter.core.calls[caller].info.metadata["args"] == "late"
            fake.caller_hangup(caller)
            await settle_empty(fake, adapter)

    async def test_setup_failure_sends_the_caller_back_to_the_dialplan(self, fake, ari_settings, monkeypatch):
        def broken(op, path, q):
            raise AriReply(500, "Internal Server Error")

        monkeypatch.setitem(fake.handlers, "create", broken)  # POST /bridges fails
        async with Adapter(ari_settings) as adapter:
            caller = fake.call_in()
            await wait_until(lambda: fake.continued, what="continued")
            assert "setup failed" in fake.channels[caller].variables[REFUSED_VARIABLE]
            fake.caller_hangup(caller)
            await settle_empty(fake, adapter)

    async def test_refused_transfer_hangs_the_caller_up(self, fake, ari_settings):
        settings = dataclasses.replace(ari_settings, ari_transfer_mode="redirect")
        factory = agents([TransferRequest("IAX2/elsewhere")])  # another technology: 422
        async with Adapter(settings, factory) as adapter:
            caller = fake.call_in()
            await settle_empty(fake, adapter)
        assert ("POST", f"/channels/{caller}/redirect", 422) in [(m, p, st) for m, p, st, _ in fake.rejected]
        assert ("DELETE", f"/channels/{caller}") in [(m, p) for m, p, _ in fake.requests]


def test_slin16_is_a_configuration_error():
    from bridge import config

    with pytest.raises(ConfigError, match="ARI_FORMAT=slin16"):
        config.load(environ={"ARI_URL": "http://127.0.0.1:8088", "ARI_FORMAT": "slin16"}, dotenv=None)


async def test_callers_waiting_in_stasis_are_served_by_a_restarted_adapter(fake, ari_settings):
    """A process that died left a caller in Stasis (its StasisStart went to nobody): the next one serves it."""
    async with Adapter(ari_settings):
        await fake.drop_websockets()
        caller = fake.call_in(args=("orphan",), source=tone(TONE_HZ))
    assert caller in fake.channels  # still waiting in Stasis
    async with Adapter(ari_settings) as adapter:
        await wait_until(lambda: len(fake.heard(caller)) > 5, what="echo flowing")
        assert adapter.core.calls[caller].info.metadata["args"] == "orphan"
        fake.caller_hangup(caller)
        await settle_empty(fake, adapter)


async def test_externalmedia_rtp_stopping_hangs_the_caller_up(fake, ari_settings):
    """RTP_TIMEOUT_SEC on the ARI ingress: the ExternalMedia RTP stops (Asterisk still up): DELETE the caller."""
    async with Adapter(dataclasses.replace(ari_settings, rtp_timeout_sec=1.0)) as adapter:
        caller = fake.call_in(source=tone(TONE_HZ))
        await wait_until(lambda: len(fake.heard(caller)) >= 75, what="1.5 s of echoed frames")
        assert len(adapter.core.calls) == 1  # RTP flowing: no timeout
        fake.media_channel().rtp.close()
        await wait_until(lambda: ("DELETE", f"/channels/{caller}") in [(m, p) for m, p, _ in fake.requests],
                         what="the caller hung up by the adapter")
        await settle_empty(fake, adapter)
