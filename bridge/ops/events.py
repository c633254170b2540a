"""The stream of call events the core publishes, and the bus that hands them to subscribers.

Events are small frozen dataclasses published at lifecycle points (never per packet). A subscriber is a plain
callable that must return at once (it queues work for a task or a thread of its own); one that raises is
logged once and counted, and the call that published never notices.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CallStarted:
    """The core accepted a call (its agent is about to connect). `at` is wall-clock time (epoch seconds)."""

    call_id: str
    ingress: str
    vendor: str
    model: str
    caller: str
    callee: str
    metadata: Mapping[str, str]
    codec: str
    at: float


@dataclass(frozen=True)
class CallAnswered:
    """The agent is connected and media flows: `setup_seconds` since CallStarted, of which `connect_seconds`
    were the vendor's."""

    call_id: str
    ingress: str
    vendor: str
    setup_seconds: float
    connect_seconds: float
    at: float


@dataclass(frozen=True)
class CallRefused:
    """A call that never started: `outcome` is refused (admission), vendor_refused, no_port, ..."""

    ingress: str
    vendor: str
    outcome: str
    reason: str
    call_id: str = ""


@dataclass(frozen=True)
class TranscriptLine:
    """Who said what, `offset` seconds after the call started."""

    call_id: str
    role: str
    text: str
    offset: float


@dataclass(frozen=True)
class ToolCalled:
    """The agent called a tool (end_call, transfer_call, ...) with `arguments`; `outcome` is how the bridge
    answered: ok (a built-in), unavailable (declared in the prompt file, nothing runs it), unknown (undeclared)."""

    call_id: str
    vendor: str
    name: str
    arguments: Mapping[str, Any]
    outcome: str
    offset: float


@dataclass(frozen=True)
class BargeIn:
    """The caller interrupted the agent: `dropped_ms` of queued agent audio were never heard."""

    call_id: str
    vendor: str
    dropped_ms: int
    offset: float


@dataclass(frozen=True)
class VendorReconnected:
    """The agent's vendor connection was re-established: after a drop (`reason` dropped) or a goAway (goaway)."""

    call_id: str
    vendor: str
    offset: float
    reason: str = "dropped"


@dataclass(frozen=True)
class AgentLatency:
    """First agent audio of a reply in -> the clock tick that sends its first frame (bridge-added, downlink)."""

    call_id: str
    vendor: str
    seconds: float


@dataclass(frozen=True)
class UplinkLatency:
    """A sampled caller frame: into the agent (RTP in) -> out on the vendor's socket (bridge-added, uplink)."""

    call_id: str
    vendor: str
    seconds: float


@dataclass(frozen=True)
class CallEnded:
    """The call is over and everything is released. `outcome` is completed, vendor_error, media_error,
    rtp_timeout (no media from the caller, RTP_TIMEOUT_SEC), session_expired (SIP session timer, RFC 4028), ...;
    `rtp` holds the call's packet counters."""

    call_id: str
    ingress: str
    vendor: str
    outcome: str
    reason: str
    at: float
    duration: float
    rtp: Mapping[str, int] = field(default_factory=dict)


CallEvent = (CallStarted | CallAnswered | CallRefused | TranscriptLine | ToolCalled | BargeIn | VendorReconnected
             | AgentLatency | UplinkLatency | CallEnded)
Subscriber = Callable[[CallEvent], None]


class EventBus:
    """Hands every published event to every subscriber, in subscription order; never raises to the publisher."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self.failures = 0

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def publish(self, event: CallEvent) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception:  # a broken subscriber costs its own work, never the call's
                self.failures += 1
                if self.failures == 1 or self.failures % 1000 == 0:
                    log.exception("! event subscriber %r failed on %s (%d failures so far)",
                                  subscriber, type(event).__name__, self.failures)
