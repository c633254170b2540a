"""Signed webhooks: JSON POSTs of call.started and call.ended to EVENTS_WEBHOOK_URL.

With EVENTS_WEBHOOK_SECRET set, each request carries `X-Sip-To-Ai-Signature: sha256=<hex HMAC-SHA256 of the
exact body>`. Delivery runs on a task of its own: a bounded queue (a full queue drops the new event, counted
and logged), a timeout per attempt, a few retries with backoff on network errors and 5xx. A slow or dead
receiver costs webhooks, never a call.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from bridge.ops.events import CallEvent, CallStarted
from bridge.ops.summary import iso

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Sip-To-Ai-Signature"
QUEUE_SIZE = 1000  # events waiting for delivery; beyond, new ones are dropped
TIMEOUT = 5.0  # seconds per attempt
RETRY_DELAYS = (0.5, 2.0, 5.0)  # before the 2nd, 3rd and 4th attempt


def signature(secret: str, body: bytes) -> str:
    """The header value a receiver recomputes to check the body came from us."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookSender:
    """Subscriber for call.started, sink for call.ended summaries; `run()` delivers until cancelled."""

    def __init__(self, url: str, secret: str = "", redact: Callable[[str], str] = str,
                 queue_size: int = QUEUE_SIZE, timeout: float = TIMEOUT,
                 retry_delays: tuple[float, ...] = RETRY_DELAYS) -> None:
        self.url = url
        self.secret = secret
        self.redact = redact
        self.timeout = timeout
        self.retry_delays = retry_delays
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(queue_size)
        self._dropped_logged = False

    def __call__(self, event: CallEvent) -> None:
        if isinstance(event, CallStarted):
            self.post("call.started", {
                "call_id": event.call_id, "ingress": event.ingress, "vendor": event.vendor, "model": event.model,
                "caller": {"from": event.caller, "to": event.callee, "metadata": dict(event.metadata)},
                "started_at": iso(event.at),
            })

    def call_ended(self, summary: Mapping[str, Any]) -> None:
        self.post("call.ended", summary)

    def post(self, name: str, fields: Mapping[str, Any]) -> None:
        """Queue one event; never blocks (a full queue drops it, counted and logged)."""
        body = self.redact(json.dumps({"event": name, **fields}, ensure_ascii=False)).encode()
        try:
            self._queue.put_nowait((name, body))
        except asyncio.QueueFull:
            self.counts[name, "dropped"] += 1
            (log.debug if self._dropped_logged else log.warning)(
                "! webhook queue full (%d): %s dropped", self._queue.maxsize, name)
            self._dropped_logged = True

    async def run(self) -> None:
        """Deliver queued events one at a time, until cancelled."""
        async with aiohttp.ClientSession() as http:
            while True:
                name, body = await self._queue.get()
                try:
                    self.counts[name, "delivered" if await self._deliver(http, name, body) else "failed"] += 1
                finally:
                    self._queue.task_done()

    async def idle(self) -> None:
        """Return once every queued event has been delivered or given up."""
        await self._queue.join()

    async def _deliver(self, http: aiohttp.ClientSession, name: str, body: bytes) -> bool:
        headers = {"Content-Type": "application/json"}
        if self.secret:
            headers[SIGNATURE_HEADER] = signature(self.secret, body)
        why = ""
        for attempt, delay in enumerate((0.0, *self.retry_delays)):
            await asyncio.sleep(delay)
            try:
                async with http.post(self.url, data=body, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                    if resp.status < 300:
                        return True
                    why = f"HTTP {resp.status}"
                    if resp.status < 500 and resp.status not in (408, 429):
                        break  # the receiver rejects this body: retrying will not help
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                why = type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            log.debug("! webhook %s attempt %d: %s", name, attempt + 1, why)
        log.warning("! webhook %s not delivered: %s", name, why)
        return False
