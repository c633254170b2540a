"""The ESL outbound server: FreeSWITCH's `socket <adapter>:8084 async full` hands a call over; media by `unicast`.

Per connection (../shared/docs/pbx.md §2.4, §2.7): `connect` (the reply is the channel's data) -> `myevents` ->
`linger` -> `execute answer` unless answered -> core.create_call -> `sendmsg` unicast to the call's UDP port ->
call.run. A call that cannot start goes back to the dialplan (`set SIP_TO_AI_REFUSED=<why>`, `resume`, `exit`).
FreeSWITCH binds the unicast `local` side itself: it gets the odd port next to ours (the pool hands out even
ports only, so the adapter never binds the odd one). Frames are raw 16-bit linear audio, no RTP header.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import uuid as uuidlib

from bridge.call import Call, CallLog, MediaCore
from bridge.config import Settings, allowed
from bridge.errors import BridgeError
from bridge.listen import ConnectionCap
from bridge.media import Address, CallInfo, MediaLeg
from bridge.pbx.esl import protocol as esl
from bridge.pbx.esl.client import EslConnection
from bridge.pbx.esl.protocol import EslError, EslEvent, EslMessage, Headers

log = logging.getLogger(__name__)

ANSWER_TIMEOUT = 10.0  # seconds for `answer` to complete (a SIP 200/ACK round trip on a slow link)
# FreeSWITCH sends a frame every 20 ms from the moment `unicast` starts, but answers +OK even when it cannot
# bind its side (async socket): silence this long means the fork failed, and the log should say so.
NO_MEDIA_WARNING = 3.0
REFUSED_VARIABLE = "SIP_TO_AI_REFUSED"  # set on a call given back to the dialplan: why (as the ARI ingress does)
MIN_RATE, MAX_RATE = 8000, 48000  # L16 rates a channel may fork at (G.711's 8 kHz to Opus's 48 kHz)
def media_leg(channel: Headers) -> MediaLeg | str:
    """The unicast leg for the answered channel's read codec, or why there is none.

    Every codec, G.711 included, is forked without `native`: switch_ivr_activate_unicast then decodes to L16 at
    the codec's actual rate (`Channel-Read-Codec-Rate`: G.711 8 kHz, G.722 16 kHz, Opus 48 kHz). `native`
    would hand over G.711's own bytes, but FreeSWITCH 1.10 then writes what comes back with the channel's *read*
    codec as the frame's codec: switch_core_session_write_frame locks that codec's mutex and holds it while the
    RTP write waits for its 20 ms timer, and the channel's own read (switch_core_session_read_frame, which feeds
    the fork) needs the same mutex while it waits for its timer. The two threads then take turns on one lock,
    and the read can lose for hundreds of milliseconds: the caller's audio reached the adapter in single frames
    every ~480 ms (1.10.12, in 6 of ~160 runs of 20 concurrent calls, 1-2 calls each; gdb showed the two
    threads). Without `native` the write uses the fork's own L16 codec and the two never meet (0 in 61 runs).
    """
    name = channel.get("Channel-Read-Codec-Name", "")
    rate = channel.get("Channel-Read-Codec-Rate", "")
    if not name or not rate.isdigit() or not MIN_RATE <= int(rate) <= MAX_RATE:
        return f"channel codec {name!r} at rate {rate!r}: no audio to fork"
    return MediaLeg(None, raw=True, linear_rate=int(rate))


def call_info(channel: Headers, settings: Settings) -> CallInfo:
    """The neutral CallInfo of a connect reply (CHANNEL_DATA): caller, callee, the variables named in config."""
    metadata = {name: channel[f"variable_{name}"] for name in settings.esl_variables if f"variable_{name}" in channel}
    return CallInfo(
        call_id=channel.get("Unique-ID", ""),
        ingress="esl",
        caller=channel.get("Caller-Caller-ID-Number", ""),
        callee=channel.get("Caller-Destination-Number", ""),
        metadata=metadata,
    )


class EslControl:
    """CallControl over the call's own outbound socket."""

    def __init__(self, session: OutboundSession) -> None:
        self.session = session
        self.ending = ""  # "hangup" / "transfer" once the agent asked for it

    async def hangup(self, reason: str) -> None:
        self.ending = self.ending or "hangup"
        try:
            await self.session.conn.checked(esl.hangup("NORMAL_CLEARING"))
        except EslError as exc:
            self.session.log.warning("! hangup not acknowledged: %s", exc)

    async def transfer(self, destination: str) -> None:
        s = self.session
        try:
            extension, context = esl.transfer_target(destination, s.settings.transfer_extension,
                                                     s.settings.transfer_context)
            if s.full:
                await s.conn.checked(esl.api(f"uuid_transfer {s.uuid} {extension} XML {context}"))
            else:  # `api` needs a `full` socket; the dialplan app works in any socket
                await s.conn.checked(esl.execute("transfer", f"{extension} XML {context}"))
        except (ValueError, EslError) as exc:
            s.log.warning("! transfer failed (%s): hanging up instead", exc)
            await self.hangup("transfer failed")
            return
        self.ending = "transfer"
        s.log.info("> transferred to %s in %s", extension, context)


