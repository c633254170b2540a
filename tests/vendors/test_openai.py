"""OpenAIAgent against the fake Realtime GA server (and Azure's GA path): connect, audio, barge-in, tools, faults."""

from __future__ import annotations

import asyncio

import pytest

from bridge.config import AgentPrompt
from bridge.media import Codec
from bridge.vendors.base import (
    AgentAudio,
    AgentClosed,
    AgentInterrupted,
    AgentTurnEnd,
    HangupRequest,
    Transcript,
    TransferRequest,
)
from bridge.vendors.openai import OpenAIAgent, azure_url, openai_url
from tests.fakes.openai_realtime import CLIENT_EVENTS, FakeRealtime, unknown_keys
from tests.vendors import harness
from tests.vendors.harness import BridgeMemory, agent_context

KEY = "sk-test-0123456789"
GREETING = bytes(range(256)) * 10  # 2560 bytes = 320 ms of G.711, distinct values so order shows


class Played:
    """played_ms as the call's playout reports it; tests set what the caller has heard."""

    def __init__(self) -> None:
        self.ms: dict[str, int] = {}

    def __call__(self, item_id: str) -> int:
        return self.ms.get(item_id, 0)


class Harness:
    """An agent with a task collecting its events."""

    def __init__(self, agent: OpenAIAgent) -> None:
        self.agent = agent
        self.events: list = []
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        async def consume() -> None:
            async for event in self.agent.events():
                self.events.append(event)

        self.task = asyncio.create_task(consume())

    async def wait_for(self, kind: type, count: int = 1, timeout: float = 5.0) -> list:
        async with asyncio.timeout(timeout):
            while len(found := [e for e in self.events if isinstance(e, kind)]) < count:
                await asyncio.sleep(0.005)
        return found

    def audio(self) -> bytes:
        return b"".join(e.data for e in self.events if isinstance(e, AgentAudio))

    async def close(self) -> None:
        await self.agent.aclose()
        if self.task is not None:
            await asyncio.wait_for(self.task, 2)


def make_agent(url: str, played: Played | None = None, codec: Codec = Codec.PCMU, **overrides) -> OpenAIAgent:
    fields = dict(ai_vendor="openai", openai_api_key=KEY, openai_ws_endpoint=url, reconnect_delay_sec=0.02,
                  max_reconnect_attempts=3, ai_connection_timeout_sec=3.0)
    fields.update(overrides)
    return OpenAIAgent(agent_context("call-1", codec, "test.openai", played or Played(), **fields))


@pytest.fixture
async def fake():
    async with FakeRealtime(KEY, reply_audio=GREETING, reply_text="Hello, how can I help?") as server:
        yield server


async def connected(fake: FakeRealtime, played: Played | None = None, **overrides) -> Harness:
    h = Harness(make_agent(fake.url, played, **overrides))
    await h.agent.connect()
    h.start()
    return h


def types_sent(session) -> list[str]:
    return [e["type"] for e in session.received]


class TestConnect:
    async def test_session_update_is_ga_shaped_and_schema_valid(self, fake):
        h = await connected(fake, openai_project="proj_1", openai_organization="org_1")
        sess = await fake.session()
        update = sess.received[0]
        assert update["type"] == "session.update"
        s = update["session"]
        assert s["type"] == "realtime" and s["model"] == "gpt-realtime-2.1"
        assert s["audio"]["input"]["format"] == {"type": "audio/pcmu"}
        assert s["audio"]["output"]["format"] == {"type": "audio/pcmu"}
        assert s["audio"]["output"]["voice"] == "alloy"
        assert {t["name"] for t in s["tools"]} == {"end_call", "transfer_call"}
        for event in sess.received:  # the official openai models, with undeclared keys refused
            assert list(unknown_keys(CLIENT_EVENTS.validate_python(event))) == []
        assert sess.headers["Authorization"] == f"Bearer {KEY}"
        assert sess.headers["OpenAI-Project"] == "proj_1" and sess.headers["OpenAI-Organization"] == "org_1"
        assert "OpenAI-Beta" not in sess.headers and fake.beta_rejections == 0
        assert sess.model == "gpt-realtime-2.1" and fake.violations == []
        await h.close()

    async def test_pcma_call_uses_pcma_both_ways(self, fake):
        h = await connected(fake, codec=Codec.PCMA)
        sess = await fake.session()
        assert sess.config["audio"]["input"]["format"] == {"type": "audio/pcma"}
        assert sess.config["audio"]["output"]["format"] == {"type": "audio/pcma"}
        await h.close()

    async def test_greeting_is_requested_right_after_session_update(self, fake):
        prompt = AgentPrompt(instructions="Be brief.", greeting="Thanks for calling ACME.", voice="marin")
        h = await connected(fake, prompt=prompt)
        sess = await fake.session()
        assert types_sent(sess)[:2] == ["session.update", "response.create"]
        assert "Thanks for calling ACME." in sess.received[1]["response"]["instructions"]
        assert sess.config["instructions"] == "Be brief." and sess.config["audio"]["output"]["voice"] == "marin"
        await h.wait_for(AgentTurnEnd)
        assert h.audio() == GREETING  # complete and in order despite uneven, faster-than-real-time chunks
        audio = [e for e in h.events if isinstance(e, AgentAudio)]
        assert len(audio) > 1 and all(e.item_id == audio[0].item_id is not None for e in audio)
        assert Transcript("agent", "Hello, how can I help?") in h.events
        assert fake.violations == []
        await h.close()

    async def test_no_greeting_no_response_create(self, fake):
        h = await connected(fake)
        sess = await fake.session()
        await asyncio.sleep(0.05)
        assert types_sent(sess) == ["session.update"]
        await h.close()


