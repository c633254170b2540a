"""dialplan/kamailio.cfg run by a real Kamailio in front of two live adapters: probing, failover on 503, BYE routing.

Skipped, with the reason, when `kamailio` is not installed (Debian: apt-get install kamailio).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.caller import place_calls
from bridge.vendors.base import HangupRequest
from tests.interop.kamailio.peer import KAMAILIO, kamailio_argv
from tests.sip.sip_live import RawClient, ScriptedAgent, live_server, status_of

pytestmark = pytest.mark.skipif(KAMAILIO is None, reason="kamailio not installed (apt-get install kamailio)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def kamailio(tmp: Path, adapters: list[int]) -> AsyncIterator[int]:
    """dialplan/kamailio.cfg as shipped, with LISTEN and DS_LIST overridden on the command line."""
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(*kamailio_argv(tmp, port, adapters),
                                                stdout=asyncio.subprocess.DEVNULL,
                                                stderr=(tmp / "kamailio.log").open("wb"))
    try:
        client = await RawClient.open()
        try:
            for _ in range(40):
                client.options(("127.0.0.1", port))
                if status_of(await client.final(0.25)) == 200:
                    break
            else:
                raise AssertionError("Kamailio did not start: " + (tmp / "kamailio.log").read_text()[-2000:])
        finally:
            client.close()
        yield port
    finally:
        proc.terminate()
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def test_calls_fail_over_from_a_refusing_adapter_and_echo_through_the_proxy(tmp_path):
    refusing = lambda ctx: ScriptedAgent(ctx, [], refuse=True)  # noqa: E731 - the vendor says no: SIP 503
    async with live_server(refusing) as bad, live_server() as good, \
            kamailio(tmp_path, [bad.address[1], good.address[1]]) as port:
        figures = await place_calls(f"sip:service@127.0.0.1:{port}", calls=2, seconds=1.0)
        await asyncio.sleep(0.3)
        assert good.uas is not None and bad.uas is not None
        assert all(f.answered and f.echo_delay_ms is not None for f in figures)
        assert all(f.ended_by == "caller" for f in figures)  # our 200 to their BYE came back through Kamailio
        assert not good.core.calls  # the caller's BYE reached the adapter through the Record-Route
        assert bad.uas.stats["INVITE 503"] >= 1  # round robin tried the refusing one: Kamailio failed over


async def test_the_adapters_bye_is_routed_through_the_proxy(tmp_path):
    hangs_up = lambda ctx: ScriptedAgent(ctx, [(0.5, HangupRequest("bye"))])  # noqa: E731
    async with live_server(hangs_up) as adapter, kamailio(tmp_path, [adapter.address[1]]) as port:
        (fig,) = await place_calls(f"sip:service@127.0.0.1:{port}", calls=1, seconds=4.0)
        await asyncio.sleep(0.3)
        assert fig.answered and fig.ended_by == "adapter"
        assert not adapter.core.calls and adapter.uas is not None and not adapter.uas._client  # BYE got its 200
