"""The admin HTTP endpoint (ADMIN_LISTEN): /metrics, /health, /ready, on aiohttp.

/health is 200 whenever the event loop answers. /ready is 200 when a new call would be taken, else 503 with
the reason (draining, MAX_CALLS reached, a configured ARI or ESL-inbound control link down).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web

from bridge.listen import ADMIN_CONNECTIONS, ConnectionCap
from bridge.ops.metrics import CONTENT_TYPE

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 10.0  # seconds a connection may go without completing a request (aiohttp's default: an hour)


def admin_app(exposition: Callable[[], bytes], not_ready: Callable[[], str | None]) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=exposition(), headers={"Content-Type": CONTENT_TYPE})

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def ready(request: web.Request) -> web.Response:
        reason = not_ready()
        if reason is None:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready: {reason}\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    return app


def admin_cap() -> ConnectionCap:
    """ADMIN_CONNECTIONS at once; beyond, the oldest goes, so that idle clients cannot lock out a scrape."""
    return ConnectionCap("admin", ADMIN_CONNECTIONS, at_cap="evict")


async def serve_admin(app: web.Application, host: str, port: int, cap: ConnectionCap,
                      started: Callable[[tuple[str, int]], None] | None = None) -> None:
    """Serve `app` on host:port under `cap` until cancelled. `started` gets the bound address (port 0 picks one)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0,
                           keepalive_timeout=IDLE_TIMEOUT)  # idle, half-open and trickling clients closed
    async with cap.serve_web(runner, host, port) as address:
        log.info("admin: http://%s:%d/metrics /health /ready", *address)
        if started is not None:
            started(address)
        await asyncio.Event().wait()