class TestAudio:
    async def test_caller_audio_reaches_the_vendor_complete_and_in_order(self, fake):
        h = await connected(fake)
        sess = await fake.session()
        frames = [bytes([n % 256]) * 160 for n in range(200)]
        for frame in frames:
            h.agent.send_audio(frame)
            await asyncio.sleep(0.001)  # the call sends a frame per 20 ms; faster here, but not all at once
        async with asyncio.timeout(5):
            while len(sess.audio) < 160 * 200:
                await asyncio.sleep(0.01)
        assert bytes(sess.audio) == b"".join(frames)
        assert all(len(chunk) == 160 for _, chunk in sess.appends)  # one append per frame, no batching
        assert h.agent.session.queue.dropped_audio == 0 and fake.violations == []
        await h.close()

    async def test_caller_transcript_becomes_an_event(self, fake):
        h = await connected(fake)
        sess = await fake.session()
        await sess.turn("I need a plumber", reply=b"\x01" * 800, reply_text="Sure.")
        await h.wait_for(AgentTurnEnd)
        assert Transcript("caller", "I need a plumber") in h.events
        assert Transcript("agent", "Sure.") in h.events
        await h.close()


class TestBargeIn:
    async def test_speech_started_interrupts_and_truncates_to_heard_ms(self, fake):
        played = Played()
        fake.speed = 1.0  # real time, so the reply is still streaming when the caller speaks
        h = await connected(fake, played)
        sess = await fake.session()
        sess.respond(b"\x55" * 8000 * 3)  # 3 s
        first = (await h.wait_for(AgentAudio))[0]
        async with asyncio.timeout(3):
            while len(h.audio()) < 8 * 800:  # the vendor has sent 800 ms so far
                await asyncio.sleep(0.01)
        played.ms[first.item_id] = 730  # what the call's playout says left on the wire
        await sess.speech_started()
        await h.wait_for(AgentInterrupted)
        async with asyncio.timeout(2):
            while not sess.truncates:
                await asyncio.sleep(0.005)
        assert sess.truncates == [{"type": "conversation.item.truncate", "item_id": first.item_id,
                                   "content_index": 0, "audio_end_ms": 730}]
        assert sess.items[first.item_id].truncated_ms == 730
        assert "response.cancel" not in types_sent(sess)  # interrupt_response already cancelled it (§1.4)
        n = len(h.events)
        await asyncio.sleep(0.1)
        assert not any(isinstance(e, AgentAudio) for e in h.events[n:])
        assert fake.violations == []
        await h.close()

    async def test_no_truncate_when_the_reply_was_heard_in_full(self, fake):
        played = Played()
        h = await connected(fake, played)
        sess = await fake.session()
        sess.respond(b"\x55" * 1600)
        first = (await h.wait_for(AgentAudio))[0]
        await h.wait_for(AgentTurnEnd)
        played.ms[first.item_id] = 200
        await sess.speech_started()
        await h.wait_for(AgentInterrupted)
        await asyncio.sleep(0.05)
        assert sess.truncates == [] and fake.violations == []
        await h.close()


