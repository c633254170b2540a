"""Metrics and /ready for a call through the ARI ingress (the fake Asterisk, built from the ARI swagger)."""

from __future__ import annotations

import pytest

from tests.fakes.ari import FakeAsterisk, tone
from tests.ops.harness import Bridge, get, ops_settings, running_ops, scrape, until
from tests.pbx.ari.harness import Adapter


@pytest.fixture
async def fake():
    try:
        asterisk = FakeAsterisk()
    except FileNotFoundError as exc:
        pytest.skip(f"ARI api-docs not found ({exc})")
    await asterisk.start()
    yield asterisk
    await asterisk.stop()


async def test_an_ari_call_is_counted_and_the_link_shows_on_ready(fake):
    settings = ops_settings(ari_url=fake.url, ari_username="adapter", ari_password="secret", sip_enabled=False)
    adapter = Adapter(settings)
    async with running_ops(adapter.core, settings) as ops:
        bridge = Bridge(adapter.core, ops, 0)
        async with adapter:
            await until(lambda: ops.admin_address)
            assert await get(f"{bridge.admin}/ready") == (200, "ready\n")
            caller = fake.call_in(source=tone(440))
            await until(lambda: len(fake.heard(caller)) >= 50, what="a second of echo")
            fake.caller_hangup(caller)
            await until(lambda: not adapter.core.calls and not fake.leftovers())
            m = await scrape(bridge)
            await fake.drop_websockets()
            await until(lambda: not adapter.core.links["ari"](), what="the link seen down")
            status, body = await get(f"{bridge.admin}/ready")
            assert status == 503 and "ari control link down" in body
    (media,) = fake.media_history
    key = ("sip_to_ai_calls_total", (("ingress", "ari"), ("outcome", "completed"), ("vendor", "echo")))
    assert m[key] == 1
    received = m["sip_to_ai_rtp_packets_total", (("direction", "in"),)]
    sent = m["sip_to_ai_rtp_packets_total", (("direction", "out"),)]
    assert len(media.sent_at) - 2 <= received <= len(media.sent_at)  # the last may cross the hang-up
    assert len(media.received) + media.dropped <= sent <= len(media.received) + media.dropped + 2
    assert m["sip_to_ai_control_link_up", (("link", "ari"),)] == 1