class OutboundSession:
    """One outbound socket from FreeSWITCH, carrying one channel."""

    def __init__(self, core: MediaCore, settings: Settings, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.core = core
        self.settings = settings
        self.conn = EslConnection(reader, writer, self._on_event, self._on_notice)
        self.log: logging.LoggerAdapter = CallLog(log, {"call_id": "esl:{}:{}".format(*self.conn.peer)})
        self.uuid = ""
        self.full = True
        self.call: Call | None = None
        self.control = EslControl(self)
        self.gone = ""  # why the channel is over for us: its hangup, the disconnect-notice, the socket's end
        # FreeSWITCH is done with the socket: its socket app completed (a transfer ended the park; the transferred
        # channel goes on without the socket), a disconnect-notice, or EOF
        self.finished = asyncio.Event()
        self._completions: dict[str, asyncio.Future[EslEvent]] = {}
        self._fork: tuple[Address, Address] = (("", 0), ("", 0))  # FreeSWITCH's unicast side, ours
        self._watchdog: asyncio.TimerHandle | None = None  # warns when no unicast audio arrives

    async def run(self) -> None:
        """Handle the connection until FreeSWITCH or the call ends it; never raises BridgeError/OSError."""
        async with asyncio.TaskGroup() as tg:
            reading = tg.create_task(self.conn.read_loop())
            watching = tg.create_task(self._watch())
            try:
                await self._serve()
            except (BridgeError, OSError) as exc:
                self.log.warning("! esl session failed: %s", exc)
            finally:
                self._teardown()
                reading.cancel()
                watching.cancel()

    async def _watch(self) -> None:
        await self.conn.closed.wait()
        self.finished.set()
        self._channel_gone(f"freeswitch gone: {self.conn.close_reason}")

    async def _send(self, data: bytes) -> EslMessage:
        return await self.conn.command(data)

    async def _serve(self) -> None:
        reply = await self._send(esl.connect())
        channel = reply.headers
        self.uuid = channel.get("Unique-ID", "")
        if not esl.UUID.fullmatch(self.uuid):  # it goes into api commands: one plain token only
            raise EslError(f"connect reply without a usable Unique-ID ({self.uuid[:40]!r})")
        self.log = CallLog(log, {"call_id": self.uuid})
        self.full = channel.get("Control") == "full"
        reply = await self._send(esl.myevents())
        if not reply.ok:
            raise EslError(f"myevents: {reply.reply_text}")
        if (refusal := self.core.admit("esl")) is not None:
            await self._refuse(refusal)
            return
        channel = await self._linger_and_answer(channel)
        leg = media_leg(channel)
        if isinstance(leg, str):
            await self._refuse(leg)
            return

        async def refuse(exc: Exception) -> None:
            await self._refuse(str(exc))

        async def connect(call: Call) -> None:
            self.call = call
            await self._fork_media(leg)
            self._watchdog = asyncio.get_running_loop().call_later(NO_MEDIA_WARNING, self._check_media)

        try:
            reason = await self.core.serve_call(call_info(channel, self.settings), leg,
                                                self.control, refuse=refuse, connect=connect, gone=lambda: self.gone)
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()
        if reason is None:
            return
        if self.control.ending == "transfer":  # closing the socket while the channel is still parked in the
            await self.finished.wait()  # socket app would run the dialplan after it: wait until the app is over
        self.log.info("= esl call over: %s", reason)

    async def _refuse(self, why: str) -> None:
        """Give the call back to the dialplan (after `socket`), with SIP_TO_AI_REFUSED=<why>, like the ARI ingress."""
        self.log.warning("x refusing the call: %s", why)
        self.control.ending = "refused"
        try:
            await self._execute("set", f"{REFUSED_VARIABLE}={why}")
        except EslError as exc:
            self.log.warning("! could not set %s: %s", REFUSED_VARIABLE, exc)
        await self._send(esl.resume())  # on disconnect the dialplan continues instead of hanging up
        await self._send(esl.exit_())

    async def _linger_and_answer(self, channel: Headers) -> Headers:
        """linger (the last events still arrive after hangup), then answer unless answered; the answered data."""
        reply = await self._send(esl.linger())
        if not reply.ok:  # `socket ... async` without `full`: linger and api are refused (mod_event_socket.c)
            self.full = False
            self.log.warning("! linger refused (%s): use `socket <adapter>:8084 async full`", reply.reply_text)
        if channel.get("Answer-State") != "answered":
            done = await self._execute("answer")
            negotiated = [(k, v) for k in ("Channel-Read-Codec-Name", "Channel-Read-Codec-Rate")
                          if (v := done.headers.get(k))]  # known only now with late negotiation
            channel = Headers([*negotiated, *channel.items()])
        return channel

    async def _execute(self, app: str, arg: str = "") -> EslEvent:
        """Run a dialplan app and wait for its CHANNEL_EXECUTE_COMPLETE (matched by Application-UUID)."""
        event_uuid = str(uuidlib.uuid4())
        future: asyncio.Future[EslEvent] = asyncio.get_running_loop().create_future()
        self._completions[event_uuid] = future
        try:
            reply = await self._send(esl.execute(app, arg, event_uuid=event_uuid))
            if not reply.ok:
                raise EslError(f"execute {app}: {reply.reply_text}")
            async with asyncio.timeout(ANSWER_TIMEOUT):
                return await future
        except TimeoutError:
            raise EslError(f"{app} did not complete within {ANSWER_TIMEOUT:.0f} s") from None
        finally:
            self._completions.pop(event_uuid, None)

    async def _fork_media(self, leg: MediaLeg) -> None:
        """`unicast` (only ever after the answer: before it, FreeSWITCH 1.10 aborts on an assertion)."""
        assert self.call is not None
        ours = self.call.local_address
        host = ours[0] if not ipaddress.ip_address(ours[0]).is_unspecified else self.conn.local[0]
        theirs: Address = (self.conn.peer[0], ours[1] + 1)
        self.call.update_media(dataclasses.replace(leg, remote=theirs))
        reply = await self._send(esl.unicast(theirs, (host, ours[1])))
        if not reply.ok:
            raise EslError(f"unicast: {reply.reply_text}")
        fmt = leg.format
        self.log.info("= unicast: freeswitch %s:%d <-> adapter %s:%d (%s at %d Hz)", *theirs, host, ours[1],
                      fmt.encoding, fmt.rate)
        self._fork = (theirs, (host, ours[1]))

    def _check_media(self) -> None:
        if self.call is None or self.gone or self.call.endpoint.stats.received:
            return
        (fs_host, fs_port), (host, port) = self._fork
        self.log.warning("! no unicast audio from freeswitch after %.0f s: is UDP %s:%d free on the FreeSWITCH "
                         "host, and %s:%d (MEDIA_ADDRESS) reachable from it?", NO_MEDIA_WARNING, fs_host, fs_port,
                         host, port)

    def _teardown(self) -> None:
        """Hang up what is still up (shutdown, agent failure), then close the socket."""
        if not self.gone and self.uuid and not self.control.ending and not self.conn.closed.is_set():
            self.conn.send_nowait(esl.hangup("NORMAL_CLEARING"))
        self.conn.close()

    # -- FreeSWITCH -> us ---------------------------------------------------------------------------------------

    def _on_event(self, event: EslEvent) -> None:
        self.core.clock.poll()  # FreeSWITCH sends its events in bursts at set-up (pacing p99, 20 calls: 7.6 -> 3.1 ms)
        match event.name:
            case "CHANNEL_EXECUTE_COMPLETE":
                future = self._completions.get(event.headers.get("Application-UUID", ""))
                if future is not None and not future.done():
                    future.set_result(event)
                if event.headers.get("Application") == "socket":
                    self.finished.set()
            case "DTMF":
                digit = event.headers.get("DTMF-Digit", "")
                if self.call is not None and len(digit) == 1:
                    self.call.dtmf(digit)
            case "CHANNEL_HANGUP":
                cause = event.headers.get("Hangup-Cause", "")
                self._channel_gone(f"freeswitch hung up ({cause})" if self.control.ending else
                                   f"caller hung up ({cause})")

    def _on_notice(self, message: EslMessage) -> None:
        if message.content_type == esl.CONTENT_DISCONNECT:
            self.finished.set()
            self._channel_gone(f"disconnect-notice ({message.headers.get('Content-Disposition', '')})")

    def _channel_gone(self, reason: str) -> None:
        if self.gone:
            return
        self.gone = reason
        for future in self._completions.values():
            if not future.done():
                future.set_exception(EslError(f"channel gone: {reason}"))
        if self.call is not None and self.control.ending != "hangup":
            self.call.end(reason)


class EslOutboundServer:
    """Listens on ESL_LISTEN; one OutboundSession per connection, all owned by one TaskGroup."""

    def __init__(self, core: MediaCore, settings: Settings) -> None:
        if settings.esl_listen is None:
            raise ValueError("ESL_LISTEN is not set")
        self.core = core
        self.settings = settings
        self.address: Address = settings.esl_listen
        self.sessions: set[OutboundSession] = set()
        self.cap = core.listeners["esl"] = ConnectionCap.for_calls("esl", settings.max_calls)

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        """Accept until cancelled; cancelling hangs up every live call of this server."""
        async with asyncio.TaskGroup() as tg:
            def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                peer = writer.get_extra_info("peername")
                if not allowed(peer[0], self.settings.esl_allowed_cidrs):  # every accepted call spends API money
                    self.cap.denied += 1
                    log.warning("! esl connection from %s refused: not in ESL_ALLOWED_CIDRS", peer[0])
                    writer.close()
                    return
                tg.create_task(self._session(reader, writer))

            server = await self.cap.listen_streams(accept, *self.settings.esl_listen)
            self.address = server.sockets[0].getsockname()[:2]
            log.info("= esl outbound server on %s:%d", *self.address)
            async with server:
                if ready is not None:
                    ready.set()
                await asyncio.Future()  # until cancelled

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = OutboundSession(self.core, self.settings, reader, writer)
        self.sessions.add(session)
        try:
            await session.run()
        except Exception:  # a bug in one connection must not take the listener and every other call down
            session.log.exception("! esl session crashed")
        finally:
            self.sessions.discard(session)
            with contextlib.suppress(OSError):
                writer.close()


async def serve_esl(core: MediaCore, settings: Settings, ready: asyncio.Event | None = None) -> None:
    """The ESL outbound ingress (ESL_LISTEN): runs until cancelled; sets `ready` once listening."""
    await EslOutboundServer(core, settings).serve(ready)
