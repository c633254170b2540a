"""DeepgramAgent against the fake Deepgram Voice Agent: configure, greeting, audio, barge-in, tools, faults."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from bridge.config import AgentPrompt
from bridge.media import Codec
from bridge.vendors.base import (
    AgentAudio,
    AgentClosed,
    AgentContext,
    AgentInterrupted,
    AgentTurnEnd,
    HangupRequest,
    Transcript,
)
from bridge.vendors.deepgram import DeepgramAgent, settings_message
from tests.fakes.deepgram_agent import GREETING_BYTE, FakeDeepgram, check_settings
from tests.fakes.ws_vendor import random_json, wait_for
from tests.vendors import harness
from tests.vendors.harness import BridgeMemory, Collector, agent_context, closed_leaving_nothing

PROMPT = AgentPrompt(instructions="You are a test agent.", greeting="Hello, how can I help?")


def make_ctx(fake: FakeDeepgram, codec: Codec = Codec.PCMU, prompt: AgentPrompt = PROMPT, **overrides) -> AgentContext:
    values = dict(ai_vendor="deepgram", deepgram_api_key=fake.api_key, deepgram_ws_endpoint=fake.url,
                  prompt=prompt, reconnect_delay_sec=0.05, ai_connection_timeout_sec=3.0)
    return agent_context("call-dg-1", codec, "test.deepgram", **(values | overrides))


@pytest.fixture
async def fake():
    async with FakeDeepgram() as server:
        yield server


@pytest.fixture
async def session(fake):
    async with harness.session(DeepgramAgent(make_ctx(fake)), fake) as running:
        yield running


class TestConnect:
    async def test_settings_carry_codec_prompt_tools_and_greeting(self, fake, session):
        conn = await fake.connection()
        s = conn.settings
        assert s["audio"]["input"] == {"encoding": "mulaw", "sample_rate": 8000}
        assert s["audio"]["output"] == {"encoding": "mulaw", "sample_rate": 8000, "container": "none"}
        assert s["agent"]["think"]["prompt"] == "You are a test agent."
        assert s["agent"]["greeting"] == "Hello, how can I help?"
        names = {f["name"]: f for f in s["agent"]["think"]["functions"]}
        assert names["end_call"]["defer_until_eot"] is True and "transfer_call" in names
        assert conn.request.headers["Authorization"] == f"Token {fake.api_key}"

    async def test_alaw_call_gets_alaw_both_ways(self, fake):
        agent = DeepgramAgent(make_ctx(fake, Codec.PCMA))
        await agent.connect()
        try:
            s = (await fake.connection()).settings
            assert s["audio"]["input"]["encoding"] == s["audio"]["output"]["encoding"] == "alaw"
            assert agent.input_format == agent.output_format and agent.input_format.encoding == "pcma"
        finally:
            await agent.aclose()

    async def test_greeting_is_heard_first(self, fake, session):
        _, events = session
        await events.wait(AgentTurnEnd)
        assert events.audio() == bytes([GREETING_BYTE]) * fake.greeting_bytes
        assert events.of(Transcript)[0] == Transcript("agent", "Hello, how can I help?")
        assert isinstance(events.events[-1], AgentTurnEnd)

    @pytest.mark.parametrize(("model", "provider"), [("gpt-4o-mini", "open_ai"), ("claude-3-5-haiku-latest",
                                                     "anthropic"), ("gemini-2.0-flash", "google")])
    def test_think_provider_follows_the_llm_model(self, fake, model, provider):
        message = settings_message(make_ctx(fake, deepgram_llm_model=model), greeting=False)
        assert message["agent"]["think"]["provider"] == {"type": provider, "model": model}
        assert check_settings(json.loads(json.dumps(message))) == []

    @pytest.mark.parametrize("codec", [Codec.PCMU, Codec.PCMA])
    def test_settings_pass_the_sdk_model_and_the_fake_rules(self, fake, codec):
        message = settings_message(make_ctx(fake, codec), greeting=True)
        assert check_settings(json.loads(json.dumps(message))) == []

    def test_sdk_models_accept_our_settings_with_no_undeclared_keys(self, fake):
        dg = pytest.importorskip("deepgram.agent.v1.types")
        from typing import get_args

        from tests.fakes.ws_vendor import unknown_keys

        for message in (settings_message(make_ctx(fake), greeting=True),
                        settings_message(make_ctx(fake), False, [("user", "hi"), ("assistant", "hello")])):
            parsed = dg.AgentV1Settings.model_validate_json(json.dumps(message))
            assert list(unknown_keys(parsed)) == []
            assert parsed.audio.input.encoding in get_args(get_args(dg.AgentV1SettingsAudioInputEncoding)[0])
            assert parsed.audio.output.encoding in get_args(get_args(dg.AgentV1SettingsAudioOutputEncoding)[0])


class TestAudio:
    async def test_caller_audio_arrives_in_order_and_complete(self, fake, session):
        agent, _ = session
        conn = await fake.connection()
        frames = [bytes([i % 256]) * 160 for i in range(200)]
        for frame in frames:  # RTP brings a frame every 20 ms; 2 ms here, still 10x real time
            agent.send_audio(frame)
            await asyncio.sleep(0.002)
        await conn.wait_audio(len(frames) * 160)
        assert bytes(conn.audio) == b"".join(frames)
        assert conn.audio_frames == 200  # one binary frame per 20 ms frame, no batching

    async def test_agent_audio_in_uneven_chunks_comes_out_whole_and_in_order(self, fake, session):
        _, events = session
        conn = await fake.connection()
        await events.wait(AgentTurnEnd)  # the greeting
        reply = bytes(range(256)) * 100
        await conn.speak(reply, "Here is a long answer.")
        await events.wait(AgentTurnEnd, 2)
        assert events.audio()[fake.greeting_bytes:] == reply
        assert Transcript("agent", "Here is a long answer.") in events.events

    async def test_caller_transcript(self, fake, session):
        _, events = session
        await (await fake.connection()).user_said("I need help with my bill")
        await events.wait(Transcript, 2)
        assert Transcript("caller", "I need help with my bill") in events.events


class TestBargeIn:
    async def test_user_started_speaking_interrupts(self, fake, session):
        _, events = session
        conn = await fake.connection()
        await conn.speak(b"\x22" * 8000, done=False)
        await conn.barge_in()
        await events.wait(AgentInterrupted)
        kinds = [type(e) for e in events.events]
        assert kinds.index(AgentInterrupted) > max(i for i, k in enumerate(kinds) if k is AgentAudio)


class TestTools(harness.ToolTests):
    tool_call = "function_call"

    async def test_server_side_function_is_left_to_deepgram(self, fake, session):
        _, events = session
        conn = await fake.connection()
        await conn.function_call("end_call", {}, client_side=False)
        await conn.user_said("marker")
        await wait_for(lambda: Transcript("caller", "marker") in events.events, what="marker")
        assert events.of(HangupRequest) == [] and conn.responses == {}


class TestDtmfAndKeepAlive:
    async def test_dtmf_is_injected_as_a_user_message(self, fake, session):
        agent, _ = session
        conn = await fake.connection()
        agent.send_dtmf("5")
        await wait_for(lambda: any(m["type"] == "InjectUserMessage" for m in conn.messages), what="inject")
        assert {"type": "InjectUserMessage", "content": "caller pressed 5"} in conn.messages

    async def test_keepalive_when_no_audio_flows(self, fake, monkeypatch):
        monkeypatch.setattr(DeepgramAgent, "keepalive", dataclasses.replace(DeepgramAgent.keepalive, idle=0.05))
        fake.idle_timeout = 0.5
        agent = DeepgramAgent(make_ctx(fake))
        await agent.connect()
        try:
            conn = await fake.connection()
            await wait_for(lambda: conn.keepalives >= 3, 3.0, "three KeepAlives")
            assert not conn.closed.is_set() and fake.violations == []
        finally:
            await agent.aclose()


class TestFaults:
    async def test_bad_key_is_refused_naming_the_error_without_the_key(self, fake):
        agent = DeepgramAgent(make_ctx(fake, deepgram_api_key="wrong-key-456"))
        message = await harness.refusal(agent, secret="wrong-key-456")
        assert "401" in message and "deepgram" in message

    async def test_invalid_settings_refused_with_the_vendor_code(self, fake):
        await harness.refusal(DeepgramAgent(make_ctx(fake, deepgram_listen_model="")), match="INVALID_SETTINGS")
        fake.violations.clear()

    async def test_drop_mid_call_reconnects_without_second_greeting(self, fake, session):
        agent, events = session
        conn = await fake.connection()
        await events.wait(AgentTurnEnd)
        await conn.user_said("my order is 42")
        await wait_for(lambda: Transcript("caller", "my order is 42") in events.events, what="transcript")
        await conn.drop()
        second = await fake.connection(1)
        assert "greeting" not in second.settings["agent"]
        assert second.settings["agent"]["context"]["messages"] == [  # the model keeps the conversation
            {"type": "History", "role": "assistant", "content": "Hello, how can I help?"},
            {"type": "History", "role": "user", "content": "my order is 42"},
        ]
        agent.send_audio(b"\x7f" * 160)
        await second.wait_audio(160)
        await second.speak(b"\x33" * 480, "still here")
        await events.wait(AgentTurnEnd, 2)
        assert not events.of(AgentClosed)

    async def test_error_event_mid_call_is_logged_not_fatal(self, fake, session, caplog):
        _, events = session
        conn = await fake.connection()
        await conn.error("INTERNAL_SERVER_ERROR", "something broke")
        await conn.warning("SLOW_THINK_REQUEST", "the LLM is slow")
        await conn.user_said("after the error")
        await wait_for(lambda: Transcript("caller", "after the error") in events.events, what="transcript")
        assert not events.of(AgentClosed)
        assert "INTERNAL_SERVER_ERROR" in caplog.text

    async def test_reconnects_exhausted_end_the_session(self, fake):
        agent = DeepgramAgent(make_ctx(fake, max_reconnect_attempts=2))
        await agent.connect()
        events = Collector(agent)
        try:
            conn = await fake.connection()
            fake.refuse_http = (503, '{"err_msg":"overloaded"}')
            await conn.drop()
            await events.wait(AgentClosed)
            closed = events.of(AgentClosed)[0]
            assert closed.error and "503" in closed.reason
        finally:
            await agent.aclose()
            await events.stop()


class TestLongConversation:
    async def test_hundreds_of_turns_never_stall_flat_memory_no_task_left(self, fake):
        before = len(asyncio.all_tasks())
        agent = DeepgramAgent(make_ctx(fake, prompt=AgentPrompt(instructions="x")))
        await agent.connect()
        events = Collector(agent)
        conn = await fake.connection()
        with BridgeMemory() as memory:
            for turn in range(300):
                agent.send_audio(bytes([turn % 256]) * 160)
                await conn.user_said(f"turn {turn}")
                if turn % 10 == 0:
                    await conn.barge_in()
                await conn.speak(bytes([turn % 200]) * 320, f"reply {turn}")
                await events.wait(AgentTurnEnd)
                assert events.audio() == bytes([turn % 200]) * 320
                assert Transcript("caller", f"turn {turn}") in events.events
                events.events.clear()  # the call consumes events as they come
                memory.snapshot_at(turn, 50, 299)
        memory.assert_flat(64 * 1024, "250 turns")
        await conn.wait_audio(300 * 160)
        assert bytes(conn.audio) == b"".join(bytes([t % 256]) * 160 for t in range(300))
        await closed_leaving_nothing(agent, events, fake, before)


class TestFakeIsHonest:
    """The fake refuses what Deepgram documents as refused, whatever our client does."""

    async def raw(self, fake: FakeDeepgram):  # type: ignore[no-untyped-def]
        from websockets.asyncio.client import connect

        ws = await connect(fake.url, additional_headers={"Authorization": f"Token {fake.api_key}"})
        assert json.loads(await ws.recv())["type"] == "Welcome"
        return ws

    async def next_error(self, ws) -> str:  # type: ignore[no-untyped-def]
        while True:
            message = await ws.recv()
            if isinstance(message, str) and json.loads(message)["type"] == "Error":
                return json.loads(message)["code"]

    async def test_audio_before_settings(self, fake):
        ws = await self.raw(fake)
        await ws.send(b"\xff" * 160)
        assert await self.next_error(ws) == "NON_SETTINGS_MESSAGE_BEFORE_SETTINGS"
        await ws.close()

    async def test_second_settings_and_pre_v1_name(self, fake):
        good = settings_message(make_ctx(fake), greeting=False)
        ws = await self.raw(fake)
        await ws.send(json.dumps(good))
        await ws.send(json.dumps(good))
        assert await self.next_error(ws) == "SETTINGS_ALREADY_APPLIED"
        await ws.close()
        ws = await self.raw(fake)
        await ws.send(json.dumps(good | {"type": "SettingsConfiguration"}))
        assert await self.next_error(ws) == "UNPARSABLE_CLIENT_MESSAGE"
        await ws.close()

    @pytest.mark.parametrize("breakage", [
        lambda s: s["audio"]["input"].update(encoding="ulaw"),
        lambda s: s["audio"]["input"].update(sample_rate="8000"),
        lambda s: s["agent"].update(greting="typo"),
        lambda s: s["agent"]["speak"]["provider"].pop("model"),
        lambda s: s.pop("audio"),
    ])
    async def test_invalid_settings(self, fake, breakage):
        bad = settings_message(make_ctx(fake), greeting=False)
        breakage(bad)
        ws = await self.raw(fake)
        await ws.send(json.dumps(bad))
        assert await self.next_error(ws) == "INVALID_SETTINGS"
        await ws.close()

    async def test_response_to_no_pending_call(self, fake):
        ws = await self.raw(fake)
        await ws.send(json.dumps(settings_message(make_ctx(fake), greeting=False)))
        await ws.send(json.dumps({"type": "FunctionCallResponse", "id": "fc_x", "name": "end_call", "content": ""}))
        assert await self.next_error(ws) == "UNPARSABLE_CLIENT_MESSAGE"
        await ws.close()

    async def test_idle_without_keepalive(self, fake):
        fake.idle_timeout = 0.1
        ws = await self.raw(fake)
        await ws.send(json.dumps(settings_message(make_ctx(fake), greeting=False)))
        assert await self.next_error(ws) == "CLIENT_MESSAGE_TIMEOUT"
        await ws.close()


def test_garbage_from_the_server_raises_only_what_the_runner_skips():
    import random

    rng = random.Random(2027)
    types = ["Welcome", "SettingsApplied", "ConversationText", "FunctionCallRequest", "FunctionCallCancelled",
             "Error", "Warning", "UserStartedSpeaking", "AgentAudioDone"]
    fields = ["role", "content", "functions", "id", "name", "arguments", "client_side", "code", "description"]

    def garbage():
        for _ in range(5000):
            message = {"type": rng.choice(types)} | {rng.choice(fields): random_json(rng, fields)
                                                     for _ in range(rng.randrange(4))}
            if rng.random() < 0.1:
                message = random_json(rng, fields)
            yield json.dumps(message)

    harness.translated_or_skipped(DeepgramAgent(make_ctx(FakeDeepgram())), garbage())
