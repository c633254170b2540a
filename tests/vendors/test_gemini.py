"""GeminiAgent against the fake Gemini Live: setup, greeting, PCM audio, barge-in, tools, resumption, goAway."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest

from bridge.codec import convert, g711
from bridge.config import AgentPrompt
from bridge.media import Codec
from bridge.vendors.base import (
    AgentAudio,
    AgentClosed,
    AgentContext,
    AgentInterrupted,
    AgentTurnEnd,
    Transcript,
)
from bridge.vendors.gemini import GeminiAgent, gemini_schema, greeting_message, setup_message
from tests.fakes.gemini_live import FakeGeminiLive, sdk_check, tone
from tests.fakes.ws_vendor import random_json, wait_for
from tests.vendors import harness
from tests.vendors.harness import BridgeMemory, Collector, agent_context, closed_leaving_nothing

PROMPT = AgentPrompt(instructions="You are a test agent.", greeting="Hello, how can I help?", voice="Kore")


def make_ctx(fake: FakeGeminiLive, prompt: AgentPrompt = PROMPT, **overrides) -> AgentContext:
    values = dict(ai_vendor="gemini", gemini_api_key=fake.api_key, gemini_ws_endpoint=fake.url,
                  gemini_model="gemini-test-live", prompt=prompt, reconnect_delay_sec=0.05,
                  ai_connection_timeout_sec=3.0)
    return agent_context("call-gm-1", Codec.PCMU, "test.gemini", **(values | overrides))


@pytest.fixture
async def fake():
    async with FakeGeminiLive() as server:
        yield server


def open_session(fake: FakeGeminiLive, prompt: AgentPrompt = PROMPT, **overrides):
    """GeminiAgent connected and collected; closed on leaving, and the fake saw no breach."""
    return harness.session(GeminiAgent(make_ctx(fake, prompt, **overrides)), fake)


@pytest.fixture
async def session(fake):
    async with open_session(fake) as running:
        yield running


@pytest.fixture
async def quiet(fake):
    """A session without a greeting, so tests start from silence."""
    async with open_session(fake, AgentPrompt(instructions="x")) as running:
        yield running


class TestSetup:
    async def test_setup_carries_model_voice_prompt_tools_resumption_and_transcription(self, fake, session):
        agent, _ = session
        conn = await fake.connection()
        setup = conn.setup
        assert setup["model"] == "models/gemini-test-live"
        assert setup["generationConfig"]["responseModalities"] == ["AUDIO"]
        assert setup["generationConfig"]["speechConfig"]["voiceConfig"]["prebuiltVoiceConfig"]["voiceName"] == "Kore"
        assert setup["systemInstruction"] == {"parts": [{"text": "You are a test agent."}]}
        names = [f["name"] for f in setup["tools"][0]["functionDeclarations"]]
        assert names == ["end_call", "transfer_call"]
        assert setup["sessionResumption"] == {} and "inputAudioTranscription" in setup
        assert conn.request.headers["x-goog-api-key"] == fake.api_key and "key" not in conn.request.query
        assert (agent.input_format.encoding, agent.input_format.rate) == ("pcm16", 16000)
        assert (agent.output_format.encoding, agent.output_format.rate) == ("pcm16", 24000)

    def test_client_messages_pass_google_genai_models(self, fake):
        pytest.importorskip("google.genai")
        ctx = make_ctx(fake)
        agent = GeminiAgent(ctx)
        messages = [
            setup_message(ctx, None), setup_message(ctx, "session-handle-9"), greeting_message("Hi"),
            greeting_message("Hi", "realtime_text"),
            json.loads(agent.audio_message(b"\x01\x00" * 320)),
            {"toolResponse": {"functionResponses": [{"id": "f1", "name": "end_call", "response": {"ok": True}}]}},
            {"realtimeInput": {"text": "caller pressed 5"}},
        ]
        for message in messages:
            assert sdk_check(message) is None, message

    def test_json_schema_becomes_gemini_schema(self):
        schema = {"type": "object", "properties": {"n": {"type": "integer", "description": "d", "title": "N"},
                                                   "xs": {"type": "array", "items": {"type": "string"}}},
                  "required": [], "additionalProperties": False}
        assert gemini_schema(schema) == {"type": "OBJECT", "properties": {
            "n": {"type": "INTEGER", "description": "d"}, "xs": {"type": "ARRAY", "items": {"type": "STRING"}}}}

    async def test_json_in_text_frames_works_too(self):
        async with FakeGeminiLive(binary_frames=False) as fake, open_session(fake) as (_, events):
            await events.wait(AgentTurnEnd)


class TestGreeting:
    async def test_greeting_turn_then_its_audio_first(self, fake, session):
        _, events = session
        conn = await fake.connection()
        await events.wait(AgentTurnEnd)
        assert len(conn.turns) == 1 and conn.turns[0]["turnComplete"] is True
        assert "Hello, how can I help?" in conn.turns[0]["turns"][0]["parts"][0]["text"]
        assert events.audio() == tone(440, fake.greeting_seconds)
        assert events.of(Transcript) == [Transcript("agent", "Hello there caller")]

    async def test_greeting_as_realtime_text_when_configured(self):
        async with (FakeGeminiLive(answer_text=True) as fake,
                    open_session(fake, gemini_greeting="realtime_text") as (_, events)):
            await events.wait(AgentTurnEnd)
            conn = await fake.connection()
            assert conn.turns == [] and "Hello, how can I help?" in conn.texts[0]
            assert events.audio() == tone(440, fake.greeting_seconds)

    async def test_no_greeting_configured_no_turn(self, fake, quiet):
        conn = await fake.connection()
        await asyncio.sleep(0.05)
        assert conn.turns == []


class TestAudio:
    async def test_caller_pcm16_arrives_in_order_at_16k(self, fake, quiet):
        agent, _ = quiet
        conn = await fake.connection()
        frames = [np.full(320, i, dtype="<i2").tobytes() for i in range(150)]  # 20 ms at 16 kHz each
        for frame in frames:  # RTP brings a frame every 20 ms; 2 ms here
            agent.send_audio(frame)
            await asyncio.sleep(0.002)
        await conn.wait_audio(150 * 640)
        assert bytes(conn.audio) == b"".join(frames)
        assert conn.audio_rates == {16000}

    async def test_reply_in_uneven_chunks_comes_out_whole(self, fake, quiet):
        _, events = quiet
        conn = await fake.connection()
        pcm = await conn.speak(1.3, 440, "a longer answer for you")
        await events.wait(AgentTurnEnd)
        assert events.audio() == pcm
        assert events.of(Transcript) == [Transcript("agent", "a longer answer for you")]

    async def test_tone_reaches_g711_8k_as_440_hz_through_the_core_converter(self, fake, quiet):
        agent, events = quiet
        conn = await fake.connection()
        await conn.speak(1.0, 440)
        await events.wait(AgentTurnEnd)
        downlink = convert.downlink(agent.output_format, Codec.PCMU)
        ulaw = b"".join(downlink(e.data) for e in events.of(AgentAudio))
        pcm = g711.decode(Codec.PCMU, ulaw).astype(float)
        spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
        peak = np.argmax(spectrum) * 8000 / len(pcm)
        assert abs(peak - 440) < 5
        assert abs(len(ulaw) - 8000) < 200  # one second at 8 kHz, give or take the resampler's delay

    async def test_caller_transcription_pieces_become_one_line(self, fake, quiet):
        _, events = quiet
        conn = await fake.connection()
        await conn.transcribe_input("I would like to pay my bill")
        await conn.speak(0.1, 440, "Sure")
        await events.wait(AgentTurnEnd)
        assert events.of(Transcript) == [Transcript("caller", "I would like to pay my bill"),
                                         Transcript("agent", "Sure")]


class TestBargeIn:
    async def test_interrupted_flushes_then_turn_ends(self, fake, quiet):
        _, events = quiet
        conn = await fake.connection()
        await conn.speak(0.5, 440, "this will be cut", done=False)
        await conn.interrupt()
        await events.wait(AgentTurnEnd)
        kinds = [type(e) for e in events.events]
        last_audio = max(i for i, k in enumerate(kinds) if k is AgentAudio)
        assert last_audio < kinds.index(AgentInterrupted) < kinds.index(AgentTurnEnd)


class TestTools(harness.ToolTests):
    tool_call = "tool_call"

    @pytest.fixture
    def tools(self, quiet):  # no greeting turn before the tool calls
        return quiet


class TestDtmf:
    async def test_dtmf_is_realtime_text(self, fake, quiet):
        agent, _ = quiet
        conn = await fake.connection()
        agent.send_dtmf("5")
        await wait_for(lambda: conn.texts == ["caller pressed 5"], what="dtmf text")


class TestResumption:
    async def test_drop_reconnects_with_the_latest_handle_and_no_second_greeting(self, fake, session):
        agent, events = session
        conn = await fake.connection()
        await events.wait(AgentTurnEnd)
        await wait_for(lambda: agent.handle is not None, what="a handle")
        handle = agent.handle
        await conn.drop()
        second = await fake.connection(1)
        assert second.resumed_from == handle and second.turns == []
        agent.send_audio(b"\x00\x01" * 320)
        await second.wait_audio(640)
        assert not events.of(AgentClosed)

    async def test_refused_handle_starts_a_fresh_session_with_the_conversation_so_far(self, fake, session):
        agent, events = session
        conn = await fake.connection()
        await events.wait(AgentTurnEnd)  # the greeting
        await conn.transcribe_input("I need a plumber")
        await conn.speak(0.1, text="Sure, where are you?")
        await events.wait(AgentTurnEnd, 2)
        await wait_for(lambda: agent.handle is not None, what="a handle")
        fake.handles.clear()  # every handle expired (the ~58 minute reports)
        await conn.drop()
        fresh = await fake.connection(2)  # the second connection asked to resume and was closed with 1007
        assert len(fake.connections) == 3 and fake.connections[1].ready.is_set() is False
        assert fresh.resumed_from is None and "handle" not in fresh.setup["sessionResumption"]
        await wait_for(lambda: fresh.turns, what="the conversation so far")
        said = [(t["role"], t["parts"][0]["text"]) for t in fresh.turns[0]["turns"]]
        assert ("user", "I need a plumber") in said and ("model", "Sure, where are you?") in said
        assert fresh.turns[0]["turnComplete"] is False  # context only: no reply, no second greeting
        agent.send_audio(b"\x00\x01" * 320)
        await fresh.wait_audio(640)
        assert not events.of(AgentClosed)
        assert len(fake.violations) == 1 and "unknown session resumption handle" in fake.violations[0]
        fake.violations.clear()  # the one refusal this test provoked

    @staticmethod
    async def carried_on(fake: FakeGeminiLive, events: Collector):  # type: ignore[no-untyped-def]
        """The agent is on a second connection, plays what it says, and the session never closed."""
        second = await fake.connection(1)
        await second.speak(0.1)
        await events.wait(AgentTurnEnd)
        assert not events.of(AgentClosed)
        return second

    async def test_server_error_1011_mid_call_is_survived(self, fake, quiet):
        _, events = quiet
        conn = await fake.connection()
        await conn.close(1011, "Internal error occurred.")
        await self.carried_on(fake, events)

    async def test_go_away_moves_to_a_resumed_connection_before_the_deadline(self, fake, quiet):
        agent, events = quiet
        conn = await fake.connection()
        await wait_for(lambda: agent.handle is not None, what="a handle")
        handle = agent.handle
        await conn.go_away(time_left=2.0)
        second = await self.carried_on(fake, events)
        assert second.resumed_from == handle and fake.cut_by_goaway == 0

    async def test_go_away_mid_tool_call_waits_for_a_resumable_point(self, fake, quiet):
        agent, events = quiet
        conn = await fake.connection()
        await conn.tool_call("check_weather", {})  # the server marks the session not resumable
        await wait_for(lambda: agent._resumable is False, what="not resumable")
        go_away = asyncio.create_task(conn.go_away(time_left=3.0))
        await asyncio.sleep(0.1)
        assert len(fake.connections) == 1  # still here: a resume now would lose the tool call
        await conn.turn_complete()  # a resumable handle again
        await go_away
        second = await fake.connection(1)
        assert second.resumed_from is not None and fake.cut_by_goaway == 0


class TestRefusal:
    async def test_bad_key_refused_naming_the_error_without_the_key(self, fake):
        message = await harness.refusal(GeminiAgent(make_ctx(fake, gemini_api_key="bad-key-000")), secret="bad-key-000")
        assert "1007" in message and "API key not valid" in message
        fake.violations.clear()

    async def test_unknown_model_refused(self, fake):
        await harness.refusal(GeminiAgent(make_ctx(fake, gemini_model="gemini-nope")), match="1008.*gemini-nope")
        fake.violations.clear()


class TestLongConversation:
    async def test_hundreds_of_turns_never_stall_flat_memory_no_task_left(self, fake):
        before = len(asyncio.all_tasks())
        agent = GeminiAgent(make_ctx(fake, AgentPrompt(instructions="x")))
        await agent.connect()
        events = Collector(agent)
        conn = await fake.connection()
        with BridgeMemory() as memory:
            for turn in range(200):
                agent.send_audio(np.full(320, turn, dtype="<i2").tobytes())
                await conn.transcribe_input(f"question {turn}")
                pcm = await conn.speak(0.06, 440, f"answer {turn}", done=turn % 7 != 0)
                if turn % 7 == 0:
                    await conn.interrupt()
                await events.wait(AgentTurnEnd)
                assert events.audio() == pcm
                assert events.of(Transcript) == [Transcript("caller", f"question {turn}"),
                                                 Transcript("agent", f"answer {turn}")]
                events.events.clear()  # the call consumes events as they come
                memory.snapshot_at(turn, 40, 199)
        memory.assert_flat(64 * 1024, "160 turns")
        await conn.wait_audio(200 * 640)
        await closed_leaving_nothing(agent, events, fake, before)


def test_audio_message_is_base64_pcm_with_rate():
    ctx = make_ctx(FakeGeminiLive())
    message = json.loads(GeminiAgent(ctx).audio_message(b"\x01\x02" * 4))
    assert message == {"realtimeInput": {"audio": {"data": base64.b64encode(b"\x01\x02" * 4).decode(),
                                                   "mimeType": "audio/pcm;rate=16000"}}}


class TestFakeIsHonest:
    """The fake closes the connection where Gemini Live does, whatever our client does."""

    async def closed_by(self, fake: FakeGeminiLive, *messages: dict, key: str | None = None) -> tuple[int, str]:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed

        async with connect(f"{fake.url}?key={key or fake.api_key}") as ws:
            for message in messages:
                await ws.send(json.dumps(message))
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    await ws.recv()
        return info.value.rcvd.code, info.value.rcvd.reason

    def setup(self, fake: FakeGeminiLive) -> dict:
        return setup_message(make_ctx(fake), None)

    async def test_setup_must_come_first(self, fake):
        assert (await self.closed_by(fake, {"realtimeInput": {"text": "hi"}}))[0] == 1007

    async def test_bad_key_by_query_is_1007(self, fake):
        code, reason = await self.closed_by(fake, self.setup(fake), key="nope")
        assert code == 1007 and "API key not valid" in reason

    async def test_snake_case_setup_is_accepted(self, fake):
        from websockets.asyncio.client import connect

        async with connect(fake.url, additional_headers={"x-goog-api-key": fake.api_key}) as ws:
            await ws.send(json.dumps({"setup": {"model": "models/gemini-test-live",
                                                "generation_config": {"response_modalities": ["AUDIO"]}}}))
            assert json.loads(await ws.recv()) == {"setupComplete": {}}
        assert fake.violations == []

    async def test_audio_without_rate_two_fields_and_legacy_chunks_are_rejected(self, fake):
        pcm = base64.b64encode(b"\x00\x00" * 160).decode()
        for bad in ({"realtimeInput": {"audio": {"data": pcm, "mimeType": "audio/pcm"}}},
                    {"realtimeInput": {"audio": {"data": pcm, "mimeType": "audio/pcm;rate=16000"}, "text": "x"}},
                    {"realtimeInput": {"mediaChunks": [{"data": pcm, "mimeType": "audio/pcm;rate=16000"}]}},
                    {"realtimeInput": {"audio": {"data": "not base64!", "mimeType": "audio/pcm;rate=16000"}}}):
            assert (await self.closed_by(fake, self.setup(fake), bad))[0] == 1007, bad

    async def test_second_setup_unknown_key_and_bad_enum_are_rejected(self, fake):
        setup = self.setup(fake)
        assert (await self.closed_by(fake, setup, setup))[0] == 1007
        typo = json.loads(json.dumps(setup))
        typo["setup"]["systemInstructions"] = typo["setup"].pop("systemInstruction")
        assert (await self.closed_by(fake, typo))[0] == 1007
        bad_enum = json.loads(json.dumps(setup))
        bad_enum["setup"]["generationConfig"]["responseModalities"] = ["AUDIOX"]
        assert (await self.closed_by(fake, bad_enum))[0] == 1007

    async def test_unknown_resumption_handle_and_tool_response_for_nothing(self, fake):
        resume = setup_message(make_ctx(fake), "forged-handle")
        assert (await self.closed_by(fake, resume))[0] == 1007
        stray = {"toolResponse": {"functionResponses": [{"id": "x", "name": "end_call", "response": {}}]}}
        assert (await self.closed_by(fake, self.setup(fake), stray))[0] == 1007


def test_garbage_from_the_server_raises_only_what_the_runner_skips():
    import random

    rng = random.Random(2026)
    keys = ["setupComplete", "serverContent", "modelTurn", "parts", "inlineData", "data", "interrupted",
            "turnComplete", "toolCall", "functionCalls", "name", "args", "id", "goAway", "timeLeft",
            "sessionResumptionUpdate", "newHandle", "resumable", "inputTranscription", "text"]

    def garbage():
        for _ in range(5000):
            message = json.dumps(random_json(rng, keys))
            yield message if rng.random() < 0.5 else message.encode()

    harness.translated_or_skipped(GeminiAgent(make_ctx(FakeGeminiLive())), garbage())
