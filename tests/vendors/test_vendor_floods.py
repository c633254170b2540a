"""A vendor gone mad, through the SIP responder (issue 16, item 2): a 50 MB message, and 10,000 events a second.

The vendor websocket is opened with `max_size` (bridge/vendors/ws.py MAX_MESSAGE_BYTES, 16 MiB): websockets
refuses a bigger frame from its header, before reading it, and fails the connection with 1009; the drop is
logged with that reason and the session reconnects, the call carrying on. A flood of small events is read and
dropped as fast as it comes; the call keeps working.
"""

from __future__ import annotations

import asyncio
import logging
import time

from bridge.vendors.ws import MAX_MESSAGE_BYTES
from tests.vendors.test_e2e_openai import REPLY, Caller, environment, until


async def test_a_50_mb_message_is_refused_with_its_reason_and_the_call_carries_on(caplog):
    caplog.set_level(logging.INFO)
    async with environment() as env:
        caller = Caller(env.target)
        assert await caller.dial()
        session = await env.fake.session()
        await asyncio.sleep(0.3)
        frame = '{"type": "response.output_audio_transcript.delta", "delta": "' + "x" * (50 << 20) + '"}'
        assert len(frame) > 3 * MAX_MESSAGE_BYTES
        await session.ws.send_str(frame)
        del frame
        again = await env.fake.session(2, timeout=10.0)
        again.respond(REPLY * 10)
        await until(lambda: len(caller.heard(REPLY)) == 10, 10.0)
        drops = [r.getMessage() for r in caplog.records if "reconnecting" in r.getMessage()]
        print(f"\n{drops}")
        assert any("1009" in d for d in drops), drops
        assert not caller.call.hung_up.is_set()
        await caller.hang_up()


async def test_ten_thousand_events_a_second_leave_the_call_working():
    async with environment(check_server=False) as env:
        caller = Caller(env.target)
        assert await caller.dial()
        session = await env.fake.session()
        await asyncio.sleep(0.3)
        start, n = time.monotonic(), 20_000
        for k in range(n):  # events the client has no use for; sent as fast as the fake can (~10,000/s here)
            limits = [{"name": "requests", "limit": 1000, "remaining": k, "reset_seconds": 1}]
            await session.send({"type": "rate_limits.updated", "rate_limits": limits})
        rate = n / (time.monotonic() - start)
        session.respond(REPLY * 10)
        await until(lambda: len(caller.heard(REPLY)) == 10, 10.0)
        times = [t for t, _ in caller.call.rtp.arrivals]
        gap = max((b - a) * 1000 for a, b in zip(times, times[1:], strict=False))
        print(f"\n{n} events at {rate:.0f}/s (fake and adapter in one process): the reply heard whole, "
              f"largest RTP gap {gap:.0f} ms")
        assert not caller.call.hung_up.is_set() and len(env.core.calls) == 1
        await caller.hang_up()
