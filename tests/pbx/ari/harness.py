"""Helpers for the Stasis application tests: a running adapter, polling, a scripted agent, tone figures."""

from __future__ import annotations

import asyncio
import contextlib
import math
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any, Self

import pytest

from bridge.call import MediaCore
from bridge.config import Settings
from bridge.errors import AgentRefused
from bridge.media import AudioFormat
from bridge.pbx.ari.app import serve_ari
from bridge.vendors.base import Agent, AgentClosed, AgentContext, AgentEvent


class Adapter:
    """serve_ari running in a task, with its MediaCore; stopped (cancelled) on exit."""

    def __init__(self, settings: Settings, agent_factory: Callable[[AgentContext], Agent] | None = None) -> None:
        self.settings = settings
        self.core = MediaCore(settings, agent_factory)
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Adapter:
        self.task = asyncio.create_task(serve_ari(self.core, self.settings, self.ready))
        await asyncio.wait_for(self.ready.wait(), 5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, 10)


async def wait_until(condition: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    """Poll `condition` every 10 ms; fail the test with `what` after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or condition}")
        await asyncio.sleep(0.01)


class ScriptedAgent(Agent):
    """A test agent: after connect it emits `script`, then stays quiet until closed; records DTMF."""

    def __init__(self, ctx: AgentContext, script: list[AgentEvent], refuse: bool = False) -> None:
        super().__init__(ctx)
        self.input_format = self.output_format = AudioFormat.of(ctx.codec)
        self.script = script
        self.refuse = refuse
        self.heard = 0
        self.digits: list[str] = []
        self._closed = asyncio.Event()

    async def connect(self) -> None:
        if self.refuse:
            raise AgentRefused("401 invalid api key")

    def send_audio(self, data: bytes) -> None:
        self.heard += len(data)

    def send_dtmf(self, digit: str) -> None:
        self.digits.append(digit)

    async def events(self) -> AsyncIterator[AgentEvent]:
        for event in self.script:
            yield event
        await self._closed.wait()
        yield AgentClosed("closed")

    async def aclose(self) -> None:
        self._closed.set()


def pcm_stats(frames: list[bytes]) -> tuple[float, float]:
    """(frequency by zero crossings, RMS) of PCM16 little-endian frames."""
    samples = [s for f in frames for s in struct.unpack(f"<{len(f) // 2}h", f)]
    crossings = sum(1 for a, b in zip(samples, samples[1:], strict=False) if a < 0 <= b)
    freq = crossings * 8000 / max(1, len(samples))
    rms = math.sqrt(sum(s * s for s in samples) / max(1, len(samples)))
    return freq, rms


class ServedIngress:
    """A stream ingress's `serve(ready)` running in a task for one test; subclasses set `self.server`."""

    server: Any
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        ready = asyncio.Event()
        self._task = asyncio.create_task(self.server.serve(ready))
        await asyncio.wait_for(ready.wait(), 5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def scripted(made: list[ScriptedAgent], script=()):  # type: ignore[no-untyped-def]
    """An agent factory that keeps every ScriptedAgent it makes in `made`."""
    def factory(ctx):  # type: ignore[no-untyped-def]
        made.append(ScriptedAgent(ctx, list(script)))
        return made[-1]

    return factory
