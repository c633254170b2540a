"""The echo agent, the embedded default: plays the caller's audio back after ECHO_DELAY_MS.

It travels exactly the path a real vendor's audio does (events -> converter -> playout -> shared clock),
so a call to it checks an installation end to end without a key or a network. Like a real vendor it hands
over audio in chunks (of BATCH), which keeps it to one wake-up per chunk rather than one per frame.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

from bridge.media import AudioFormat
from bridge.vendors.base import Agent, AgentAudio, AgentClosed, AgentContext, AgentEvent

BATCH = 0.060  # seconds of audio per chunk; delays shorter than this come out as BATCH


class EchoAgent(Agent):
    """Repeats what it hears, max(ECHO_DELAY_MS, 60 ms) later."""

    def __init__(self, ctx: AgentContext) -> None:
        super().__init__(ctx)
        self.input_format = self.output_format = ctx.caller_format or AudioFormat.of(ctx.codec)
        self.lead = max(ctx.settings.echo_delay_ms / 1000 - BATCH, 0.0)
        self._heard: deque[tuple[float, bytes]] = deque()  # (when the chunk may start, audio)
        self._arrived = asyncio.Event()
        self._closed = False

    async def connect(self) -> None:
        return None

    def send_audio(self, data: bytes) -> None:
        self._heard.append((asyncio.get_running_loop().time() + self.lead, data))
        self._arrived.set()

    def send_dtmf(self, digit: str) -> None:
        self.ctx.log.info("= echo agent heard DTMF %s", digit)

    async def events(self) -> AsyncIterator[AgentEvent]:
        loop = asyncio.get_running_loop()
        while not self._closed:
            if not self._heard:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            # The chunk's first frame leaves exactly `delay` after it arrived; the rest follow it back to back.
            await asyncio.sleep(max(0.0, self._heard[0][0] - loop.time()) + BATCH)
            now = loop.time()
            chunk = []
            while self._heard and self._heard[0][0] <= now:
                chunk.append(self._heard.popleft()[1])
            if chunk:
                yield AgentAudio(b"".join(chunk))
        yield AgentClosed("echo agent closed")

    async def aclose(self) -> None:
        self._closed = True
        self._arrived.set()
