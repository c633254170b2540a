"""The SIP listener at the edge: asyncio UDP (and TCP) feeding uas.py, the source ACL, and one task per call.

The datagram callback only feeds the UAS, dispatches its events, flushes its output and re-arms its timer.
Sources outside SIP_ALLOWED_CIDRS are dropped without an answer (and counted): a 403 would tell a scanner that
something listens here, and a dropped INVITE costs nothing, while an accepted one spends API money.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket

from bridge.call import Call, MediaCore
from bridge.config import Settings
from bridge.listen import ConnectionCap
from bridge.media import Address, CallInfo, LegTransfer, MediaLeg
from bridge.sip.events import (
    CallCancelled,
    CallEnded,
    CallRefused,
    DtmfReceived,
    Event,
    IncomingCall,
    MediaChanged,
    RequestDone,
)
from bridge.sip.message import MAX_MESSAGE, SipParseError, next_stream_message
from bridge.sip.transaction import TIMEOUT
from bridge.sip.uas import Uas, UasConfig

log = logging.getLogger(__name__)

TRANSFER_GRACE = 10.0  # seconds we wait for the peer's BYE after a REFER it accepted, before our own BYE
MAX_STREAM_BUFFER = 2 * MAX_MESSAGE  # bytes a TCP peer may have buffered without completing a message
MAX_STREAMS = 256  # SIP/TCP connections at once; PBXs and proxies hold a few each, beyond is a flood
MESSAGE_TIMEOUT = 32.0  # seconds (64 x T1) for a new connection's first message, and for any message begun


class SipServer:
    """One SIP listener (UDP, TCP or both on the same port) and the calls it carries."""

    def __init__(self, core: MediaCore, settings: Settings, leg_transfer: LegTransfer | None = None) -> None:
        self.core = core
        self.settings = settings
        self.leg_transfer = leg_transfer  # tried before REFER (the ESL inbound control, when ESL_INBOUND is set)
        self.uas: Uas | None = None
        self.address: Address = (settings.sip_domain, settings.sip_port)
        self.streams = ConnectionCap("sip", MAX_STREAMS)  # SIP/TCP connections (denied, timed out: counted there)
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._streams: dict[Address, asyncio.Transport] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._calls: dict[str, Call] = {}
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._waiters: dict[tuple[str, str], asyncio.Future[int]] = {}
        self._ended: dict[str, asyncio.Event] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Bind, signal `ready`, serve until cancelled; live calls get BYE on the way out."""
        await self._bind()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                log.info("= SIP listening on %s %s:%d", self.settings.sip_transport_type, *self.address)
                if ready is not None:
                    ready.set()
                await asyncio.Event().wait()
        finally:
            self.close()

    async def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.settings.sip_domain, self.settings.sip_port
        host = "127.0.0.1" if host == "localhost" else host
        kind = self.settings.sip_transport_type
        if kind in ("udp", "both"):
            self._udp, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(self), local_addr=(host, port))
            port = self._udp.get_extra_info("sockname")[1]
        if kind in ("tcp", "both"):
            self.core.listeners["sip"] = self.streams
            self._tcp = await self.streams.listen(lambda: _Stream(self), host, port)
            port = self._tcp.sockets[0].getsockname()[1]
        self.address = (host, port)
        transport = "UDP" if self._udp else "TCP"
        self.uas = Uas(UasConfig(advertised_host(host, self.settings.media_address), port, transport,
                                 ringing=self.settings.sip_ringing, force_rport=self.settings.sip_force_rport,
                                 min_se=self.settings.sip_session_min_se))

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for stream in list(self._streams.values()):
            stream.close()

    # -- feeding the core --------------------------------------------------------------------------------------

    def allowed(self, source: Address) -> bool:
        try:
            ip = ipaddress.ip_address(source[0])
        except ValueError:
            return False
        return any(ip in net for net in self.settings.sip_allowed_cidrs)

    def feed(self, data: bytes, source: Address, reliable: bool = False) -> None:
        """One message in: admission, the UAS, then its events and output."""
        assert self.uas is not None
        if not self.allowed(source):
            self.core.datagrams_denied["sip"] += 1  # UDP: a SIP/TCP peer from outside is closed as it connects
            log.debug("! SIP from %s:%d dropped: not in SIP_ALLOWED_CIDRS", *source)
            return
        self.uas.unavailable = self._unavailable()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("< %s:%d %s", *source, data.split(b"\r\n", 1)[0][:120].decode("utf-8", "replace"))
        self.uas.receive(data, source, asyncio.get_running_loop().time(), reliable)
        self._pump()

    def _unavailable(self) -> str | None:
        reason = self.core.admit()
        setting_up = sum(1 for call_id in self._starting if call_id not in self.core.calls)  # not counted twice
        if reason is None and len(self.core.calls) + setting_up >= self.settings.max_calls:
            reason = f"max calls ({self.settings.max_calls}) reached"
        return reason

    def _on_timer(self) -> None:
        assert self.uas is not None
        self._timer = self._timer_at = None
        self.uas.handle_timer(asyncio.get_running_loop().time())
        self._pump()

    def _pump(self) -> None:
        assert self.uas is not None
        for event in self.uas.events():
            self._dispatch(event)
        self._flush()
        deadline = self.uas.next_deadline()
        if deadline != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = None if deadline is None else asyncio.get_running_loop().call_at(deadline, self._on_timer)

    def _flush(self) -> None:
        assert self.uas is not None
        for data, dest in self.uas.datagrams():
            if log.isEnabledFor(logging.DEBUG):
                log.debug("> %s:%d %s", dest[0], dest[1], data.split(b"\r\n", 1)[0][:120].decode("utf-8", "replace"))
            stream = self._streams.get(dest)
            if stream is not None and not stream.is_closing():
                stream.write(data)
            elif self._udp is not None:
                self._udp.sendto(data, dest)

    def _dispatch(self, event: Event) -> None:
        match event:
            case IncomingCall():
                assert self._tg is not None
                self._starting[event.call_id] = self._tg.create_task(self._run_call(event))
            case CallRefused(reason=reason):
                self.core.refused("sip", reason)
            case CallCancelled(call_id=call_id):
                if (task := self._starting.get(call_id)) is not None:
                    task.cancel()
            case CallEnded(call_id=call_id, reason=reason, outcome=outcome):
                self._ended.setdefault(call_id, asyncio.Event()).set()
                if (call := self._calls.get(call_id)) is not None:
                    call.end(reason, outcome)
            case MediaChanged(call_id=call_id, media=media):
                if (call := self._calls.get(call_id)) is not None:
                    if media.remote is not None:
                        call.update_media(MediaLeg(media.remote, media.codec, media.payload_type,
                                                   media.dtmf_payload_type))
                    call.set_sending(media.sending)
            case RequestDone(call_id=call_id, method=method, status=status):
                waiter = self._waiters.pop((call_id, method), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(status)
            case DtmfReceived(call_id=call_id, key=key):
                if (call := self._calls.get(call_id)) is not None:
                    call.dtmf(key)

    # -- calls -----------------------------------------------------------------------------------------------

    async def _run_call(self, event: IncomingCall) -> None:
        """Serve the call (MediaCore.serve_call) in SIP's words; the BYE on the way out if the dialog is still up."""
        assert self.uas is not None
        uas = self.uas
        call_id = event.call_id
        media = event.media
        info = CallInfo(call_id, "sip", event.caller, event.callee, event.metadata)
        leg = MediaLeg(media.remote, media.codec, media.payload_type, media.dtmf_payload_type)
        loop = asyncio.get_running_loop()
        # A CANCEL while the agent connects cancels this task outright (CallCancelled in _dispatch; the UAS answers
        # it 487, create_call releases what it took), where ARI and ESL let setup finish and then see the caller
        # gone. `cancelled` is SIP's `gone` for the one case left: a CANCEL that lands just before the 200 OK.
        cancelled = ""

        async def refuse(exc: Exception) -> None:
            self._starting.pop(call_id, None)
            log.warning("! [%s] call refused: %s", call_id, exc)
            uas.reject(call_id, 503, loop.time(), [("retry-after", "30")])

        async def answer(call: Call) -> None:
            nonlocal cancelled
            self._starting.pop(call_id, None)
            call.set_sending(media.sending)
            rtp_host, rtp_port = call.local_address
            if rtp_host in ("0.0.0.0", "::"):
                rtp_host = uas.config.host  # bound to every interface: advertise the signalling address
            if not uas.answer(call_id, (rtp_host, rtp_port), loop.time()):
                cancelled = "cancelled while the agent connected"
                return
            self._calls[call_id] = call
            self._pump()

        try:
            reason = await self.core.serve_call(info, leg, SipControl(self, call_id, info), refuse=refuse,
                                                connect=answer, gone=lambda: cancelled)
            if reason is not None:
                log.info("= [%s] SIP call over: %s", call_id, reason)
        finally:
            self._starting.pop(call_id, None)
            self._calls.pop(call_id, None)
            self._ended.pop(call_id, None)
            if uas.in_dialog(call_id):
                uas.hangup(call_id, loop.time())  # shutdown or a failed agent: BYE now, no waiting
            self._pump()

    async def request_and_wait(self, call_id: str, method: str, start: bool) -> int:
        """Wait for the final status of the BYE/REFER that `start` (the UAS call) just queued; 0 if none was."""
        if not start:
            return 0
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters[(call_id, method)] = waiter
        self._pump()
        try:
            async with asyncio.timeout(TIMEOUT + 1):
                return await waiter
        except TimeoutError:
            return 408
        finally:
            self._waiters.pop((call_id, method), None)

    async def wait_ended(self, call_id: str, timeout: float) -> bool:
        event = self._ended.setdefault(call_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()
        return event.is_set()


class SipControl:
    """CallControl for a SIP call: hang-up is our BYE, transfer is REFER (or BYE, per SIP_TRANSFER_MODE).

    A call that FreeSWITCH bridged to us with X-AI-Call-UUID is transferred by `uuid_transfer` of its A-leg over
    the ESL inbound connection when one is configured (the server's `leg_transfer`, wired in by bridge/app.py):
    REFER could only move it within the leg's own context.
    """

    def __init__(self, server: SipServer, call_id: str, info: CallInfo) -> None:
        self.server = server
        self.call_id = call_id
        self.info = info

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def hangup(self, reason: str) -> None:
        uas = self.server.uas
        assert uas is not None
        status = await self.server.request_and_wait(self.call_id, "BYE", uas.hangup(self.call_id, self._now()))
        log.info("> [%s] BYE (%s): %s", self.call_id, reason, status or "dialog already over")

    async def transfer(self, destination: str) -> None:
        uas = self.server.uas
        assert uas is not None
        by_pbx = self.server.leg_transfer
        if by_pbx is not None and await by_pbx.transfer(self.info, destination):
            log.info("> [%s] A-leg transferred to %r by uuid_transfer", self.call_id, destination)
            if not await self.server.wait_ended(self.call_id, TRANSFER_GRACE):
                await self.hangup("transfer done")
            return
        target = refer_target(destination or self.server.settings.transfer_extension,
                              uas.remote_target_host(self.call_id))
        if self.server.settings.sip_transfer_mode == "bye" or not target:
            await self.hangup(f"transfer to {destination!r} by hang-up")
            return
        status = await self.server.request_and_wait(self.call_id, "REFER",
                                                    uas.refer(self.call_id, target, self._now()))
        log.info("> [%s] REFER to %s: %s", self.call_id, target, status)
        if 200 <= status < 300 and await self.server.wait_ended(self.call_id, TRANSFER_GRACE):
            return
        await self.hangup("transfer done" if 200 <= status < 300 else f"REFER failed ({status})")


def advertised_host(bound: str, media_address: str) -> str:
    """The address written into Contact, Via and SDP: the bound one, or for a wildcard bind MEDIA_ADDRESS or
    the address of the interface that carries the default route (no packet is sent to find it)."""
    if bound not in ("0.0.0.0", "::"):
        return bound
    if media_address and media_address not in ("0.0.0.0", "::"):
        return media_address
    family = socket.AF_INET6 if bound == "::" else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("2001:db8::1" if family == socket.AF_INET6 else "192.0.2.1", 9))
            return probe.getsockname()[0]
        except OSError:
            return "::1" if family == socket.AF_INET6 else "127.0.0.1"


def refer_target(destination: str, host: str) -> str:
    """A Refer-To URI: a full sip:/sips:/tel: URI as given, else `destination` as the user at the peer's host."""
    if not destination:
        return ""
    if destination.lower().startswith(("sip:", "sips:", "tel:")):
        return destination
    return f"sip:{destination}@{host}"


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, server: SipServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        self.server.feed(data, addr[:2])

    def error_received(self, exc: Exception) -> None:
        log.debug("! SIP UDP: %s", exc)  # ICMP unreachable from a gone peer: the retransmit timers handle it


class _Stream(asyncio.Protocol):
    """A TCP connection: messages framed by Content-Length (§18.3); responses go back on it.

    At most MAX_STREAMS at once (more are closed at accept, by SipServer.streams). A connection must send its
    first message, and finish any message it begins, within MESSAGE_TIMEOUT: a half-open or trickling peer is
    closed. One that has sent SIP and then idles is kept, as RFC 3261 §18.3 leaves closing to the side that
    opened it (a PBX keeps its trunk connection up).
    """

    def __init__(self, server: SipServer) -> None:
        self.server = server
        self.buffer = bytearray()
        self.peer: Address = ("", 0)
        self.transport: asyncio.Transport | None = None
        self.deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")[:2]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self.server.allowed(self.peer):
            self.server.streams.denied += 1
            transport.close()
            return
        self.server._streams[self.peer] = self.transport  # type: ignore[assignment]
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        if self.server._streams.get(self.peer) is self.transport:
            del self.server._streams[self.peer]

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.buffer += data
        try:
            while (message := next_stream_message(self.buffer)) is not None:
                if self.deadline is not None:
                    self.deadline.cancel()
                    self.deadline = None
                self.server.feed(message, self.peer, reliable=True)
        except SipParseError as exc:  # no way to find the next message: the connection goes
            log.warning("! SIP/TCP from %s:%d closed: %s", *self.peer, exc)
            self.buffer.clear()
            self.transport.close()
            return
        if len(self.buffer) > MAX_STREAM_BUFFER:
            self.transport.close()  # no message boundary in sight: not SIP, or an attack
        elif self.buffer and self.deadline is None:
            self._arm()

    def _arm(self) -> None:
        self.deadline = asyncio.get_running_loop().call_later(MESSAGE_TIMEOUT, self._timed_out)

    def _timed_out(self) -> None:
        self.deadline = None
        if self.transport is not None and not self.transport.is_closing():
            self.server.streams.timed_out += 1
            log.info("! SIP/TCP from %s:%d closed: no complete message within %g s", *self.peer, MESSAGE_TIMEOUT)
            self.transport.close()


async def serve_sip(core: MediaCore, settings: Settings, ready: asyncio.Event | None = None,
                    leg_transfer: LegTransfer | None = None) -> None:
    """The SIP ingress: runs until cancelled; sets `ready` once bound. `leg_transfer` is tried before REFER."""
    await SipServer(core, settings, leg_transfer).run(ready)
