"""The echo agent, the embedded default: plays the caller's audio back after ECHO_DELAY_MS.

It travels exactly the path a real vendor's audio does (events -> converter -> playout -> shared clock),
so a call to it checks an installation end to end without a key or a network.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from bridge.vendors.base import Agent, AgentAudio, AgentClosed, AgentEvent, AudioFormat

_CLOSE = object()


class EchoAgent(Agent):
    """Repeats what it hears, `ECHO_DELAY_MS` later."""

    def __init__(self, ctx):  # type: ignore[no-untyped-def]
        super().__init__(ctx)
        self.input_format = self.output_format = AudioFormat.of(ctx.codec)
        self.delay = ctx.settings.echo_delay_ms / 1000
        self._heard: asyncio.Queue[tuple[float, bytes] | object] = asyncio.Queue()

    async def connect(self) -> None:
        return None

    async def send_audio(self, data: bytes) -> None:
        self._heard.put_nowait((asyncio.get_running_loop().time() + self.delay, data))

    async def send_dtmf(self, digit: str) -> None:
        self.ctx.log.info("= echo agent heard DTMF %s", digit)

    async def events(self) -> AsyncIterator[AgentEvent]:
        loop = asyncio.get_running_loop()
        while (item := await self._heard.get()) is not _CLOSE:
            due, data = item  # type: ignore[misc]
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            yield AgentAudio(data)
        yield AgentClosed("echo agent closed")

    async def aclose(self) -> None:
        self._heard.put_nowait(_CLOSE)