class TestTools:
    async def test_end_call_after_goodbye(self, fake):
        h = await connected(fake)
        sess = await fake.session()
        sess.call_tool("end_call", {"reason": "caller said bye"}, say=b"\x33" * 1600, transcript="Goodbye!")
        (hangup,) = await h.wait_for(HangupRequest)
        assert hangup == HangupRequest("caller said bye")
        kinds = [type(e) for e in h.events]
        assert kinds.index(HangupRequest) > max(i for i, k in enumerate(kinds) if k is AgentAudio)
        async with asyncio.timeout(2):
            while not sess.tool_outputs:
                await asyncio.sleep(0.005)
        assert sess.tool_outputs[0]["call_id"] in sess.calls
        await asyncio.sleep(0.05)
        assert types_sent(sess).count("response.create") == 0 and fake.violations == []
        await h.close()

    async def test_transfer_call(self, fake):
        h = await connected(fake)
        sess = await fake.session()
        sess.call_tool("transfer_call", {"destination": "sales"})
        (transfer,) = await h.wait_for(TransferRequest)
        assert transfer == TransferRequest("sales")
        await h.close()

    async def test_unknown_tool_is_answered_and_the_model_goes_on(self, fake):
        h = await connected(fake)
        sess = await fake.session()
        sess.call_tool("lookup_order", {"id": "42"})
        async with asyncio.timeout(2):
            while "response.create" not in types_sent(sess):
                await asyncio.sleep(0.005)
        assert '"ok": false' in sess.tool_outputs[0]["output"]
        assert not any(isinstance(e, HangupRequest | TransferRequest) for e in h.events)
        assert fake.violations == []
        await h.close()

    async def test_dtmf_is_a_user_text_item_then_a_response(self, fake):
        h = await connected(fake)
        sess = await fake.session()
        h.agent.send_dtmf("5")
        async with asyncio.timeout(2):
            while "response.create" not in types_sent(sess):
                await asyncio.sleep(0.005)
        item = next(e for e in sess.received if e["type"] == "conversation.item.create")["item"]
        assert item["role"] == "user" and item["content"] == [{"type": "input_text", "text": "caller pressed 5"}]
        assert fake.violations == []
        await h.close()

    async def test_dtmf_during_a_response_waits_for_it(self, fake):
        fake.speed = 1.0
        h = await connected(fake)
        sess = await fake.session()
        sess.respond(b"\x11" * 2400)  # 300 ms
        await h.wait_for(AgentAudio)
        h.agent.send_dtmf("7")
        await asyncio.sleep(0.05)
        assert "response.create" not in types_sent(sess)  # one active response at a time (§1.5)
        await h.wait_for(AgentTurnEnd)
        async with asyncio.timeout(2):
            while "response.create" not in types_sent(sess):
                await asyncio.sleep(0.005)
        assert fake.violations == []
        await h.close()


