"""The call: one media leg to one agent, run as one TaskGroup; and the MediaCore that creates calls.

Uplink: RTP datagram -> RtpReceiver -> converter -> agent.send_audio (which queues: no task wake-up per packet).
Downlink: agent events -> converter -> Playout; the shared clock sends one frame per tick.
Nothing here knows which PBX a call came from: ingresses hand in a CallInfo and a MediaLeg and get back
the local media address; they implement CallControl for hang-up and transfer.

Every ingress takes a call through the same steps, in MediaCore.serve_call, and speaks only its protocol's words
around them. Admission (`MediaCore.admit()`) comes first, at each protocol's own moment: SIP asks in the UAS
before an INVITE becomes a call (the UAS answers the 503 itself), ARI and ESL before they answer the channel (a
refused caller goes back to the dialplan unanswered).

Operations: the core publishes call events on `MediaCore.events` at lifecycle points (started, answered,
transcript line, tool call, barge-in, reconnect, ended) and keeps plain counters that a metrics collector
reads when scraped; whoever subscribes (bridge/ops) is never known here, and never per packet.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

from bridge.clock import TICK, SharedClock
from bridge.codec import convert
from bridge.config import Settings
from bridge.errors import AgentError, AgentRefused, NoPortAvailable
from bridge.listen import ConnectionCap
from bridge.media import FRAME_MS, Address, CallControl, CallInfo, Codec, MediaLeg
from bridge.ops import events as ev
from bridge.rtp.endpoint import PortPool, RtpEndpoint
from bridge.rtp.playout import Playout
from bridge.rtp.session import Audio, Dtmf, Inactivity, RtpStats
from bridge.stream import StreamEndpoint
from bridge.vendors import registry
from bridge.vendors.base import (
    Agent,
    AgentAudio,
    AgentClosed,
    AgentContext,
    AgentInterrupted,
    AgentReconnected,
    AgentTurnEnd,
    HangupRequest,
    ToolCall,
    Transcript,
    TransferRequest,
    UplinkLatency,
)

log = logging.getLogger("bridge.call")

DRAIN_LIMIT = 30.0  # seconds of goodbye audio an end_call waits for at most
RELEASED_STREAMS_KEPT = 1000  # ids remembered after their call ended unconnected (far more than connect races need)
CLEANUP_TIMEOUT = 5.0  # seconds each release step may take
MEDIA_CHECK_INTERVAL = 1.0  # seconds between looks at a call's receive counter (RTP_TIMEOUT_SEC)
DEAD_PEER_HANGUP_WAIT = 2.0  # seconds an RTP-timeout hang-up waits for its answer (a dead peer sends none)
# What makes create_call a refusal rather than a failure: the vendor said no (or never connected), the RTP port
# range is exhausted, or the RTP socket could not be bound (e.g. MEDIA_HOST is not an address of this host).
REFUSALS = (AgentError, NoPortAvailable, OSError)


class CallLog(logging.LoggerAdapter):
    """Prefixes the call id (text logs) and sets `call_id` on the record (JSON logs)."""

    def process(self, msg, kwargs):  # type: ignore[no-untyped-def]
        kwargs["extra"] = {**self.extra, **kwargs.get("extra", {})}
        return f"[{self.extra['call_id']}] {msg}", kwargs


class MediaTap(Protocol):
    """Gets a call's audio on one timeline (a recording): caller payloads, and every frame the caller hears."""

    def caller(self, payload: bytes, sequence: int) -> None: ...

    def heard(self, frame: bytes) -> None: ...

    def close(self) -> None: ...


@dataclasses.dataclass
class Totals(RtpStats):
    """The counters of every ended call, for metrics (live calls are added at scrape time)."""

    playout_dropped: int = 0

    def add_call(self, stats: RtpStats, playout_dropped: int) -> None:
        self.add(stats)
        self.playout_dropped += playout_dropped


