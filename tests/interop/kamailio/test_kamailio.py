"""dialplan/kamailio.cfg run by a real Kamailio in front of two live adapters: probing, failover on 503, BYE routing.

Skipped, with the reason, when `kamailio` is not installed (Debian: apt-get install kamailio).
"""

from __future__ import annotations

import asyncio

import pytest

from bridge.caller import place_calls
from bridge.vendors.base import HangupRequest
from tests.interop.kamailio.peer import KAMAILIO, kamailio
from tests.sip.sip_live import ScriptedAgent, live_server

pytestmark = pytest.mark.skipif(KAMAILIO is None, reason="kamailio not installed (apt-get install kamailio)")


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