class TestFaults:
    async def test_wrong_key_is_refused_with_the_vendors_message_and_no_secret(self, fake):
        agent = make_agent(fake.url, openai_api_key="sk-wrong-key-abcdef123456")
        message = await harness.refusal(agent, secret="sk-wrong-key-abcdef123456")
        assert "401" in message and "Incorrect API key provided" in message

    async def test_unknown_model_is_refused(self, fake):
        await harness.refusal(make_agent(fake.url, openai_model="gpt-nonexistent"), match="model_not_found")

    async def test_quota_error_event_at_connect_is_refused(self, fake):
        fake.refuse_with = {"type": "insufficient_quota", "code": "insufficient_quota",
                            "message": "You exceeded your current quota.", "param": None, "event_id": None}
        await harness.refusal(make_agent(fake.url), match="exceeded your current quota")

    async def test_unreachable_vendor_is_refused_in_time(self):
        await harness.refusal(make_agent("ws://127.0.0.1:9/v1/realtime"))  # discard port: nothing listens

    async def test_error_event_mid_call_is_logged_not_fatal(self, fake, caplog):
        h = await connected(fake)
        sess = await fake.session()
        await sess.error("Something odd", "server_error", type_="server_error")
        sess.respond(b"\x22" * 800)
        await h.wait_for(AgentTurnEnd)
        assert not any(isinstance(e, AgentClosed) for e in h.events)
        assert "Something odd" in caplog.text
        await h.close()

    async def test_drop_mid_call_reconnects_with_same_settings_and_loses_no_event(self, fake):
        prompt = AgentPrompt(instructions="Be brief.", greeting="Hi!")
        h = await connected(fake, prompt=prompt)
        first = await fake.session()
        await h.wait_for(AgentTurnEnd)
        first.respond(b"\x44" * 1600)
        await h.wait_for(AgentTurnEnd, 2)
        await first.drop()
        for n in range(10):  # caller audio keeps coming meanwhile
            h.agent.send_audio(bytes([n]) * 160)
            await asyncio.sleep(0.005)
        second = await fake.session(2)
        assert second.config == first.config  # same session settings
        assert types_sent(second)[0] == "session.update"
        assert "response.create" not in types_sent(second)  # no second greeting
        async with asyncio.timeout(2):
            while len(second.received) < 2:
                await asyncio.sleep(0.005)
        replay = second.received[1]  # the conversation so far, as text
        assert replay["type"] == "conversation.item.create" and replay["item"]["role"] == "assistant"
        assert replay["item"]["content"] == [{"type": "output_text", "text": "Hello, how can I help?"}]
        second.respond(b"\x66" * 800)
        await h.wait_for(AgentTurnEnd, 3)
        assert h.audio() == GREETING + b"\x44" * 1600 + b"\x66" * 800
        assert not any(isinstance(e, AgentClosed) for e in h.events)
        for _ in range(5):  # caller audio flows into the new session
            h.agent.send_audio(b"\xaa" * 160)
        async with asyncio.timeout(2):
            while not second.audio.endswith(b"\xaa" * 800):
                await asyncio.sleep(0.01)
        assert h.agent.session.reconnects == 1 and fake.violations == []
        await h.close()

    async def test_gives_up_after_max_attempts(self, fake):
        h = await connected(fake, max_reconnect_attempts=2)
        sess = await fake.session()
        fake.api_key = "sk-rotated-away"  # reconnects are now refused
        await sess.drop()
        (closed,) = await h.wait_for(AgentClosed)
        assert closed.error and "401" in closed.reason
        await h.close()