class Call:
    """One call's media and agent. Create through MediaCore.create_call, then `await run(control)`."""

    def __init__(self, core: MediaCore, info: CallInfo, leg: MediaLeg, log_: logging.LoggerAdapter) -> None:
        self.core = core
        self.info = info
        self.log = log_
        self.playout = Playout(leg.format.silence_frame, core.settings.playout_max_seconds)
        endpoint = StreamEndpoint if leg.stream else RtpEndpoint
        self.endpoint: RtpEndpoint | StreamEndpoint = endpoint(leg, self.playout, self._on_media)
        self.stream_id = ""  # the id its media connection will present (MediaCore.expect_stream)
        self.released = asyncio.Event()  # set once aclose() has released everything
        self._ended = asyncio.Event()
        self.reason = ""
        self._closed = False
        self.agent: Agent | None = None
        self._to_agent: convert.Converter = convert._identity
        self._from_agent: convert.Converter = convert._identity
        self.vendor = core.settings.ai_vendor
        self.outcome = "completed"
        self.t0 = asyncio.get_running_loop().time()
        self.started_at = time.time()
        self.tap: MediaTap | None = None
        self.connect_seconds = 0.0

    @property
    def call_id(self) -> str:
        return self.info.call_id

    @property
    def local_address(self) -> Address:
        return self.endpoint.local_address

    # -- what ingresses call ----------------------------------------------------------------------------------

    def update_media(self, leg: MediaLeg) -> None:
        """The remote media moved or its codec changed (re-INVITE, learned address)."""
        if leg.format != self.endpoint.leg.format and self.agent is not None:
            self._bind_converters(leg)
            self.playout.silence_frame = leg.format.silence_frame
        self.endpoint.retarget(leg)

    def set_sending(self, on: bool) -> None:
        """Hold (the peer signalled sendonly/inactive) stops our RTP; unhold resumes it."""
        self.endpoint.sending = on

    def dtmf(self, key: str) -> None:
        """Out-of-band DTMF (ARI, ESL)."""
        self._on_media(Dtmf(key))

    def end(self, reason: str, outcome: str = "completed") -> None:
        """The call is over (PBX hang-up, or `outcome` such as timeout); run() returns once everything is released."""
        if not self._ended.is_set():
            self.reason = reason
            self.outcome = outcome
            self._ended.set()

    def offset(self) -> float:
        """Seconds since the call reached the core."""
        return asyncio.get_running_loop().time() - self.t0

    # -- lifecycle --------------------------------------------------------------------------------------------

    async def _start(self, agent_factory: Callable[[AgentContext], Agent]) -> None:
        info, settings = self.info, self.core.settings
        self.core.events.publish(ev.CallStarted(
            info.call_id, info.ingress, self.vendor, model_of(settings), info.caller, info.callee, info.metadata,
            self.endpoint.leg.codec.name, self.started_at))
        if isinstance(self.endpoint, RtpEndpoint):
            await self.endpoint.open(self.core.ports.bind(self.core.settings.media_host))
        if self.core.tap_factory is not None and self.endpoint.leg.linear_rate:
            self.log.info("= not recorded: recordings are G.711 and this leg is %s", self.endpoint.leg.format)
        elif self.core.tap_factory is not None:
            self.tap = self.core.tap_factory(self.call_id, self.endpoint.leg.codec)
            self.endpoint.tap = self.tap.heard if self.tap is not None else None
        leg = self.endpoint.leg
        ctx = AgentContext(self.info, leg.codec, self.core.settings, self.playout.played_ms, self.log,
                           lambda: self.core.draining, leg.format)
        self.agent = agent_factory(ctx)
        self._bind_converters(self.endpoint.leg)
        limit = self.core.settings.ai_connection_timeout_sec + 1  # the vendor runner has its own, tighter limit
        connecting = self.offset()
        try:
            async with asyncio.timeout(limit):
                await self.agent.connect()
        except TimeoutError:
            raise AgentRefused(f"the agent did not connect within {limit:g} s") from None
        self.connect_seconds = self.offset() - connecting

    def _bind_converters(self, leg: MediaLeg) -> None:
        assert self.agent is not None
        self._to_agent = convert.converter(leg.format, self.agent.input_format)
        self._from_agent = convert.converter(self.agent.output_format, leg.format)

    async def run(self, control: CallControl) -> str:
        """Carry the call until either side ends it; release everything; return the reason (logged once)."""
        self.core.clock.register(self.endpoint)
        try:
            async with asyncio.TaskGroup() as tg:
                agent_events = tg.create_task(self._pump_agent(control))
                watch = tg.create_task(self._watch_media(control))
                await self._ended.wait()
                agent_events.cancel()
                watch.cancel()
        except* AgentError as eg:
            self.end(f"agent failed: {eg.exceptions[0]}", "vendor_error")
        except* OSError as eg:
            self.end(f"media failed: {eg.exceptions[0]}", "media_error")
        finally:
            await self.aclose()
        return self.reason

    async def aclose(self) -> None:
        """Release the RTP port, the clock slot and the agent session. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.released.set()
        stats = self.endpoint.stats
        if self.core.calls.get(self.call_id) is self:
            del self.core.calls[self.call_id]
        self.core.totals.add_call(stats, self.playout.dropped_bytes)  # in the same step: a scrape never counts twice
        self.core.forget_stream(self.stream_id)
        self.core.clock.unregister(self.endpoint)
        if self.tap is not None:
            self.endpoint.tap = None
            self.tap.close()
        self.endpoint.close()
        if isinstance(self.endpoint, RtpEndpoint):
            self.core.ports.release(self.local_address[1])
        try:
            if self.agent is not None:
                try:
                    async with asyncio.timeout(CLEANUP_TIMEOUT):
                        await self.agent.aclose()
                except Exception as exc:  # the call is over either way; say why the agent did not close cleanly
                    self.log.warning("! agent did not close cleanly: %r", exc)
        finally:  # cancelled while closing the agent (shutdown): the call still ends on the record
            self.log.info(
                "x call ended: %s (rtp in %d, out %d, malformed %d, foreign %d)",
                self.reason or "released", stats.received, stats.sent, stats.malformed, stats.foreign,
            )
            self.core.events.publish(ev.CallEnded(
                self.call_id, self.info.ingress, self.vendor, self.outcome, self.reason or "released", time.time(),
                self.offset(), dataclasses.asdict(stats)))

    # -- the pumps --------------------------------------------------------------------------------------------

    def _on_media(self, media: Audio | Dtmf) -> None:
        """The uplink, run from the RTP receive callback: caller audio and key presses straight to the agent."""
        self.core.clock.poll()  # a tick due now goes out before this burst of receive callbacks is over
        if self.agent is None or self._ended.is_set():
            return
        try:
            if isinstance(media, Audio):
                self.agent.send_audio(self._to_agent(media.payload))
                if self.tap is not None:
                    self.tap.caller(media.payload, media.sequence)
            else:
                self.log.info("< dtmf %s", media.key)
                self.agent.send_dtmf(media.key)
        except Exception as exc:  # a broken agent ends its own call, never the RTP socket's other work
            self.log.exception("! uplink failed")
            self.end(f"uplink failed: {exc!r}", "error")

    async def _pump_agent(self, control: CallControl) -> None:
        assert self.agent is not None
        loop, publish = asyncio.get_running_loop(), self.core.events.publish
        async for event in self.agent.events():
            self.core.clock.poll()  # and between vendor messages (150 OpenAI calls: ticks > 0.5 ms late 11 % -> 5 %)
            match event:
                case AgentAudio(data=data, item_id=item_id):
                    if not self.playout:  # a reply starts: how long until its first frame leaves
                        arrived = loop.time()
                        self.playout.push(self._from_agent(data), item_id)
                        due = self.core.clock.due
                        publish(ev.AgentLatency(self.call_id, self.vendor, max(0.0, due + (
                            TICK if due < loop.time() else 0.0) - arrived)))
                    else:
                        self.playout.push(self._from_agent(data), item_id)
                case AgentTurnEnd():
                    self.playout.end_turn()
                case AgentInterrupted():
                    dropped = self.playout.clear()
                    dropped_ms = dropped * 1000 // self.playout.bytes_per_second
                    self.log.info("= barge-in: dropped %d ms of queued audio", dropped_ms)
                    publish(ev.BargeIn(self.call_id, self.vendor, dropped_ms, self.offset()))
                case Transcript(role=role, text=text):
                    self.log.info("%s %s: %s", "<" if role == "caller" else ">", role, text)
                    publish(ev.TranscriptLine(self.call_id, role, text, self.offset()))
                case ToolCall(name=name, arguments=arguments, outcome=outcome):
                    self.log.info("> tool call %s (%s)", name, outcome)
                    publish(ev.ToolCalled(self.call_id, self.vendor, name, arguments, outcome, self.offset()))
                case UplinkLatency(seconds=seconds):
                    publish(ev.UplinkLatency(self.call_id, self.vendor, seconds))
                case AgentReconnected(reason=reason):
                    publish(ev.VendorReconnected(self.call_id, self.vendor, self.offset(), reason))
                case HangupRequest(reason=reason):
                    await self._drain()
                    self.log.info("> agent hangs up: %s", reason)
                    await control.hangup(reason)
                    self.end(f"agent hung up: {reason}")
                    return
                case TransferRequest(destination=destination):
                    await self._drain()
                    self.log.info("> agent transfers to %r", destination)
                    await control.transfer(destination)
                    self.end(f"transferred to {destination or 'default'}", "transferred")
                    return
                case AgentClosed(reason=reason, error=error):
                    (self.log.warning if error else self.log.info)("x agent closed: %s", reason)
                    await control.hangup(reason)
                    self.end(f"agent closed: {reason}", "vendor_error" if error else "completed")
                    return
        self.end("agent events ended")

    async def _watch_media(self, control: CallControl) -> None:
        """End the call once the caller's media has stopped for RTP_TIMEOUT_SEC (RTP_HOLD_TIMEOUT_SEC on hold).

        A dead peer (a PBX that crashed, a phone that lost its network) never sends BYE; its RTP stopping is what
        tells. Checked once a second from the receive counter: nothing added to the 20 ms path. Hold is what the
        caller's signalling said (SIP sendonly/inactive or c=0.0.0.0: we stop sending then, set_sending(False)).
        """
        settings = self.core.settings
        loop = asyncio.get_running_loop()
        watch = Inactivity(settings.rtp_timeout_sec, settings.rtp_hold_timeout_sec, self.endpoint.stats.received,
                           loop.time(), not self.endpoint.sending)
        while True:
            await asyncio.sleep(MEDIA_CHECK_INTERVAL)
            limit = watch.expired(loop.time(), self.endpoint.stats.received, not self.endpoint.sending)
            if limit is not None:
                break
        reason = f"rtp timeout: no media from the caller for {limit:g} s{' (on hold)' if watch.held else ''}"
        self.log.warning("! %s: hanging up", reason)
        with contextlib.suppress(TimeoutError):  # a dead peer never answers: the call ends regardless (SIP's BYE
            async with asyncio.timeout(DEAD_PEER_HANGUP_WAIT):  # goes on being retransmitted by its transaction)
                await control.hangup(reason)
        self.end(reason, "rtp_timeout")

    async def _drain(self) -> None:
        """Let the queued goodbye audio reach the caller (bounded)."""
        self.playout.end_turn()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_LIMIT):
                while len(self.playout):
                    await asyncio.sleep(FRAME_MS / 1000)
        await asyncio.sleep(FRAME_MS / 1000)  # the last frame leaves on the next tick


class MediaCore:
    """Creates calls, owns the shared clock and the RTP port pool, and knows every live call."""

    def __init__(self, settings: Settings, agent_factory: Callable[[AgentContext], Agent] | None = None) -> None:
        self.settings = settings
        self.clock = SharedClock()
        self.ports = PortPool(settings.rtp_port_min, settings.rtp_port_max)
        self.calls: dict[str, Call] = {}
        self.draining = False
        self._agent_factory = agent_factory
        self.events = ev.EventBus()
        self.totals = Totals()
        self.links: dict[str, Callable[[], bool]] = {}  # configured PBX control links (ARI, ESL inbound): up?
        self.listeners: dict[str, ConnectionCap] = {}  # every TCP listener's connection cap, by name (metrics)
        self.datagrams_denied: collections.Counter[str] = collections.Counter()  # UDP listeners' sources refused
        self.tap_factory: Callable[[str, Codec], MediaTap | None] | None = None
        self._awaiting_stream: dict[str, Call] = {}
        self._released_streams: dict[str, None] = {}  # ids of calls gone before their connection came (bounded)

    def expect_stream(self, stream_id: str, call: Call) -> None:
        """`call`'s media will arrive as a connection presenting `stream_id` (see bridge/stream.py)."""
        call.stream_id = stream_id
        self._awaiting_stream[stream_id] = call

    def claim_stream(self, stream_id: str) -> Call | Literal[False] | None:
        """The call waiting for the connection that presents `stream_id`, once; False when that call has already
        ended (the connection is a leftover: close it, start nothing); None when no call expects it."""
        if stream_id in self._released_streams:
            return False
        return self._awaiting_stream.pop(stream_id, None)

    def forget_stream(self, stream_id: str) -> None:
        """The call named `stream_id` is over: a connection that still presents it is a leftover."""
        if self._awaiting_stream.pop(stream_id, None) is not None:
            self._released_streams[stream_id] = None
            while len(self._released_streams) > RELEASED_STREAMS_KEPT:
                del self._released_streams[next(iter(self._released_streams))]

    def admit(self, ingress: str = "") -> str | None:
        """None when a new call may start, else the reason it may not. With `ingress` (a call is at the door, not
        a mere question), a refusal is published as CallRefused."""
        reason = None
        if self.draining:
            reason = "shutting down"
        elif len(self.calls) >= self.settings.max_calls:
            reason = f"max calls ({self.settings.max_calls}) reached"
        if reason is not None and ingress:
            self.refused(ingress, reason)
        return reason

    def link(self, name: str, up: Callable[[], bool]) -> None:
        """An ingress's control link to its PBX, and how to tell whether it is up now (readiness)."""
        self.links[name] = up

    def not_ready(self) -> str | None:
        """None when a new call would be taken, else why not (draining, MAX_CALLS, a control link down)."""
        reason = self.admit()
        if reason is None:
            down = sorted(name for name, up in self.links.items() if not up())
            reason = f"{', '.join(down)} control link down" if down else None
        return reason

    def refused(self, ingress: str, reason: str, outcome: str = "refused") -> None:
        """A call was turned away before it reached create_call (admission: draining, MAX_CALLS)."""
        self.events.publish(ev.CallRefused(ingress, self.settings.ai_vendor, outcome, reason))

    async def create_call(self, info: CallInfo, leg: MediaLeg) -> Call:
        """Bind the call's RTP and connect its agent.

        Raises:
            AgentRefused: the vendor refused the session (nothing is left allocated).
            NoPortAvailable: the RTP port range is exhausted.
        """
        call = Call(self, info, leg, CallLog(log, {"call_id": info.call_id}))
        self.calls[info.call_id] = call
        try:
            await call._start(self._agent_factory or registry.create_agent)
        except BaseException as exc:
            call.reason = call.reason or (str(exc) if isinstance(exc, AgentRefused) else "agent refused")
            call.outcome = _OUTCOMES.get(type(exc), "error")
            await call.aclose()
            raise
        media = "rtp {}:{}".format(*call.local_address) if not leg.stream else "media on the ingress's connection"
        call.log.info("= call from %r via %s, %s", info.caller, info.ingress, media)
        setup = call.offset()
        self.events.publish(ev.CallAnswered(call.call_id, info.ingress, call.vendor, setup, call.connect_seconds,
                                            time.time()))
        return call

    async def serve_call(self, info: CallInfo, leg: MediaLeg, control: CallControl, *,
                         refuse: Callable[[Exception], Awaitable[None]],
                         connect: Callable[[Call], Awaitable[None]],
                         gone: Callable[[], str]) -> str | None:
        """One admitted call's whole life: create it, connect its media, run it, release it on every exit path.

        Args:
            refuse: the ingress's words for a call that could not be created (one of REFUSALS): SIP 503,
                ARI/ESL back to the dialplan saying why.
            connect: points the PBX's media at `call.local_address` and learns the PBX's own (SIP 200 OK with the
                SDP answer, ARI ExternalMedia and a bridge, ESL `unicast`); from here the ingress knows the call.
            gone: why the PBX side already ended the call ("" while it is up); asked after each setup step, since
                a caller may hang up while the agent connects or the media is set up.

        Returns:
            Why the call ended, or None when it was refused.

        Raises:
            Whatever `connect` raises, after the call is released: the ingress's protocol decides what the
            caller hears then. CancelledError (CANCEL, shutdown) likewise.
        """
        try:
            call = await self.create_call(info, leg)
        except REFUSALS as exc:
            await refuse(exc)
            return None
        try:
            if not gone():
                await connect(call)
            if why := gone():
                call.end(why)
                return call.reason
            return await call.run(control)
        except Exception as exc:
            if not call.reason:
                call.reason, call.outcome = f"setup failed: {exc}", "error"
            raise
        finally:
            await call.aclose()

    async def wait_idle(self, timeout: float) -> None:
        """Wait until no call is live, or `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.calls:
                    await asyncio.sleep(0.1)


_OUTCOMES = {AgentRefused: "vendor_refused", NoPortAvailable: "no_port", asyncio.CancelledError: "cancelled"}


def model_of(settings: Settings) -> str:
    """The configured model of the agent's vendor, for records (the first of <vendor>_model, _llm_model, ...)."""
    vendor = settings.ai_vendor
    for name in (f"{vendor}_model", f"{vendor}_llm_model", f"{vendor}_openai_deployment"):
        if value := getattr(settings, name, ""):
            return str(value)
    return ""
