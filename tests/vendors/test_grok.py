"""AI_VENDOR=grok: OpenAIAgent in xAI's dialect against the fake Grok Voice server (tests/fakes/grok_voice.py)."""

from __future__ import annotations

import json

import pytest

from bridge.config import AgentPrompt
from bridge.media import Codec
from bridge.vendors.base import AgentAudio, AgentInterrupted, AgentTurnEnd, HangupRequest, Transcript
from bridge.vendors.openai import OpenAIAgent
from bridge.vendors.ws import Send
from tests.fakes.grok_voice import FakeGrok, session_error
from tests.fakes.openai_realtime import FakeRealtime
from tests.fakes.ws_vendor import wait_for
from tests.vendors import harness
from tests.vendors.harness import agent_context

KEY = "xai-test-0123456789"
GREETING = bytes(range(256)) * 10  # 320 ms of G.711, distinct values so order shows


def make_agent(url: str, codec: Codec = Codec.PCMU, **overrides) -> OpenAIAgent:
    fields = dict(ai_vendor="grok", xai_api_key=KEY, grok_ws_endpoint=url, reconnect_delay_sec=0.02,
                  ai_connection_timeout_sec=3.0,
                  prompt=AgentPrompt(instructions="Be brief.", greeting="Welcome to ACME."))
    fields.update(overrides)
    return OpenAIAgent(agent_context("call-g", codec, "test.grok", **fields))


@pytest.fixture
async def fake():
    async with FakeGrok(KEY, reply_audio=GREETING, reply_text="Welcome to ACME.") as server:
        yield server


async def test_session_is_xai_shaped_sent_after_conversation_created(fake):
    async with harness.session(make_agent(fake.url, Codec.PCMA), fake) as (agent, events):
        sess = await fake.session()
        update, greet = sess.received[0], sess.received[1]
        assert sess.sent_log[0][1]["type"] == "conversation.created"
        assert update["type"] == "session.update" and sess.model == "grok-voice-think-fast-2.0"
        s = update["session"]
        assert s["voice"] == "eve" and s["turn_detection"] == {"type": "server_vad"}
        assert s["audio"] == {"input": {"format": {"type": "audio/pcma", "rate": 8000}},
                              "output": {"format": {"type": "audio/pcma", "rate": 8000}}}
        assert {t["name"] for t in s["tools"]} == {"end_call", "transfer_call"}
        assert greet["type"] == "response.create" and greet["response"]["metadata"]["client_event_id"]
        assert sess.headers["Authorization"] == f"Bearer {KEY}"
        await events.wait(AgentTurnEnd)
        assert events.audio() == GREETING
        await wait_for(lambda: events.of(Transcript), what="the greeting's transcript")
        assert events.of(Transcript) == [Transcript("agent", "Welcome to ACME.")]  # from deltas: .done has none


async def test_barge_in_flushes_without_truncate_and_caller_words_are_logged(fake):
    fake.speed = 1.0
    async with harness.session(make_agent(fake.url, prompt=AgentPrompt(instructions="x")), fake) as (agent, events):
        sess = await fake.session()
        sess.respond(b"\x42" * 8000)  # 1 s
        await events.wait(AgentAudio)
        await sess.turn("I want to speak to sales")
        await events.wait(AgentInterrupted)
        await wait_for(lambda: events.of(Transcript), what="the caller's transcript")
        assert events.of(Transcript) == [Transcript("caller", "I want to speak to sales")]
        assert "conversation.item.truncate" not in [e["type"] for e in sess.received]


async def test_tool_call_ends_the_call_and_dtmf_is_text(fake):
    async with harness.session(make_agent(fake.url), fake) as (agent, events):
        sess = await fake.session()
        await events.wait(AgentTurnEnd)
        agent.send_dtmf("5")
        await wait_for(lambda: sum(e["type"] == "response.create" for e in sess.received) == 2, what="dtmf reply")
        items = [e["item"] for e in sess.received if e["type"] == "conversation.item.create"]
        assert items[0]["content"] == [{"type": "input_text", "text": "caller pressed 5"}]
        await events.wait(AgentTurnEnd, 2)
        sess.call_tool("end_call", {"reason": "done"}, say=b"\x33" * 800)
        await harness.requested(events, HangupRequest("done"))
        await wait_for(lambda: sess.tool_outputs, what="the tool output")
        assert json.loads(sess.tool_outputs[0]["output"]) == {"ok": True}


async def test_refusals_name_the_reason_and_never_the_key(fake):
    await harness.refusal(make_agent(fake.url, grok_model="grok-nope"), match="model_not_found")
    await harness.refusal(make_agent(fake.url, xai_api_key="xai-wrong-key-123456"), match="401",
                          secret="xai-wrong-key-123456")


async def test_fake_refuses_what_xai_refuses():
    """The fake is no mirror of the client: OpenAI's GA shape, a truncate, an untagged response are refused."""
    ga = OpenAIAgent(agent_context("c", Codec.PCMU, "t", ai_vendor="openai")).session_config()
    assert "unknown session parameter" in session_error(ga)
    assert session_error({"audio": {"input": {"format": {"type": "audio/pcmu", "rate": 16000}}}})
    assert session_error({"voice": "alloy"}) == "unknown voice 'alloy'"
    async with FakeGrok(KEY) as grok:
        agent = make_agent(grok.url)
        await agent.connect()
        sess = await grok.session()
        for bad in ({"type": "conversation.item.truncate", "item_id": "x", "content_index": 0, "audio_end_ms": 0},
                    {"type": "response.create", "response": {"instructions": "hi"}}):
            agent.send(json.dumps(bad))
        await wait_for(lambda: len(grok.violations) == 2, what="two refusals")
        assert [e["error"]["code"] for _, e in sess.sent_log if e["type"] == "error"] == ["invalid_event"] * 2
        await agent.aclose()


async def test_openai_fake_is_untouched_by_the_dialect():
    """The same client with AI_VENDOR=openai still speaks GA to the OpenAI fake (no xAI key leaks in)."""
    async with FakeRealtime("sk-test-0123456789") as fake:
        agent = OpenAIAgent(agent_context("c", Codec.PCMU, "t", ai_vendor="openai",
                                          openai_api_key="sk-test-0123456789", openai_ws_endpoint=fake.url))
        async with harness.session(agent, fake):
            sess = await fake.session()
            assert sess.received[0]["session"]["type"] == "realtime"


def test_an_active_response_race_is_retried_whatever_the_error_code():
    """xAI words the one-response-at-a-time error like OpenAI but with its own code: the request waits and retries."""
    agent = make_agent("ws://127.0.0.1:9/v1/realtime")
    agent.send_dtmf("1")  # a response.create goes out
    error = {"type": "error", "error": {"code": "invalid_request", "message": "Conversation already has an active "
                                        "response in progress: resp_1."}}
    list(agent.translate(json.dumps(error)))
    done = {"type": "response.done", "response": {"id": "resp_1", "status": "completed", "output": []}}
    sent = [a.message for a in agent.translate(json.dumps(done)) if isinstance(a, Send)]
    assert [json.loads(m)["type"] for m in sent] == ["response.create"]
