"""bridge.ops.webhooks: signed POSTs, retries, a hanging or failing receiver, a bounded queue."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json

from aiohttp import web

from bridge.ops.webhooks import SIGNATURE_HEADER, WebhookSender


@contextlib.asynccontextmanager
async def receiver(handler):
    app = web.Application()
    app.router.add_post("/hook", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}/hook"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def running(sender: WebhookSender):
    task = asyncio.create_task(sender.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(predicate, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_the_signature_is_the_hmac_of_the_exact_body():
    got: list[tuple[bytes, str]] = []

    async def handler(request: web.Request) -> web.Response:
        got.append((await request.read(), request.headers.get(SIGNATURE_HEADER, "")))
        return web.Response(status=204)

    async with receiver(handler) as url:
        sender = WebhookSender(url, secret="s3cret-hook")
        async with running(sender):
            sender.post("call.ended", {"call_id": "c1", "transcript": [{"role": "caller", "text": "héllo"}]})
            await until(lambda: sender.counts["call.ended", "delivered"] == 1)
    body, header = got[0]
    assert header == "sha256=" + hmac.new(b"s3cret-hook", body, hashlib.sha256).hexdigest()
    assert json.loads(body) == {"event": "call.ended", "call_id": "c1",
                                "transcript": [{"role": "caller", "text": "héllo"}]}


async def test_a_500_is_retried_then_counted_failed():
    attempts = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal attempts
        attempts += 1
        return web.Response(status=500)

    async with receiver(handler) as url:
        sender = WebhookSender(url, retry_delays=(0.01, 0.01))
        async with running(sender):
            sender.post("call.started", {"call_id": "c"})
            await until(lambda: sender.counts["call.started", "failed"] == 1)
    assert attempts == 3 and SIGNATURE_HEADER  # unsigned without a secret


async def test_a_hanging_receiver_times_out_and_the_queue_stays_bounded():
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        await release.wait()  # hangs until the test is over
        return web.Response()

    async with receiver(handler) as url:
        sender = WebhookSender(url, queue_size=5, timeout=0.2, retry_delays=())
        async with running(sender):
            for n in range(20):
                sender.post("call.started", {"call_id": f"c{n}"})  # returns at once however slow the receiver
            assert sender.counts["call.started", "dropped"] == 15
            await until(lambda: sender.counts["call.started", "failed"] >= 1)
        release.set()
