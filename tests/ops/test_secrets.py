"""No secret in any output at LOG_LEVEL=DEBUG: one call per vendor fake and one ARI call, every byte scanned.

Output = everything the process logged (ours and third-party loggers: websockets prints handshake headers at
DEBUG), the records directory, the /metrics exposition and the webhook bodies.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from bridge import caller as uac
from bridge.ops.logs import setup_logging
from tests.fakes.ari import FakeAsterisk, tone
from tests.fakes.deepgram_agent import FakeDeepgram
from tests.fakes.gemini_live import FakeGeminiLive
from tests.fakes.grok_voice import FakeGrok
from tests.fakes.openai_realtime import FakeRealtime
from tests.ops.harness import Bridge, get, ops_bridge, ops_settings, running_ops, until
from tests.ops.test_webhooks import receiver
from tests.pbx.ari.harness import Adapter

HOOK_SECRET = "hook-DISTINCT-secret-2a6b"
ARI_PASSWORD = "ari-DISTINCT-pw-4e8f"
KEYS = {"openai": "sk-DISTINCT-openai-7f3a9c", "azure": "az-DISTINCT-key-55e1",
        "deepgram": "dg-DISTINCT-key-91b2", "gemini": "gm-DISTINCT-key-3c7d", "grok": "xai-DISTINCT-key-8d0e"}


@contextlib.asynccontextmanager
async def vendor(name: str) -> AsyncIterator[dict[str, Any]]:
    """The vendor's fake, and the settings that point the bridge at it with its distinctive key."""
    key = KEYS[name]
    if name in ("openai", "azure", "grok"):
        greeting = dict(reply_audio=b"\x21" * 1600, reply_text="Welcome.")
        fake = FakeGrok(key, **greeting) if name == "grok" else FakeRealtime(key, azure=name == "azure", **greeting)
        url = await fake.start()
        try:
            yield {"openai": dict(ai_vendor="openai", openai_api_key=key, openai_ws_endpoint=url),
                   "azure": dict(ai_vendor="azure", azure_openai_api_key=key, azure_openai_endpoint=url,
                                 azure_openai_deployment="my-realtime"),
                   "grok": dict(ai_vendor="grok", xai_api_key=key, grok_ws_endpoint=url)}[name]
        finally:
            await fake.stop()
    elif name == "deepgram":
        async with FakeDeepgram(key) as dg:
            yield dict(ai_vendor="deepgram", deepgram_api_key=key, deepgram_ws_endpoint=dg.url)
    else:
        async with FakeGeminiLive(key) as gm:
            yield dict(ai_vendor="gemini", gemini_api_key=key, gemini_ws_endpoint=gm.url,
                       gemini_model="gemini-test-live")


@contextlib.contextmanager
def debug_logs(**settings: Any) -> Any:
    """The process's log set-up at LOG_LEVEL=DEBUG, writing into a buffer; restored after."""
    out = io.StringIO()
    setup_logging(ops_settings(log_level="debug", **settings), out)
    try:
        yield out
    finally:
        logging.basicConfig(force=True, level=logging.WARNING)


@contextlib.asynccontextmanager
async def webhook_sink() -> AsyncIterator[tuple[str, list[bytes]]]:
    bodies: list[bytes] = []

    async def handler(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.Response(status=204)

    async with receiver(handler) as url:
        yield url, bodies


def everything(logs: io.StringIO, records: Path, metrics: str, bodies: list[bytes]) -> str:
    files = b"".join(p.read_bytes() for p in sorted(records.iterdir()))
    return "\n".join([logs.getvalue(), files.decode("latin-1"), metrics, b"\n".join(bodies).decode()])


def forms(secret: str, user: str = "") -> list[str]:
    found = [secret, base64.b64encode(secret.encode()).decode()]
    if user:
        found.append(base64.b64encode(f"{user}:{secret}".encode()).decode())
    return found


@pytest.mark.parametrize("name", list(KEYS))
async def test_a_vendor_call_at_debug_leaks_no_key(name, tmp_path):
    async with vendor(name) as vendor_settings, webhook_sink() as (url, bodies):
        settings = dict(vendor_settings, call_records_dir=str(tmp_path), events_webhook_url=url,
                        events_webhook_secret=HOOK_SECRET, ai_connection_timeout_sec=3.0)
        with debug_logs(**settings) as logs:
            async with ops_bridge(**settings) as bridge:
                (fig,) = await uac.place_calls(bridge.target.replace("echo@", "ai@"), calls=1, seconds=1.5)
                assert fig.answered and fig.received > 30
                await until(lambda: len(bodies) == 2)
                _, metrics = await get(f"{bridge.admin}/metrics")
    summary = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert summary["vendor"] == name and summary["rtp"]["received"] == fig.sent
    uplink = next(s for f in text_string_to_metric_families(metrics) for s in f.samples
                  if s.name == "sip_to_ai_uplink_latency_seconds_count" and s.labels == {"vendor": name})
    assert uplink.value >= 1  # one caller frame a second is timed from RTP in to the vendor socket
    text = everything(logs, tmp_path, metrics, bodies)
    assert "websockets" in logs.getvalue() and "***" in logs.getvalue()  # the handshake was logged, redacted
    for secret in forms(KEYS[name]) + forms(HOOK_SECRET):
        assert secret not in text, f"{name}: a secret in the output"


async def test_an_ari_call_at_debug_leaks_no_password(tmp_path):
    try:
        fake = FakeAsterisk(users={"adapter": ARI_PASSWORD})
    except FileNotFoundError as exc:
        pytest.skip(f"ARI api-docs not found ({exc})")
    await fake.start()
    try:
        async with webhook_sink() as (url, bodies):
            values = dict(ari_url=fake.url, ari_username="adapter", ari_password=ARI_PASSWORD, sip_enabled=False,
                          call_records_dir=str(tmp_path), events_webhook_url=url, events_webhook_secret=HOOK_SECRET)
            with debug_logs(**values) as logs:
                settings = ops_settings(log_level="debug", **values)
                adapter = Adapter(settings)
                async with running_ops(adapter.core, settings) as ops, adapter:
                    caller = fake.call_in(source=tone(440))
                    await until(lambda: len(fake.heard(caller)) >= 25)
                    fake.caller_hangup(caller)
                    await until(lambda: len(bodies) == 2)
                    _, metrics = await get(f"{Bridge(adapter.core, ops, 0).admin}/metrics")
    finally:
        await fake.stop()
    text = everything(logs, tmp_path, metrics, bodies)
    assert "ari events connected" in logs.getvalue()
    for secret in forms(ARI_PASSWORD, "adapter") + forms(HOOK_SECRET):
        assert secret not in text
