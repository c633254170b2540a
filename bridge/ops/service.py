"""Wires the operations side to a media core: who subscribes to its events, and the tasks that serve them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from bridge.config import Settings
from bridge.ops.admin import admin_app, admin_cap, serve_admin
from bridge.ops.logs import Redactor
from bridge.ops.metrics import Metrics
from bridge.ops.records import RecordsWriter
from bridge.ops.summary import Summaries
from bridge.ops.webhooks import WebhookSender

log = logging.getLogger(__name__)


class Ops:
    """Metrics always; records, webhooks and the admin endpoint as the settings say. `run()` until cancelled."""

    def __init__(self, core: Any, settings: Settings) -> None:
        self.settings = settings
        redact = Redactor.for_settings(settings)
        self.records = (RecordsWriter(settings.call_records_dir, settings.call_records, redact)
                        if settings.call_records_dir else None)
        self.webhooks = (WebhookSender(settings.events_webhook_url, settings.events_webhook_secret, redact)
                         if settings.events_webhook_url else None)
        self.metrics = Metrics(core, webhooks=self.webhooks, records=self.records)
        self.admin_address: tuple[str, int] | None = None
        self._started = asyncio.Event()
        core.events.subscribe(self.metrics)
        sinks = []
        if self.records is not None:
            core.events.subscribe(self.records)
            core.tap_factory = self.records.tap
            sinks.append(self.records.write_summary)
        if self.webhooks is not None:
            core.events.subscribe(self.webhooks)
            sinks.append(self.webhooks.call_ended)
        if sinks:
            records = self.records
            core.events.subscribe(Summaries(sinks, records.name if records and records.audio else lambda _: None))
        self._app = admin_app(self.metrics.exposition, core.not_ready)
        self._cap = core.listeners["admin"] = admin_cap()

    def describe(self) -> list[str]:
        s = self.settings
        lines = []
        if s.call_records_dir:
            lines.append(f"records: {s.call_records} in {s.call_records_dir}")
        if s.events_webhook_url:
            signed = "signed" if s.events_webhook_secret else "unsigned (set EVENTS_WEBHOOK_SECRET)"
            lines.append(f"webhooks: {signed}")
        return lines

    async def run(self) -> None:
        """Serve the admin endpoint and deliver webhooks until cancelled; then finish writing records."""
        if self.records is not None:
            try:
                await asyncio.to_thread(Path(self.records.directory).mkdir, parents=True, exist_ok=True)
            except OSError as exc:
                log.error("! CALL_RECORDS_DIR=%s cannot be created (%s): calls go on without records",
                          self.records.directory, exc.strerror)
        try:
            async with asyncio.TaskGroup() as tg:
                if self.settings.admin_listen is not None:
                    tg.create_task(self._serve_admin(*self.settings.admin_listen), name="admin")
                if self.webhooks is not None:
                    tg.create_task(self.webhooks.run(), name="webhooks")
                await asyncio.Event().wait()
        finally:
            if self.records is not None:
                await asyncio.shield(self.records.aclose())

    async def _serve_admin(self, host: str, port: int) -> None:
        try:
            await serve_admin(self._app, host, port, self._cap, self._set_address)
        except OSError as exc:  # another process holds the port: calls matter more than the admin endpoint
            log.error("! ADMIN_LISTEN=%s:%d cannot be served (%s): no /metrics, /health, /ready", host, port,
                      exc.strerror or exc)

    def _set_address(self, address: tuple[str, int]) -> None:
        self.admin_address = address

    async def flush(self, timeout: float) -> None:
        """Give queued webhooks up to `timeout` seconds to go out (at shutdown)."""
        if self.webhooks is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.webhooks.idle()
