"""A cap on the accepted connections one TCP listener holds open at once, for every listener of the adapter.

Each open connection costs a file descriptor, and the process shares one FD limit with the RTP sockets of live
calls: a flood of idle connections must not reach it. A ConnectionCap wraps a listener's protocol factory, so it
counts at accept and at close whatever the server on top (asyncio streams, aiohttp, SIP/TCP) does. At the cap a
new connection is either closed at once (the call ingresses: the connections open carry calls) or admitted in
place of the oldest one, which is aborted (the admin endpoint: a slow or idle client must not lock out the
scraper and the probes, and an HTTP client reconnects).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
from collections.abc import AsyncIterator, Callable
from typing import Literal

from aiohttp import web

log = logging.getLogger(__name__)

CALL_HEADROOM = 32  # connections a call ingress accepts beyond MAX_CALLS: those calls are refused with a reason
ADMIN_CONNECTIONS = 16  # the admin endpoint: a scraper and a few probes, each holding a keep-alive connection
WARN_EVERY = 60.0  # seconds between two warnings that a listener is at its cap
FDS_PER_CALL = 4  # a call's RTP socket, its vendor websocket, its ingress connection, a record file
FDS_OWN = 64  # the process's own: stdio, the event loop, listening sockets, control links, webhooks, logs

AtCap = Literal["refuse", "evict"]


class ConnectionCap:
    """At most `limit` accepted connections of listener `name` open at once (`at_cap` says what gives way)."""

    def __init__(self, name: str, limit: int, at_cap: AtCap = "refuse") -> None:
        self.name = name
        self.limit = limit
        self.at_cap = at_cap
        self.refused = 0  # new connections closed at accept: `limit` open already
        self.evicted = 0  # oldest connections aborted to admit a new one
        self.denied = 0  # closed at accept by the server on top: the peer is outside its allowed networks
        self.timed_out = 0  # closed by the server on top: a message did not complete in time
        self._open: dict[_Capped, asyncio.BaseTransport] = {}  # insertion order: oldest first
        self._warned = -WARN_EVERY

    @classmethod
    def for_calls(cls, name: str, max_calls: int) -> ConnectionCap:
        """A call ingress (one connection per call): MAX_CALLS plus CALL_HEADROOM, new ones refused beyond."""
        return cls(name, call_cap(max_calls))

    @property
    def open(self) -> int:
        return len(self._open)

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """The protocol factory to give the event loop in place of `factory`."""
        return lambda: _Capped(self, factory)

    async def listen(self, factory: Callable[[], asyncio.Protocol], host: str, port: int) -> asyncio.Server:
        """loop.create_server with this cap on it."""
        return await asyncio.get_running_loop().create_server(self.wrap(factory), host, port, reuse_address=True)

    async def listen_streams(self, accept: Callable[[asyncio.StreamReader, asyncio.StreamWriter], object],
                             host: str, port: int) -> asyncio.Server:
        """asyncio.start_server(accept, host, port) with this cap on it."""
        loop = asyncio.get_running_loop()
        return await self.listen(lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader(loop=loop), accept,
                                                                      loop=loop), host, port)

    @contextlib.asynccontextmanager
    async def serve_web(self, runner: web.BaseRunner, host: str, port: int) -> AsyncIterator[tuple[str, int]]:
        """An aiohttp runner (set up here, cleaned up after) on host:port with this cap on it: the bound address.

        In place of web.TCPSite, whose loop.create_server gets the runner's protocol factory unwrapped (its
        `backlog` bounds connections not yet accepted, not those open).
        """
        await runner.setup()
        try:
            server = await self.listen(runner.server, host, port)  # type: ignore[arg-type]
            try:
                yield server.sockets[0].getsockname()[:2]
            finally:
                server.close()  # as TCPSite.stop; then the runner closes the connections
        finally:
            await runner.cleanup()

    def _admit(self, connection: _Capped, transport: asyncio.BaseTransport) -> bool:
        if len(self._open) >= self.limit:
            if self.at_cap == "refuse":
                self.refused += 1
                self._warn("new ones closed at accept", self.refused)
                transport.close()
                return False
            self.evicted += 1
            self._warn("the oldest closed for each new one", self.evicted)
            self._open.pop(next(iter(self._open))).abort()  # type: ignore[attr-defined]  # a full send buffer waits not
        self._open[connection] = transport
        return True

    def _release(self, connection: _Capped) -> None:
        self._open.pop(connection, None)

    def _warn(self, what: str, count: int) -> None:
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            log.warning("! %s: at its cap of %d open connections, %s (%d so far)", self.name, self.limit, what, count)


def call_cap(max_calls: int) -> int:
    return max_calls + CALL_HEADROOM


def descriptors_needed(max_calls: int, caps: list[int]) -> int:
    """File descriptors the process may hold at once: MAX_CALLS calls, and every listener full to its cap."""
    return FDS_OWN + FDS_PER_CALL * max_calls + sum(caps)


def ensure_descriptors(needed: int) -> str:
    """Raise this process's open-file limit (RLIMIT_NOFILE soft, up to the hard one) to `needed` if below: a
    flood that fills every listener must not leave a call without its RTP socket. The start-up line, or ""."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return ""
    raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    if raised < needed:
        return (f"WARNING: open-file limit {raised} (hard limit) is below the {needed} that MAX_CALLS calls and full "
                f"connection caps may hold: raise it (ulimit -n, systemd LimitNOFILE=) or lower MAX_CALLS")
    return f"open-file limit raised from {soft} to {needed} (MAX_CALLS calls and full connection caps)"


class _Capped(asyncio.Protocol):
    """Stands between the transport and the server's own protocol, which sees only connections the cap admits."""

    __slots__ = ("cap", "inner", "admitted")

    def __init__(self, cap: ConnectionCap, factory: Callable[[], asyncio.Protocol]) -> None:
        self.cap = cap
        self.inner = factory()
        self.admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.admitted = self.cap._admit(self, transport)
        if self.admitted:
            self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.admitted:
            self.cap._release(self)
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.admitted:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.admitted else None

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()
