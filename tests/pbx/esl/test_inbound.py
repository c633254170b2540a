"""The ESL inbound control connection (pbx.md §2.5): auth, uuid_transfer of a bridged call's A-leg, reconnect."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid as uuidlib

from bridge.media import CallInfo
from bridge.pbx.esl.inbound import EslInboundControl, a_leg_uuid, backoff
from tests.conftest import make_settings
from tests.fakes.esl import FakeInboundServer

A_LEG = str(uuidlib.uuid4())


def bridged(metadata: dict[str, str]) -> CallInfo:
    """A SIP call's info with the headers FreeSWITCH's bridge snippet sent (or none)."""
    return CallInfo("call-1", "sip", metadata=metadata)


async def until(predicate, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def inbound(fake: FakeInboundServer, password: str = "ClueCon", wait_ready: bool = True):
    settings = make_settings(esl_inbound=fake.address, esl_password=password, transfer_context="sales",
                             transfer_extension="2000")
    control = EslInboundControl(settings)
    ready = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(control.run(ready))
        if wait_ready:
            async with asyncio.timeout(5):
                await ready.wait()
        try:
            yield control
        finally:
            task.cancel()


def test_backoff_starts_random_then_doubles_to_the_cap():
    delays = list(itertools.islice(backoff(0.5, 4.0), 7))
    assert 0 <= delays[0] < 0.5
    assert delays[1:] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_leg_uuid_from_sip_metadata():
    assert a_leg_uuid({"X-AI-Call-UUID": A_LEG}) == A_LEG
    assert a_leg_uuid({"x-ai-call-uuid": f" {A_LEG} "}) == A_LEG
    assert a_leg_uuid({"X-AI-Caller": "1001"}) is None
    assert a_leg_uuid({"X-AI-Call-UUID": f"{A_LEG} 2000 XML evil"}) is None  # could smuggle api arguments


async def test_uuid_transfer_of_the_bridged_a_leg():
    async with FakeInboundServer(channels={A_LEG}) as fake, inbound(fake) as control:
        assert await control.transfer(bridged({"X-AI-Call-UUID": A_LEG, "X-AI-Caller": "1001"}), "3001")
        assert await control.transfer(bridged({"X-AI-Call-UUID": A_LEG}), "")  # the default extension
        assert fake.commands == ["auth ***", f"api uuid_transfer {A_LEG} 3001 XML sales",
                                 f"api uuid_transfer {A_LEG} 2000 XML sales"]
        assert fake.transfers == [f"{A_LEG} 3001 XML sales", f"{A_LEG} 2000 XML sales"]


async def test_not_applicable_or_refused_falls_back():
    async with FakeInboundServer(channels={A_LEG}) as fake, inbound(fake) as control:
        assert not await control.transfer(bridged({}), "3001")  # not a FreeSWITCH-bridged call: SIP REFER instead
        gone = str(uuidlib.uuid4())
        assert not await control.transfer(bridged({"X-AI-Call-UUID": gone}), "3001")  # -ERR No such channel!
        assert not await control.transfer(bridged({"X-AI-Call-UUID": A_LEG}), "3001 XML evil")
        assert fake.commands == ["auth ***", f"api uuid_transfer {gone} 3001 XML sales"]
    assert not control.connected.is_set() and control.conn is None  # closed once the ingress stops:
    assert not await control.transfer(bridged({"X-AI-Call-UUID": A_LEG}), "3001")  # the SIP ingress falls back


async def test_wrong_password_retries_and_is_never_logged(caplog):
    caplog.set_level(logging.DEBUG)
    async with FakeInboundServer(password="right-one") as fake, \
            inbound(fake, password="s3cr3t-pw", wait_ready=False) as control:
        await until(lambda: fake.connections >= 2)
        assert not await control.transfer(bridged({"X-AI-Call-UUID": A_LEG}), "3001")
        assert set(fake.commands) == {"auth ***"}
    assert "s3cr3t-pw" not in caplog.text and "ESL_PASSWORD was not accepted" in caplog.text


async def test_reconnects_when_freeswitch_restarts():
    async with FakeInboundServer(channels={A_LEG}) as fake, inbound(fake) as control:
        await fake.stop()
        await until(lambda: not control.connected.is_set())
        assert not await control.transfer(bridged({"X-AI-Call-UUID": A_LEG}), "3001")  # down: fall back
        await fake.start()  # same port
        await until(lambda: control.sessions == 2)
        assert await control.transfer(bridged({"X-AI-Call-UUID": A_LEG}), "3001")
        assert fake.transfers == [f"{A_LEG} 3001 XML sales"]
