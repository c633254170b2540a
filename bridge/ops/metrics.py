"""Prometheus metrics (prefix sip_to_ai_), made with prometheus-client's own registry, types and exposition.

Two kinds of source, so that nothing is paid per packet:
  * scrape-time: a custom collector reads the plain integers the media path keeps anyway (RTP counters of
    every live call plus the totals of ended ones, the shared clock's lateness buckets, playout queues) and the
    counters of the webhook sender and the records writer;
  * event-time: counters and histograms updated from the call event stream (a handful per call).
Labels are of bounded cardinality only: ingress, vendor, outcome, direction, reason. Never a call id or a number.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from bridge.clock import LATENESS_BOUNDS
from bridge.ops.events import (
    AgentLatency,
    BargeIn,
    CallAnswered,
    CallEnded,
    CallEvent,
    CallRefused,
    ToolCalled,
    UplinkLatency,
    VendorReconnected,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SETUP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0)


class Counted(Protocol):
    """What the webhook sender and the records writer expose: plain counters by (kind, result)."""

    counts: collections.Counter[tuple[str, str]]


class Metrics:
    """The process's registry. Subscribe it to the call event stream; serve `exposition()` on /metrics."""

    def __init__(self, core: Any, *, webhooks: Counted | None = None, records: Counted | None = None) -> None:
        disable_created_metrics()  # no *_created series: they double the exposition and no alert uses them
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.calls = Counter("sip_to_ai_calls", "Calls that ended or were refused, by outcome",
                             ["ingress", "vendor", "outcome"], registry=r)
        self.setup = Histogram("sip_to_ai_call_setup_seconds", "From the call reaching the core to media flowing",
                               ["ingress"], buckets=SETUP_BUCKETS, registry=r)
        self.connect = Histogram("sip_to_ai_vendor_connect_seconds", "Time for the vendor session to get ready",
                                 ["vendor"], buckets=SETUP_BUCKETS, registry=r)
        self.reconnects = Counter("sip_to_ai_vendor_reconnects",
                                  "Vendor connections re-established, by reason (dropped, goaway)",
                                  ["vendor", "reason"], registry=r)
        self.tool_calls = Counter("sip_to_ai_tool_calls", "Tool calls of the agent answered, by outcome (ok: a "
                                  "built-in; unavailable: declared, nothing runs it; unknown: undeclared)",
                                  ["vendor", "outcome"], registry=r)
        self.barge_ins = Counter("sip_to_ai_barge_ins", "Times the caller interrupted the agent", ["vendor"],
                                 registry=r)
        self.downlink = Histogram("sip_to_ai_downlink_latency_seconds",
                                  "Bridge-added downlink latency: first agent audio of a reply in -> its first RTP "
                                  "frame's tick", ["vendor"], buckets=LATENCY_BUCKETS, registry=r)
        self.uplink = Histogram("sip_to_ai_uplink_latency_seconds",
                                "Bridge-added uplink latency: a sampled caller frame (one a second) from RTP in to "
                                "its vendor websocket send", ["vendor"], buckets=LATENCY_BUCKETS, registry=r)
        r.register(CoreCollector(core, webhooks, records))

    def __call__(self, event: CallEvent) -> None:
        match event:
            case CallEnded(ingress=ingress, vendor=vendor, outcome=outcome) | CallRefused(
                    ingress=ingress, vendor=vendor, outcome=outcome):
                self.calls.labels(ingress, vendor, outcome).inc()
            case CallAnswered(ingress=ingress, vendor=vendor, setup_seconds=setup, connect_seconds=connect):
                self.setup.labels(ingress).observe(setup)
                self.connect.labels(vendor).observe(connect)
            case BargeIn(vendor=vendor):
                self.barge_ins.labels(vendor).inc()
            case VendorReconnected(vendor=vendor, reason=reason):
                self.reconnects.labels(vendor, reason).inc()
            case ToolCalled(vendor=vendor, outcome=outcome):
                self.tool_calls.labels(vendor, outcome).inc()
            case AgentLatency(vendor=vendor, seconds=seconds):
                self.downlink.labels(vendor).observe(seconds)
            case UplinkLatency(vendor=vendor, seconds=seconds):
                self.uplink.labels(vendor).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class CoreCollector:
    """Reads the media core's own counters at scrape time (the packet path only increments plain integers)."""

    def __init__(self, core: Any, webhooks: Counted | None, records: Counted | None) -> None:
        self.core = core
        self.webhooks = webhooks
        self.records = records

    def describe(self) -> list[Metric]:
        return []  # unchecked: the families depend on the live core

    def collect(self) -> Iterator[Metric]:
        core = self.core
        calls = list(core.calls.values())
        yield from self._calls(calls)
        yield from self._rtp(calls)
        yield from self._clock()
        queued = GaugeMetricFamily("sip_to_ai_playout_queued_seconds",
                                   "Agent audio waiting to be played, summed over live calls")
        queued.add_metric([], sum(len(c.playout) for c in calls) / 8000)
        yield queued
        dropped = CounterMetricFamily("sip_to_ai_playout_overflow_seconds",
                                      "Agent audio dropped because the playout queue was full (PLAYOUT_MAX_SECONDS)")
        dropped.add_metric([], (core.totals.playout_dropped + sum(c.playout.dropped_bytes for c in calls)) / 8000)
        yield dropped
        yield from self._state()
        for name, source, doc in (("webhook_deliveries", self.webhooks, "Webhook POSTs by event and result"),
                                  ("records", self.records, "Per-call record files by kind and result")):
            if source is not None:
                family = CounterMetricFamily(f"sip_to_ai_{name}", doc, labels=["kind", "result"])
                for (kind, result), n in sorted(source.counts.items()):
                    family.add_metric([kind, result], n)
                yield family

    def _calls(self, calls: list[Any]) -> Iterator[Metric]:
        active = GaugeMetricFamily("sip_to_ai_calls_active", "Calls in progress", labels=["ingress", "vendor"])
        for (ingress, vendor), n in sorted(collections.Counter((c.info.ingress, c.vendor) for c in calls).items()):
            active.add_metric([ingress, vendor], n)
        yield active

    def _rtp(self, calls: list[Any]) -> Iterator[Metric]:
        t = self.core.totals
        received, sent = t.received, t.sent
        malformed, foreign, ignored = t.malformed, t.foreign, t.ignored
        for c in calls:
            s = c.endpoint.stats
            received += s.received
            sent += s.sent
            malformed += s.malformed
            foreign += s.foreign
            ignored += s.ignored
        packets = CounterMetricFamily("sip_to_ai_rtp_packets", "RTP packets received from and sent to callers",
                                      labels=["direction"])
        packets.add_metric(["in"], received)
        packets.add_metric(["out"], sent)
        yield packets
        dropped = CounterMetricFamily("sip_to_ai_rtp_dropped", "Datagrams not used, by reason", labels=["reason"])
        dropped.add_metric(["malformed"], malformed)
        dropped.add_metric(["foreign_source"], foreign)
        dropped.add_metric(["unsupported_payload"], ignored)
        dropped.add_metric(["send_error"], self.core.clock.send_errors)
        yield dropped

    def _clock(self) -> Iterator[Metric]:
        clock = self.core.clock
        buckets, cumulative = [], 0
        for bound, n in zip(LATENESS_BOUNDS, clock.late_buckets, strict=False):
            cumulative += n
            buckets.append((repr(bound), cumulative))
        buckets.append(("+Inf", sum(clock.late_buckets)))
        yield HistogramMetricFamily("sip_to_ai_send_lateness_seconds",
                                    "How late each tick of the shared 20 ms clock dispatched its frames",
                                    buckets=buckets, sum_value=clock.late_sum)

    def _state(self) -> Iterator[Metric]:
        draining = GaugeMetricFamily("sip_to_ai_draining", "1 while shutting down (SIGTERM received)")
        draining.add_metric([], 1 if self.core.draining else 0)
        yield draining
        ready = GaugeMetricFamily("sip_to_ai_ready", "1 when a new call would be taken (as /ready)")
        ready.add_metric([], 0 if self.core.not_ready() else 1)
        yield ready
        tasks = GaugeMetricFamily("sip_to_ai_asyncio_tasks", "asyncio tasks alive in the adapter (leak watch)")
        tasks.add_metric([], len(asyncio.all_tasks()))
        yield tasks
        yield from self._listeners()
        links = GaugeMetricFamily("sip_to_ai_control_link_up", "Configured PBX control links (ARI, ESL inbound)",
                                  labels=["link"])
        for name, up in sorted(self.core.links.items()):
            links.add_metric([name], 1 if up() else 0)
        yield links

    def _listeners(self) -> Iterator[Metric]:
        open_ = GaugeMetricFamily("sip_to_ai_connections_open", "Accepted TCP connections open, by listener",
                                  labels=["listener"])
        dropped = CounterMetricFamily("sip_to_ai_connections_dropped", "Connections a listener closed: at its cap, a "
                                      "new one at accept (limit) or the oldest for a new one (evicted); from outside "
                                      "its allowed networks (not_allowed); a SIP/TCP message late (timeout)",
                                      labels=["listener", "reason"])
        for name, cap in sorted(self.core.listeners.items()):
            open_.add_metric([name], cap.open)
            if cap.at_cap == "refuse":
                dropped.add_metric([name, "limit"], cap.refused)
            else:
                dropped.add_metric([name, "evicted"], cap.evicted)
            dropped.add_metric([name, "not_allowed"], cap.denied)
            dropped.add_metric([name, "timeout"], cap.timed_out)
        yield open_
        yield dropped
        denied = CounterMetricFamily("sip_to_ai_datagrams_denied", "UDP datagrams dropped as their source is outside "
                                     "the listener's allowed networks (SIP_ALLOWED_CIDRS)", labels=["listener"])
        for name, n in sorted(self.core.datagrams_denied.items()):
            denied.add_metric([name], n)
        yield denied
