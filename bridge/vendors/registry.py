"""Which agent a call gets: AI_VENDOR names a builder registered here.

The built-in vendors are registered below as lazy builders (module path, class name), not by each vendor
module registering itself on import: self-registration would need something to import every vendor module
up front, pulling in every vendor's dependencies at start-up for the one the settings choose. A lazy map keeps
that first-use import, and keeps `bridge/vendors/base.py` (the interface) free of any concrete vendor.
A new vendor adds one `register()` line here and its name to `bridge.config.VENDORS`
(tests/vendors/test_registry.py checks that the two lists agree).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from bridge.vendors.base import Agent, AgentContext

Builder = Callable[[AgentContext], Agent]

_builders: dict[str, Builder] = {}


def register(name: str, builder: Builder) -> None:
    """Make AI_VENDOR=`name` build its agents with `builder` (replacing any earlier one of that name)."""
    _builders[name] = builder


def names() -> tuple[str, ...]:
    """The registered vendor names."""
    return tuple(_builders)


def create_agent(ctx: AgentContext) -> Agent:
    """Create the configured vendor's agent for one call (vendor modules are imported on first use)."""
    vendor = ctx.settings.ai_vendor
    try:
        builder = _builders[vendor]
    except KeyError:
        raise ValueError(f"unknown AI vendor {vendor!r}") from None
    return builder(ctx)


def _lazy(module: str, cls: str) -> Builder:
    def build(ctx: AgentContext) -> Agent:
        agent_class: type[Agent] = getattr(importlib.import_module(module), cls)
        return agent_class(ctx)

    return build


register("echo", _lazy("bridge.vendors.echo", "EchoAgent"))
register("openai", _lazy("bridge.vendors.openai", "OpenAIAgent"))
register("azure", _lazy("bridge.vendors.openai", "OpenAIAgent"))
register("deepgram", _lazy("bridge.vendors.deepgram", "DeepgramAgent"))
register("gemini", _lazy("bridge.vendors.gemini", "GeminiAgent"))
register("grok", _lazy("bridge.vendors.openai", "OpenAIAgent"))  # xAI speaks the Realtime protocol: a dialect
