"""The chan_websocket ingress (WEBSOCKET_LISTEN): Asterisk's WebSocket channel connects here and streams media.

Asterisk connects as the client of a `websocket_client.conf` section (`connection_type = per_call_config`,
`protocols = media`, `uri = ws://<WEBSOCKET_LISTEN>/...`), which two ways in use (asterisk/): a
`Dial(WebSocket/<section>/c(ulaw))` from the dialplan, and the ARI ExternalMedia channel
(ARI_MEDIA=websocket, `transport=websocket&external_host=<ARI_WEBSOCKET_CLIENT>`). The first becomes a call of its
own here; the second is a call the ARI ingress created and named with the channel id it gave the ExternalMedia
channel, which `MEDIA_START` presents (MediaCore.expect_stream).

The protocol (channels/chan_websocket.c, ../shared/docs/pbx.md §1.8): `MEDIA_START` first (TEXT), then BINARY
messages of the channel's codec, one 20 ms frame each way; `DTMF_END` events; `HANGUP` command; closing the
websocket hangs the channel up. Asterisk re-times what we send on its own 20 ms timer and queues at most 1000
frames (MEDIA_XOFF at 900): the shared clock sends exactly one frame per 20 ms, so the queue stays near empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from aiohttp import WSMsgType, web

from bridge.call import Call, CallLog, MediaCore
from bridge.config import Settings, allowed
from bridge.listen import ConnectionCap
from bridge.media import Address, CallInfo, Codec, MediaLeg
from bridge.pbx.websocket import protocol as ws_protocol
from bridge.pbx.websocket.protocol import DtmfEnd, FlowControl, MediaStart, Other, WebSocketProtocolError
from bridge.stream import carry

log = logging.getLogger(__name__)

CODECS = {"ulaw": Codec.PCMU, "alaw": Codec.PCMA}
START_TIMEOUT = 5.0  # seconds for MEDIA_START, which Asterisk sends right after the upgrade
MAX_UNSENT_FRAMES = 50  # 1 s: a websocket that does not drain loses the oldest frames beyond this, counted
MAX_MESSAGE = 65500  # AST_WEBSOCKET_MAX_RX_PAYLOAD_SIZE-ish: Asterisk sends 160-byte frames and short events


class WebSocketControl:
    """CallControl of a dialplan WebSocket call: the websocket is all there is to talk back to Asterisk."""

    def __init__(self, session: MediaSession) -> None:
        self.session = session

    async def hangup(self, reason: str) -> None:
        """`HANGUP`, then close: chan_websocket queues the hang-up (AST_CAUSE_NORMAL)."""
        await self.session.command("HANGUP")
        await self.session.ws.close()

    async def transfer(self, destination: str) -> None:
        """Not available: chan_websocket has no transfer command. The channel hangs up; with Dial's `g` option
        the dialplan continues after Dial() and decides."""
        self.session.log.warning("! transfer_call to %r is not available over chan_websocket: hanging up the "
                                 "WebSocket channel (Dial with the g option continues the dialplan)", destination)
        await self.hangup("transfer not available")


class MediaSession:
    """One websocket from Asterisk: MEDIA_START, then media both ways for one call."""

    def __init__(self, core: MediaCore, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.core = core
        self.ws = ws
        self.request = request
        self.log: logging.LoggerAdapter = CallLog(log, {"call_id": f"websocket:{request.remote}"})
        self.start: MediaStart | None = None
        self.paused = False  # MEDIA_XOFF seen: Asterisk's queue is nearly full
        self.garbage = 0
        self.dropped = 0
        self._out: deque[bytes] = deque()
        # DTMF_END reaches the agent, except on an ARI call: the bridge passes the caller's keys to the
        # ExternalMedia channel too, and ARI already reports them (ChannelDtmfReceived); once is enough.
        self.digits = True
        self._wake = asyncio.Event()

    async def run(self) -> None:
        try:
            async with asyncio.timeout(START_TIMEOUT):
                self.start = await self._media_start()
        except (WebSocketProtocolError, TimeoutError) as exc:
            self.log.warning("! not a chan_websocket connection: %s", exc or "no MEDIA_START in time")
            return
        start = self.start
        self.log = CallLog(log, {"call_id": start.channel_id})
        codec = CODECS.get(start.format)
        if codec is None:
            self.log.warning("x channel format %r is not G.711: dial WebSocket/<id>/c(ulaw) (or ExternalMedia "
                             "format=ulaw)", start.format)
            await self.command("HANGUP")
            return
        call = self.core.claim_stream(start.channel_id)
        if call is False:  # its call ended before Asterisk connected: nothing to carry, no new call either
            self.log.info("x media connection for a call that has ended: closing it")
            return
        if call is not None:  # the ExternalMedia channel of a call the ARI ingress runs: media only
            self.log.info("= media connection for %s", call.call_id)
            self.digits = False
            await self.carry(call)
            return
        await self._dialplan_call(start, codec)

    async def _media_start(self) -> MediaStart:
        msg = await self.ws.receive()
        if msg.type is not WSMsgType.TEXT:
            raise WebSocketProtocolError(f"first message is {msg.type.name}, not MEDIA_START")
        event = ws_protocol.parse_event(msg.data)
        if not isinstance(event, MediaStart):
            raise WebSocketProtocolError(f"first message is {msg.data[:40]!r}, not MEDIA_START")
        return event

    async def _dialplan_call(self, start: MediaStart, codec: Codec) -> None:
        if (refused := self.core.admit("websocket")) is not None:
            await self._refuse(refused)
            return
        metadata = {"channel": start.channel, "channel_id": start.channel_id, "connection_id": start.connection_id,
                    **dict(self.request.query), **start.variables}
        info = CallInfo(start.channel_id, "websocket", metadata=metadata)
        async with asyncio.TaskGroup() as tg:
            async def connect(call: Call) -> None:
                tg.create_task(self.carry(call))

            reason = await self.core.serve_call(info, MediaLeg(None, codec, stream=True), WebSocketControl(self),
                                                refuse=self._refuse, connect=connect, gone=lambda: "")
        if reason is not None:
            self.log.info("= websocket call over: %s", reason)

    async def _refuse(self, why: object) -> None:
        """No call: HANGUP, so Dial() returns and the dialplan after it routes the caller."""
        self.log.warning("x refusing the call: %s", why)
        await self.command("HANGUP")

    async def command(self, name: str) -> None:
        assert self.start is not None
        if not self.ws.closed:
            with contextlib.suppress(ConnectionError):
                await self.ws.send_str(ws_protocol.command(name, self.start.json))

    async def carry(self, call: Call) -> None:
        async with asyncio.TaskGroup() as tg:
            sender = tg.create_task(self._send_loop())
            await carry(call, self._send, self._read(call))
            sender.cancel()

    def _send(self, frame: bytes) -> None:
        """One 20 ms frame of the downlink (called on the clock's tick); the send loop writes it."""
        if self.paused or len(self._out) >= MAX_UNSENT_FRAMES:
            self.dropped += 1
            return
        self._out.append(frame)
        self._wake.set()

    async def _send_loop(self) -> None:
        """aiohttp's send is a coroutine: one wake-up per tick writes what the tick queued (one frame)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._out and not self.ws.closed:
                with contextlib.suppress(ConnectionError):
                    await self.ws.send_bytes(self._out.popleft())

    async def _read(self, call: Call) -> str:
        async for msg in self.ws:
            if msg.type is WSMsgType.BINARY:
                call.endpoint.receive(msg.data)  # type: ignore[union-attr]  # a stream call
            elif msg.type is WSMsgType.TEXT:
                self._event(call, msg.data)
        return f"asterisk closed the websocket ({self.ws.close_code})"

    def _event(self, call: Call, text: str) -> None:
        try:
            event = ws_protocol.parse_event(text)
        except WebSocketProtocolError as exc:
            self.garbage += 1
            self.log.warning("! dropped websocket message: %s (%d so far)", exc, self.garbage)
            return
        match event:
            case DtmfEnd(digit=digit) if self.digits:
                call.dtmf(digit)
            case FlowControl(paused=paused):
                self.paused = paused
                self.log.warning("! asterisk %s our media (its queue: 900 frames = XOFF)",
                                 "pauses" if paused else "resumes")
            case Other(name="ERROR", fields=fields):
                self.log.warning("! asterisk: %s", fields.get("error_text", ""))
            case _:
                self.log.debug("< %s", text[:80])


class WebSocketServer:
    """aiohttp on WEBSOCKET_LISTEN; any path upgrades to a media websocket (the URI is websocket_client.conf's)."""

    def __init__(self, core: MediaCore, settings: Settings) -> None:
        if settings.websocket_listen is None:
            raise ValueError("WEBSOCKET_LISTEN is not set")
        self.core = core
        self.settings = settings
        self.address: Address = settings.websocket_listen
        self.sessions: set[MediaSession] = set()
        self.cap = core.listeners["websocket"] = ConnectionCap.for_calls("websocket", settings.max_calls)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not allowed(request.remote or "", self.settings.websocket_allowed_cidrs):  # every call spends money
            self.cap.denied += 1
            log.warning("! websocket from %s refused: not in WEBSOCKET_ALLOWED_CIDRS", request.remote)
            raise web.HTTPForbidden()
        ws = web.WebSocketResponse(protocols=(ws_protocol.SUBPROTOCOL,), max_msg_size=MAX_MESSAGE, autoping=True)
        await ws.prepare(request)
        session = MediaSession(self.core, ws, request)
        self.sessions.add(session)
        try:
            await session.run()
        except Exception:  # a bug in one connection must not take the listener and every other call down
            session.log.exception("! websocket session crashed")
        finally:
            self.sessions.discard(session)
            await ws.close()
        return ws

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        """Serve until cancelled; cancelling closes every websocket, which hangs up their channels."""
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        async with self.cap.serve_web(runner, *self.settings.websocket_listen) as self.address:
            log.info("= websocket media server on %s:%d", *self.address)
            if ready is not None:
                ready.set()
            await asyncio.Future()  # until cancelled


async def serve_websocket(core: MediaCore, settings: Settings, ready: asyncio.Event | None = None) -> None:
    """The chan_websocket ingress (WEBSOCKET_LISTEN): runs until cancelled; sets `ready` once listening."""
    await WebSocketServer(core, settings).serve(ready)
