"""The agent registry: AI_VENDOR picks a builder; every configurable vendor has one; new ones can register."""

from __future__ import annotations

import pytest

from bridge import config
from bridge.media import Codec
from bridge.vendors import registry
from bridge.vendors.base import AgentContext
from bridge.vendors.deepgram import DeepgramAgent
from bridge.vendors.echo import EchoAgent
from bridge.vendors.gemini import GeminiAgent
from bridge.vendors.openai import OpenAIAgent
from tests.vendors.harness import agent_context


def test_every_configurable_vendor_is_registered():
    assert set(registry.names()) == set(config.VENDORS)


@pytest.mark.parametrize("vendor, agent_class", [
    ("echo", EchoAgent), ("openai", OpenAIAgent), ("azure", OpenAIAgent), ("deepgram", DeepgramAgent),
    ("gemini", GeminiAgent),
])
def test_ai_vendor_picks_its_agent(vendor, agent_class):
    agent = registry.create_agent(agent_context("c", Codec.PCMU, "test.registry", ai_vendor=vendor))
    assert type(agent) is agent_class


def test_unknown_vendor_is_refused_by_name():
    with pytest.raises(ValueError, match="'nobody'"):
        registry.create_agent(agent_context("c", Codec.PCMU, "test.registry", ai_vendor="nobody"))


def test_a_registered_builder_is_used():
    built: list[AgentContext] = []

    def build(ctx: AgentContext) -> EchoAgent:
        built.append(ctx)
        return EchoAgent(ctx)

    registry.register("test-vendor", build)
    try:
        ctx = agent_context("c", Codec.PCMA, "test.registry", ai_vendor="test-vendor")
        assert isinstance(registry.create_agent(ctx), EchoAgent) and built == [ctx]
    finally:
        registry._builders.pop("test-vendor")
