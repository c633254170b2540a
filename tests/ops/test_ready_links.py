"""/ready follows a configured ESL-inbound control link: down until FreeSWITCH accepts our login (the fake)."""

from __future__ import annotations

import asyncio
import contextlib

from bridge.app import ingresses
from bridge.call import MediaCore
from tests.conftest import make_settings
from tests.fakes.esl import FakeInboundServer
from tests.ops.harness import until


async def test_a_refused_esl_inbound_login_keeps_ready_at_503():
    async with FakeInboundServer(password="s3cret") as fake:
        settings = make_settings(sip_enabled=False, esl_inbound=fake.address, esl_password="wrong")
        core = MediaCore(settings)
        (_, serve), = ingresses(settings)
        task = asyncio.create_task(serve(core, settings))
        try:
            await until(lambda: "esl-inbound" in core.links)
            await asyncio.sleep(0.3)
            assert core.not_ready() == "esl-inbound control link down"
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_ready_waits_for_the_esl_inbound_link():
    async with FakeInboundServer(password="s3cret") as fake:
        settings = make_settings(sip_enabled=False, esl_inbound=fake.address, esl_password="s3cret")
        core = MediaCore(settings)
        (name, serve), = ingresses(settings)
        assert name == "esl-inbound" and core.not_ready() is None  # nothing registered before it runs
        task = asyncio.create_task(serve(core, settings))
        try:
            await until(lambda: "esl-inbound" in core.links)
            await until(lambda: core.not_ready() is None, what="the login")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert core.not_ready() == "esl-inbound control link down"
