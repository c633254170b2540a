"""The media core with its ops side (metrics, admin endpoint, records, webhooks) behind the SIP responder."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bridge.call import MediaCore
from bridge.config import Settings
from bridge.ops.service import Ops
from bridge.sip.transport import SipServer
from bridge.vendors.base import Agent, AgentContext
from tests.conftest import make_settings


@dataclass
class Bridge:
    core: MediaCore
    ops: Ops
    sip_port: int

    @property
    def target(self) -> str:
        return f"sip:echo@127.0.0.1:{self.sip_port}"

    @property
    def admin(self) -> str:
        assert self.ops.admin_address is not None
        return "http://{}:{}".format(*self.ops.admin_address)


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.text()


async def scrape(bridge: Bridge) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics parsed by prometheus_client's own parser: {(sample name, sorted labels): value}."""
    status, text = await get(f"{bridge.admin}/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def until(predicate: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running_ops(core: MediaCore, settings: Settings) -> AsyncIterator[Ops]:
    """`Ops` on `core` with its tasks running (admin endpoint on the address it reports); stopped after."""
    ops = Ops(core, settings)
    task = asyncio.create_task(ops.run())
    try:
        await until(lambda: ops.admin_address is not None or settings.admin_listen is None or task.done())
        yield ops
    finally:
        await core.wait_idle(3.0)
        await ops.flush(1.0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def ops_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = dict(sip_port=0, admin_listen=("127.0.0.1", 0), rtp_port_min=46000,
                                  rtp_port_max=46999, echo_delay_ms=200)
    values.update(overrides)
    return make_settings(**values)


@contextlib.asynccontextmanager
async def ops_bridge(agent_factory: Callable[[AgentContext], Agent] | None = None,
                     **overrides: Any) -> AsyncIterator[Bridge]:
    """The SIP responder and the ops side on one core, with `overrides` over the test settings."""
    settings = ops_settings(**overrides)
    core = MediaCore(settings, agent_factory)
    server = SipServer(core, settings)
    ready = asyncio.Event()
    async with running_ops(core, settings) as ops:
        sip_task = asyncio.create_task(server.run(ready))
        try:
            await asyncio.wait_for(ready.wait(), 5)
            yield Bridge(core, ops, server.address[1])
        finally:
            sip_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sip_task