class TestAzure:
    def test_url_forms(self):
        assert azure_url("https://res.openai.azure.com", "rt") == (
            "wss://res.openai.azure.com/openai/v1/realtime?model=rt")
        assert azure_url("wss://res.openai.azure.com/openai/v1/realtime", "rt") == (
            "wss://res.openai.azure.com/openai/v1/realtime?model=rt")
        assert azure_url("https://res.openai.azure.com/openai/realtime?api-version=2025-04-01-preview&deployment=x",
                         "rt") == "wss://res.openai.azure.com/openai/v1/realtime?model=rt"
        assert openai_url("wss://api.openai.com/v1/realtime", "gpt-realtime") == (
            "wss://api.openai.com/v1/realtime?model=gpt-realtime")
        assert openai_url("wss://proxy/v1/realtime?model=grok&x=1", "gpt-realtime") == (
            "wss://proxy/v1/realtime?model=grok&x=1")

    async def test_azure_ga_path_with_api_key_header(self):
        fake = FakeRealtime("az-key-0123456789", azure=True, reply_audio=b"\x12" * 800)
        base = await fake.start()
        try:
            prompt = AgentPrompt(greeting="Hello")
            h = Harness(make_agent("", ai_vendor="azure", azure_openai_endpoint=base, azure_openai_deployment=
                                   "my-realtime", azure_openai_api_key="az-key-0123456789", prompt=prompt))
            await h.agent.connect()
            h.start()
            sess = await fake.session()
            assert sess.headers["api-key"] == "az-key-0123456789" and "Authorization" not in sess.headers
            assert sess.model == "my-realtime" and "api-version" not in sess.request.query
            assert sess.config["model"] == "my-realtime"
            await h.wait_for(AgentTurnEnd)
            assert h.audio() == b"\x12" * 800 and fake.violations == []
            await h.close()
        finally:
            await fake.stop()

    @pytest.mark.parametrize("deployment", ["", "my-transcribe"])
    async def test_caller_transcripts_need_a_transcription_deployment(self, deployment):
        """Azure transcribes with a deployment (§1.9): none configured, none asked; configured, the caller's
        words reach the call log as on OpenAI. The fake refuses a model name that is not a deployment."""
        async with FakeRealtime("az-key-0123456789", azure=True, deployments=("my-realtime", "my-transcribe")) as fake:
            h = Harness(make_agent("", ai_vendor="azure", azure_openai_endpoint=fake.url,
                                   azure_openai_deployment="my-realtime", azure_openai_api_key="az-key-0123456789",
                                   azure_openai_transcription_deployment=deployment))
            await h.agent.connect()
            h.start()
            sess = await fake.session()
            asked = sess.received[0]["session"]["audio"]["input"].get("transcription")
            assert asked == ({"model": deployment} if deployment else None)
            await sess.turn("my order number is 42", reply=b"\x12" * 160)
            await h.wait_for(AgentTurnEnd)
            said = [e for e in h.events if isinstance(e, Transcript)]
            assert said == ([Transcript("caller", "my order number is 42")] if deployment else [])
            assert fake.violations == []
            await h.close()

    async def test_a_transcription_model_that_is_no_deployment_is_refused_by_name(self):
        async with FakeRealtime("az-key-0123456789", azure=True) as fake:
            agent = make_agent("", ai_vendor="azure", azure_openai_endpoint=fake.url, azure_openai_api_key=
                               "az-key-0123456789", azure_openai_deployment="my-realtime",
                               azure_openai_transcription_deployment="gpt-4o-mini-transcribe")
            await harness.refusal(agent, match="gpt-4o-mini-transcribe' is not a deployment")

    async def test_noise_reduction_and_transcription_settings(self, fake):
        h = await connected(fake, openai_noise_reduction="far_field", openai_transcription_model="off")
        audio_in = (await fake.session()).received[0]["session"]["audio"]["input"]
        assert audio_in["noise_reduction"] == {"type": "far_field"} and "transcription" not in audio_in
        await h.close()
        h = await connected(fake)
        audio_in = (await fake.session(2)).received[0]["session"]["audio"]["input"]
        assert "noise_reduction" not in audio_in and audio_in["transcription"] == {"model": "gpt-4o-mini-transcribe"}
        assert fake.violations == []
        await h.close()

    async def test_azure_wrong_key_is_refused(self):
        fake = FakeRealtime("az-key-0123456789", azure=True)
        base = await fake.start()
        try:
            agent = make_agent("", ai_vendor="azure", azure_openai_endpoint=base,
                               azure_openai_deployment="my-realtime", azure_openai_api_key="az-bad-key-999999")
            await harness.refusal(agent, match="401", secret="az-bad-key-999999")
        finally:
            await fake.stop()


class TestFakeIsHonest:
    async def test_beta_header_is_closed_with_4000(self, fake):
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed

        async with connect(f"{fake.url}?model=gpt-realtime", additional_headers={
                "Authorization": f"Bearer {KEY}", "OpenAI-Beta": "realtime=v1"}) as ws:
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
        assert info.value.rcvd.code == 4000 and "beta_api_shape_disabled" in info.value.rcvd.reason

    async def test_beta_session_shape_and_bad_format_are_rejected(self, fake):
        h = await connected(fake)
        sess = await fake.session()
        await sess.handle('{"type":"session.update","session":{"type":"realtime","input_audio_format":"g711_ulaw"}}')
        await sess.handle('{"type":"session.update","session":{"type":"realtime","audio":{"input":{"format":'
                          '{"type":"audio/pcm","rate":16000}}}}}')
        await sess.handle('{"type":"response.audio.delta","delta":""}')
        assert len(fake.violations) == 3
        await h.close()


class TestLongConversation:
    async def test_hundreds_of_turns_flat_memory_no_task_left(self, fake):
        fake.speed = 1000.0
        h = await connected(fake)
        sess = await fake.session()
        with BridgeMemory() as memory:
            for turn in range(300):
                h.agent.send_audio(b"\x7f" * 160)
                await sess.turn(f"question {turn}", reply=b"\x01" * 1600, reply_text=f"answer {turn}")
                await h.wait_for(AgentTurnEnd)
                assert Transcript("caller", f"question {turn}") in h.events
                h.events.clear()  # the call consumes events as they come
                memory.snapshot_at(turn, 50, 299)
        memory.assert_flat(16 * 1024, "250 turns")
        assert h.agent.session._events.qsize() == 0  # consumed as it came
        assert not h.agent.session.queue.audio and not h.agent.session.queue.control
        assert fake.violations == []
        await h.close()
        left = [t for t in asyncio.all_tasks() if "WsSession" in t.get_coro().__qualname__]
        assert left == [] and h.agent.session._owner is None

