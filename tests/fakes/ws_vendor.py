"""What the vendor fakes share: a websocket app on loopback, connection commands, uneven chunks, unknown keys."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Self

from aiohttp import web


class FakeServer:
    """One aiohttp app on 127.0.0.1 with an ephemeral port; `handler` serves every websocket request."""

    def __init__(self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> None:
        self._handler = handler
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handler)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class FakeVendor:
    """A fake service as an async context manager: its FakeServer runs inside, its connections close on exit."""

    _server: FakeServer
    connections: list

    async def __aenter__(self) -> Self:
        await self._server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for conn in self.connections:
            with contextlib.suppress(Exception):
                await conn.ws.close()
        await self._server.stop()


class WsConnection:
    """Commands every fake's connection takes: it has `ws` (the server side), `request` and caller `audio`."""

    ws: web.WebSocketResponse
    request: web.Request
    audio: bytearray

    async def drop(self) -> None:
        """Lose the TCP connection without a closing handshake (a network failure)."""
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.ws.close(code=code, message=reason.encode())

    async def wait_audio(self, nbytes: int, timeout: float = 5.0) -> None:
        await wait_for(lambda: len(self.audio) >= nbytes, timeout, f"{nbytes} bytes of caller audio")


def uneven_chunks(data: bytes, rng: random.Random, low: int, high: int, align: int = 1) -> Iterator[bytes]:
    """`data` cut in random sizes between `low` and `high` bytes (multiples of `align`), like vendors stream."""
    pos = 0
    while pos < len(data):
        size = max(align, rng.randint(low, high) // align * align)
        yield data[pos:pos + size]
        pos += size


def unknown_keys(model: Any, path: str = "$") -> Iterator[str]:
    """Keys a pydantic model accepted only because it allows extras (vendors.md §4.1): typos, stale names."""
    import pydantic

    if isinstance(model, pydantic.BaseModel):
        yield from (f"{path}.{k}" for k in (model.model_extra or {}))
        for name in type(model).model_fields:
            yield from unknown_keys(getattr(model, name), f"{path}.{name}")
    elif isinstance(model, list | tuple):
        for i, v in enumerate(model):
            yield from unknown_keys(v, f"{path}[{i}]")


def random_json(rng: random.Random, keys: list[str], depth: int = 0) -> Any:
    """A random JSON value whose objects use `keys`: garbage shaped enough to reach deep into a translator."""
    kind = rng.randrange(7 if depth < 4 else 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randint(-5, 5)
    if kind == 2:
        return rng.choice(["", "end_call", "transfer_call", "AAAA", "!!", "user", "assistant"])
    if kind == 3:
        return rng.random()
    if kind == 4:
        return rng.choice(["", "x"])
    if kind == 5:
        return [random_json(rng, keys, depth + 1) for _ in range(rng.randrange(3))]
    return {rng.choice(keys): random_json(rng, keys, depth + 1) for _ in range(rng.randrange(4))}


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll `predicate` every millisecond until true; AssertionError naming `what` after `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.001)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None
