"""Helpers for live SIP tests: the real SipServer on an ephemeral loopback port, and a raw UDP SIP client."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from collections.abc import AsyncIterator, Callable

from bridge.call import MediaCore
from bridge.errors import AgentRefused
from bridge.media import AudioFormat
from bridge.sip import message
from bridge.sip.message import Request, Response
from bridge.sip.transport import SipServer
from bridge.vendors.base import Agent, AgentClosed, AgentContext, AgentEvent
from tests.conftest import make_settings


class ScriptedAgent(Agent):
    """An agent that emits a fixed list of (delay, event) and then stays quiet until closed."""

    def __init__(self, ctx: AgentContext, script: list[tuple[float, AgentEvent]], refuse: bool = False,
                 connect_delay: float = 0.0) -> None:
        super().__init__(ctx)
        self.connect_delay = connect_delay
        self.input_format = self.output_format = AudioFormat.of(ctx.codec)
        self.script, self.refuse = script, refuse
        self.closed = asyncio.Event()

    async def connect(self) -> None:
        await asyncio.sleep(self.connect_delay)
        if self.refuse:
            raise AgentRefused("invalid API key (test)")

    def send_audio(self, data: bytes) -> None:
        return None

    async def events(self) -> AsyncIterator[AgentEvent]:
        for delay, event in self.script:
            await asyncio.sleep(delay)
            yield event
        await self.closed.wait()
        yield AgentClosed("closed")

    async def aclose(self) -> None:
        self.closed.set()


@contextlib.asynccontextmanager
async def live_server(agent_factory: Callable[[AgentContext], Agent] | None = None,
                      **overrides: object) -> AsyncIterator[SipServer]:
    """The SIP responder with the echo agent (or `agent_factory`), bound to 127.0.0.1:<ephemeral>."""
    values = {"sip_port": 0, "rtp_port_min": 42000, "rtp_port_max": 43999, "echo_delay_ms": 100}
    values.update(overrides)
    settings = make_settings(**values)
    server = SipServer(MediaCore(settings, agent_factory), settings)
    ready = asyncio.Event()
    task = asyncio.create_task(server.run(ready))
    await asyncio.wait([task, asyncio.create_task(ready.wait())], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    try:
        yield server
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def status_of(msg: Response | bytes | None) -> int | None:
    """The status code of a parsed or raw response."""
    if isinstance(msg, Response):
        return msg.status
    match = re.match(rb"SIP/2\.0 (\d{3}) ", msg or b"")
    return int(match.group(1)) if match else None


class RawClient(asyncio.DatagramProtocol):
    """A UDP socket that sends raw SIP and collects what comes back, parsed (unparseable bytes kept as-is)."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[Request | Response | bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        self.transport = transport

    def datagram_received(self, data, addr):  # type: ignore[no-untyped-def]
        try:
            self.inbox.put_nowait(message.parse(data))
        except message.SipParseError:
            self.inbox.put_nowait(data)

    @classmethod
    async def open(cls) -> RawClient:
        _, proto = await asyncio.get_running_loop().create_datagram_endpoint(cls, local_addr=("127.0.0.1", 0))
        return proto

    @property
    def port(self) -> int:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[1]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def send(self, data: bytes, dest: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, dest)

    async def recv(self, timeout: float = 1.0) -> Request | Response | bytes | None:
        try:
            async with asyncio.timeout(timeout):
                return await self.inbox.get()
        except TimeoutError:
            return None

    async def final(self, timeout: float = 2.0) -> Response | bytes | None:
        """The first final response (provisionals skipped), or None when nothing final came in time.

        A response that echoes a malformed request's headers back may not parse itself: it comes as bytes.
        """
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while (left := end - loop.time()) > 0:
            msg = await self.recv(left)
            if msg is not None and not isinstance(msg, Request) and (status_of(msg) or 0) >= 200:
                return msg
        return None

    def options(self, dest: tuple[str, int], via_host: str = "127.0.0.1") -> bytes:
        branch = "z9hG4bK" + secrets.token_hex(6)
        data = (f"OPTIONS sip:{dest[0]}:{dest[1]} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {via_host}:{self.port};branch={branch};rport\r\n"
                "Max-Forwards: 70\r\nFrom: <sip:dispatcher@localhost>;tag=probe\r\n"
                f"To: <sip:{dest[0]}:{dest[1]}>\r\nCall-ID: {secrets.token_hex(6)}\r\nCSeq: 1 OPTIONS\r\n"
                "Content-Length: 0\r\n\r\n").encode()
        self.send(data, dest)
        return data
