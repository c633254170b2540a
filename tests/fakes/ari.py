"""A fake Asterisk: ARI REST and the events websocket as the Swagger files describe them, and ExternalMedia RTP.

Every request is checked against the loaded description (path, method, parameter names, required, types,
allowed values) plus the code-only rules of pbx.md §1.4, and answered in the described models (each reply and
each event is checked against its model before it leaves). ExternalMedia channels send 160-byte G.711 frames
every 20 ms from the port they advertise in UNICASTRTP_LOCAL_PORT, to `external_host`, with strict-RTP
learning on receive (pbx.md §1.6), and deliver what comes back to the other channels of their bridge.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import math
import random
import struct
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.ari_swagger import Swagger
from tests.fakes.audiosocket import FakeAudioSocketClient

with warnings.catch_warnings():  # the fake's own G.711, independent of bridge.codec (deprecated in 3.11, gone in 3.13)
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

FRAME = 160
PT_BY_FORMAT = {"ulaw": 0, "alaw": 8}
ENCODE = {"ulaw": audioop.lin2ulaw, "alaw": audioop.lin2alaw}
DECODE = {0: audioop.ulaw2lin, 8: audioop.alaw2lin}
BRIDGE_TYPES = {"mixing", "holding", "dtmf_events", "proxy_media", "video_sfu", "video_single", "sdp_label"}
PROBATION = 4  # res_rtp_asterisk DEFAULT_LEARNING_MIN_SEQUENTIAL
LEARN_SECONDS = 5.0  # STRICT_RTP_LEARN_TIMEOUT
REQUIRED_TRANSPORT = {"rtp": "udp", "audiosocket": "tcp", "none": "websocket"}  # ast_ari_channels_external_media
# Where Asterisk's code accepts more than its description says (pbx.md §1.4): direction in/out.
CODE_ALLOWS = {("externalMedia", "direction"): ("both", "in", "out")}
MEDIA_STASIS_DELAY = 0.02  # seconds between the externalMedia reply and the channel's StasisStart


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


class AriReply(Exception):
    """An error answer, as Asterisk sends them: status and {"message": ...}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def tone(freq: float, amplitude: int = 8000, rate: int = 8000) -> Callable[[], bytes]:
    """A frame source: 20 ms of PCM16 of a continuous sine per call."""
    n = itertools.count()

    def frame() -> bytes:
        start = next(n) * FRAME
        return struct.pack(
            f"<{FRAME}h", *(int(amplitude * math.sin(2 * math.pi * freq * (start + i) / rate)) for i in range(FRAME))
        )

    return frame


@dataclass
class FakeChannel:
    id: str
    name: str
    state: str
    caller: tuple[str, str] = ("", "")
    dialplan: dict[str, Any] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)
    app: str | None = None  # the Stasis application it is in
    bridge: str | None = None
    source: Callable[[], bytes] | None = None  # what this party says (PCM16 frames)
    heard: list[tuple[float, bytes]] = field(default_factory=list)  # PCM16 frames the bridge gave it
    rtp: ExternalMediaRtp | None = None
    audiosocket: FakeAudioSocketClient | None = None  # an AudioSocket ExternalMedia channel's connection
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S.000+0000", time.gmtime()))

    def model(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "name": self.name, "state": self.state, "protocol_id": "",
            "caller": {"name": self.caller[0], "number": self.caller[1]},
            "connected": {"name": "", "number": ""}, "accountcode": "",
            "dialplan": self.dialplan, "creationtime": self.created, "language": "en",
        }
        if self.rtp is not None:
            out["channelvars"] = {"UNICASTRTP_LOCAL_PORT": str(self.rtp.port), "UNICASTRTP_LOCAL_ADDRESS": "127.0.0.1"}
        if self.audiosocket is not None:  # chan_audiosocket's pbx_builtin_setvar_helper calls
            out["channelvars"] = {"AUDIOSOCKET_UUID": self.audiosocket.uuid,
                                  "AUDIOSOCKET_SERVICE": "{}:{}".format(*self.audiosocket.address)}
        return out


@dataclass
class FakeBridge:
    id: str
    name: str
    types: str
    channels: list[str] = field(default_factory=list)

    def model(self) -> dict[str, Any]:
        return {"id": self.id, "technology": "simple_bridge", "bridge_type": self.types.split(",")[0],
                "bridge_class": "stasis", "creator": "Stasis", "name": self.name, "channels": list(self.channels),
                "creationtime": "2026-11-24T00:00:00.000+0000", "video_mode": "talker"}


class ExternalMediaRtp(asyncio.DatagramProtocol):
    """chan_rtp's UnicastRTP socket: sends to external_host from the advertised port, learns strictly."""

    def __init__(self, fake: FakeAsterisk, channel: FakeChannel, target: tuple[str, int], fmt: str) -> None:
        self.fake, self.channel, self.target, self.fmt = fake, channel, target, fmt
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.learn_start = time.monotonic()
        self.learned: tuple[str, int] = target  # packets from external_host are accepted at once
        self._probation: dict[tuple[str, int], tuple[int, int]] = {}  # source -> (last seq, run length)
        self.received: list[tuple[float, int, bytes]] = []  # (time, pt, payload) accepted
        self.dropped = 0
        self.sent_at: list[float] = []
        self._sender: asyncio.Task[None] | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        assert self.transport is not None
        self.port = self.transport.get_extra_info("sockname")[1]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if len(data) < 12 or data[0] >> 6 != 2:
            self.dropped += 1
            return
        pt, seq = data[1] & 0x7F, struct.unpack("!H", data[2:4])[0]
        source = addr[:2]
        if source != self.learned and not self._learn(source, seq):
            self.dropped += 1
            return
        if pt > 34:  # no SDP, so no dynamic payload types (ast_rtp_codecs_get_payload)
            self.dropped += 1
            return
        payload = data[12 + 4 * (data[0] & 0x0F):]
        now = asyncio.get_running_loop().time()
        self.received.append((now, pt, payload))
        if pt in DECODE:
            self.fake._deliver(self.channel, (now, DECODE[pt](payload, 2)))

    def _learn(self, source: tuple[str, int], seq: int) -> bool:
        if time.monotonic() - self.learn_start > LEARN_SECONDS:
            return False  # locked on the learned source
        last, run = self._probation.get(source, (seq - 1, 0))
        run = run + 1 if seq == (last + 1) & 0xFFFF else 1
        self._probation[source] = (seq, run)
        if run >= PROBATION:
            self.learned = source
            return True
        return False

    def start(self) -> None:
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send())

    def close(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
        if self.transport is not None:
            self.transport.close()

    async def _send(self) -> None:
        loop = asyncio.get_running_loop()
        seq, ts, ssrc = random.getrandbits(16), random.getrandbits(32), random.getrandbits(32)
        t0, n = loop.time(), 0
        while True:
            n += 1
            await asyncio.sleep(max(0.0, t0 + n * 0.020 - loop.time()))
            pcm = self.fake._mix_for(self.channel)
            if pcm is None or self.transport is None:
                continue  # nothing to send: the bridge produces no frame
            header = struct.pack("!BBHII", 0x80, PT_BY_FORMAT[self.fmt], seq, ts, ssrc)
            self.transport.sendto(header + ENCODE[self.fmt](pcm, 2), self.target)
            self.sent_at.append(loop.time())
            seq, ts = (seq + 1) & 0xFFFF, (ts + FRAME) & 0xFFFFFFFF


class FakeAsterisk:
    """Serve with `await fake.start()`; `fake.url` is the ARI_URL. Drive callers with call_in/caller_hangup/press."""

    def __init__(self, users: dict[str, str] | None = None) -> None:
        self.swagger = Swagger(code_allows=CODE_ALLOWS)
        self.users = users or {"adapter": "secret"}
        self.channels: dict[str, FakeChannel] = {}
        self.bridges: dict[str, FakeBridge] = {}
        self.sockets: dict[str, web.WebSocketResponse] = {}  # app -> its one websocket
        self._outboxes: dict[web.WebSocketResponse, asyncio.Queue[str]] = {}
        self.registered: set[str] = set()  # apps that ever had a websocket
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, params) accepted
        self.rejected: list[tuple[str, str, int, str]] = []
        self.continued: list[tuple[str, dict[str, str]]] = []  # (channel id, continue params)
        self.redirected: list[tuple[str, str]] = []
        self.media_history: list[ExternalMediaRtp] = []  # every ExternalMedia socket, kept after hang-up
        self.asterisk_id = "02:fc:00:00:00:01"
        self._ids = itertools.count(1)
        self._epoch = int(time.time())
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.handlers: dict[str, Callable[..., Any]] = {
            "getInfo": self._info, "list": self._list, "get": self._get,
            "answer": self._answer, "hangup": self._hangup, "continueInDialplan": self._continue,
            "redirect": self._redirect, "getChannelVar": self._get_var, "setChannelVar": self._set_var,
            "externalMedia": self._external_media, "create": self._create_bridge, "destroy": self._destroy_bridge,
            "addChannel": self._add_channel, "removeChannel": self._remove_channel,
        }

    # ---- lifecycle -----------------------------------------------------------------------------------------

    async def start(self) -> FakeAsterisk:
        app = web.Application()
        app.router.add_route("*", "/ari/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        for ch in self.channels.values():
            if ch.rtp is not None:
                ch.rtp.close()
        for ws in list(self.sockets.values()):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def drop_websockets(self) -> None:
        """The events websockets break (network blip); channels and bridges live on."""
        for ws in list(self.sockets.values()):
            await ws.close(code=1011)
        self.sockets.clear()

    async def restart(self) -> None:
        """Asterisk restarts: websockets break, every channel and bridge is gone, no events."""
        await self.drop_websockets()
        for ch in self.channels.values():
            if ch.rtp is not None:
                ch.rtp.close()
        self.channels.clear()
        self.bridges.clear()
        self.registered.clear()
        self._epoch += 1000

    # ---- the PBX side, driven by tests ---------------------------------------------------------------------

    def call_in(self, app: str = "sip-to-ai", caller: str = "1001", args: tuple[str, ...] = (),
                state: str = "Ring", source: Callable[[], bytes] | None = None,
                variables: dict[str, str] | None = None) -> str:
        """A caller's channel runs Stasis(app,args) in the dialplan; returns its id."""
        assert app in self.registered, f"Stasis({app}) FAILED: no websocket ever registered the app"
        n = next(self._ids)
        ch = FakeChannel(f"{self._epoch}.{n}", f"PJSIP/trunk-{n:08x}", state, ("Caller", caller),
                         {"context": "from-trunk", "exten": "100", "priority": 2, "app_name": "Stasis",
                          "app_data": ",".join((app, *args))}, dict(variables or {}), app=app, source=source)
        self.channels[ch.id] = ch
        self._emit(app, "StasisStart", channel=ch.model(), args=list(args))
        return ch.id

    def caller_hangup(self, channel_id: str) -> None:
        self._destroy_channel(self.channels[channel_id], 16, "Normal Clearing")

    def press(self, channel_id: str, digit: str, duration_ms: int = 120) -> None:
        ch = self.channels[channel_id]
        if ch.app is not None:
            self._emit(ch.app, "ChannelDtmfReceived", channel=ch.model(), digit=digit, duration_ms=duration_ms)

    def heard(self, channel_id: str) -> list[tuple[float, bytes]]:
        return self.channels[channel_id].heard

    def media_channel(self) -> FakeChannel | None:
        return next((c for c in self.channels.values() if c.rtp is not None), None)

    def leftovers(self) -> list[str]:
        """What GET /channels and GET /bridges would list."""
        return [c.id for c in self.channels.values()] + [b.id for b in self.bridges.values()]

    # ---- HTTP ----------------------------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"].rstrip("/")
        query = dict(request.query)
        try:
            self._authenticate(request)
            op, path_params, known = self.swagger.match(request.method, path)
            if op is None:
                raise AriReply(405 if known else 404, "Invalid method" if known else "Resource not found")
            body = await self._body(request)
            problem = self.swagger.check_params(op, query, body)
            if problem:
                raise AriReply(400, problem)
            params = {**{k: str(v) for k, v in (body or {}).items() if k != "variables"}, **query}
            params.pop("api_key", None)
            if op.nickname == "eventWebsocket":
                return await self._events(request, params)
            handler = self.handlers.get(op.nickname)
            if handler is None:
                raise AriReply(501, f"fake Asterisk does not model {op.nickname}")
            self.requests.append((request.method, path, params))
            result = handler(op, path_params, params)
            if asyncio.iscoroutine(result):
                result = await result
        except AriReply as reply:
            self.rejected.append((request.method, path, reply.status, str(reply)))
            return web.json_response({"message": str(reply)}, status=reply.status)
        if op.response_class in ("void", ""):
            return web.Response(status=204)
        self.swagger.check_model(op.response_class, result)
        return web.json_response(result)

    def _authenticate(self, request: web.Request) -> None:
        user, password = None, None
        if "api_key" in request.query:
            user, _, password = request.query["api_key"].partition(":")
        elif request.headers.get("Authorization", "").startswith("Basic "):
            decoded = base64.b64decode(request.headers["Authorization"][6:]).decode()
            user, _, password = decoded.partition(":")
        if user is None or self.users.get(user) != password:
            raise AriReply(401, "Authentication required")

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any] | None:
        if not request.can_read_body:
            return None
        try:
            body = json.loads(await request.read() or b"null")
        except json.JSONDecodeError:
            raise AriReply(400, "Invalid JSON body") from None
        if body is not None and not isinstance(body, dict):
            raise AriReply(400, "JSON body must be an object")
        return body

    async def _events(self, request: web.Request, params: dict[str, str]) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=("ari",))
        await ws.prepare(request)
        apps = params["app"].split(",")
        outbox: asyncio.Queue[str] = asyncio.Queue()
        for app in apps:
            old = self.sockets.get(app)
            if old is not None:
                self._outboxes[old].put_nowait(json.dumps(self._event(app, "ApplicationReplaced")))
            self.sockets[app] = ws
            self.registered.add(app)
        self._outboxes[ws] = outbox
        sender = asyncio.get_running_loop().create_task(self._send_events(ws, outbox))
        try:
            async for msg in ws:
                if msg.type is WSMsgType.ERROR:
                    break
        finally:
            sender.cancel()
            for app in apps:
                if self.sockets.get(app) is ws:
                    del self.sockets[app]
            del self._outboxes[ws]
        return ws

    @staticmethod
    async def _send_events(ws: web.WebSocketResponse, outbox: asyncio.Queue[str]) -> None:
        """One writer per websocket, so events leave in the order they happened."""
        while not ws.closed:
            await ws.send_str(await outbox.get())

    # ---- events --------------------------------------------------------------------------------------------

    def _event(self, app: str, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "application": app, "asterisk_id": self.asterisk_id,
                 "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000+0000", time.gmtime()), **fields}
        self.swagger.check_event(event)
        return event

    def _emit(self, app: str | None, kind: str, **fields: Any) -> None:
        if app is None:
            return
        event = self._event(app, kind, **fields)
        ws = self.sockets.get(app)
        if ws is not None and not ws.closed:  # no websocket: the event is lost, as in Asterisk
            self._outboxes[ws].put_nowait(json.dumps(event))

    # ---- channels ------------------------------------------------------------------------------------------

    def _channel(self, channel_id: str, in_stasis: bool = True) -> FakeChannel:
        ch = self.channels.get(channel_id)
        if ch is None:
            raise AriReply(404, "Channel not found")
        if in_stasis and ch.app is None:
            raise AriReply(409, "Channel not in a Stasis application")
        return ch

    def _destroy_channel(self, ch: FakeChannel, cause: int, cause_txt: str) -> None:
        """ChannelHangupRequest, ChannelLeftBridge, StasisEnd, ChannelDestroyed (pbx.md §1.5)."""
        app = ch.app
        self._emit(app, "ChannelHangupRequest", channel=ch.model(), cause=cause)
        self._leave_bridge(ch)
        if app is not None:
            self._emit(app, "StasisEnd", channel=ch.model())
        ch.app = None
        self._emit(app, "ChannelDestroyed", channel=ch.model(), cause=cause, cause_txt=cause_txt)
        if ch.rtp is not None:
            ch.rtp.close()
        if ch.audiosocket is not None:  # audiosocket_hangup closes the socket
            ch.audiosocket.abort()
        self.channels.pop(ch.id, None)

    def _leave_bridge(self, ch: FakeChannel) -> None:
        bridge = self.bridges.get(ch.bridge or "")
        if bridge is not None:
            bridge.channels.remove(ch.id)
            self._emit(ch.app, "ChannelLeftBridge", channel=ch.model(), bridge=bridge.model())
        ch.bridge = None

    def _info(self, op: Any, path: dict[str, str], q: dict[str, str]) -> dict[str, Any]:
        return {"system": {"version": "22.10.1-fake", "entity_id": self.asterisk_id}}

    def _list(self, op: Any, path: dict[str, str], q: dict[str, str]) -> list[dict[str, Any]]:
        if op.path == "/channels":
            return [c.model() for c in self.channels.values()]
        if op.path == "/bridges":
            return [b.model() for b in self.bridges.values()]
        return [{"name": a, "channel_ids": [], "bridge_ids": [], "endpoint_ids": [], "device_names": [],
                 "events_allowed": [], "events_disallowed": []} for a in sorted(self.sockets)]

    def _get(self, op: Any, path: dict[str, str], q: dict[str, str]) -> dict[str, Any]:
        if "channelId" in path:
            return self._channel(path["channelId"], in_stasis=False).model()
        if "bridgeId" in path:
            bridge = self.bridges.get(path["bridgeId"])
            if bridge is None:
                raise AriReply(404, "Bridge not found")
            return bridge.model()
        raise AriReply(501, f"fake Asterisk does not model {op.path}")

    def _answer(self, op: Any, path: dict[str, str], q: dict[str, str]) -> None:
        ch = self._channel(path["channelId"])
        if ch.state != "Up":
            ch.state = "Up"
            self._emit(ch.app, "ChannelStateChange", channel=ch.model())

    def _hangup(self, op: Any, path: dict[str, str], q: dict[str, str]) -> None:
        if "reason" in q and "reason_code" in q:
            raise AriReply(400, "The reason and reason_code can't both be specified")
        self._destroy_channel(self._channel(path["channelId"], in_stasis=False), 16, "Normal Clearing")

    def _continue(self, op: Any, path: dict[str, str], q: dict[str, str]) -> None:
        ch = self._channel(path["channelId"])
        self._leave_bridge(ch)
        app, ch.app = ch.app, None
        self._emit(app, "StasisEnd", channel=ch.model())
        self.continued.append((ch.id, q))  # the channel runs on in the dialplan (still listed)

    def _redirect(self, op: Any, path: dict[str, str], q: dict[str, str]) -> None:
        ch = self._channel(path["channelId"])
        tech = q["endpoint"].partition("/")[0]
        if "/" not in q["endpoint"]:
            raise AriReply(400, "Endpoint parameter not provided")
        if tech.lower() != ch.name.partition("/")[0].lower():
            raise AriReply(422, "Endpoint technology doesn't match channel")
        self.redirected.append((ch.id, q["endpoint"]))
        self._destroy_channel(ch, 16, "Normal Clearing")  # REFER accepted: the far end hangs up its leg

    def _get_var(self, op: Any, path: dict[str, str], q: dict[str, str]) -> dict[str, str]:
        ch = self._channel(path["channelId"])
        variables = dict(ch.variables)
        if ch.rtp is not None or ch.audiosocket is not None:
            variables.update(ch.model()["channelvars"])
        if q["variable"] not in variables:
            raise AriReply(404, "Provided variable was not found")
        return {"value": variables[q["variable"]]}

    def _set_var(self, op: Any, path: dict[str, str], q: dict[str, str]) -> None:
        ch = self._channel(path["channelId"])
        ch.variables[q["variable"]] = q.get("value", "")
        self._emit(ch.app, "ChannelVarset", channel=ch.model(), variable=q["variable"], value=q.get("value", ""))

    async def _external_media(self, op: Any, path: dict[str, str], q: dict[str, str]) -> dict[str, Any]:
        """ast_ari_channels_external_media: the code's rules on top of the description (pbx.md §1.4)."""
        if not q.get("app"):
            raise AriReply(400, "app cannot be empty")
        if not q.get("format"):
            raise AriReply(400, "format cannot be empty")
        encapsulation, transport = q.get("encapsulation", "rtp"), q.get("transport", "udp")
        if REQUIRED_TRANSPORT[encapsulation] != transport:
            raise AriReply(400, f"{encapsulation} encapsulation requires {REQUIRED_TRANSPORT[encapsulation]}")
        if q.get("connection_type", "client") == "server" and transport != "websocket":
            raise AriReply(400, "connection_type server is only for websocket")
        if encapsulation == "audiosocket" and not _is_uuid(q.get("data", "")):
            raise AriReply(400, "AudioSocket data must be a UUID")
        if encapsulation == "none":
            raise AriReply(501, "fake Asterisk models RTP and AudioSocket ExternalMedia only")
        host, sep, port = q.get("external_host", "").rpartition(":")
        if not sep or not host or not port.isdigit():
            raise AriReply(400, "external_host must be host:port")
        if encapsulation == "audiosocket":
            return await self._external_audiosocket(q, (host.strip("[]"), int(port)))
        if q["format"] not in PT_BY_FORMAT:
            raise AriReply(501, f"fake Asterisk models ulaw/alaw media only, not {q['format']}")
        channel_id = q.get("channelId") or f"{self._epoch}.{next(self._ids)}"
        if channel_id in self.channels:
            raise AriReply(409, "Channel with that id already exists")
        ch = FakeChannel(channel_id, f"UnicastRTP/{q['external_host']}-0x{random.getrandbits(40):x}", "Down",
                         dialplan={"context": "default", "exten": "s", "priority": 1, "app_name": "AppDial2",
                                   "app_data": "(Outgoing Line)"})
        ch.rtp = ExternalMediaRtp(self, ch, (host.strip("[]"), int(port)), q["format"])
        await ch.rtp.open()
        self.media_history.append(ch.rtp)
        self.channels[ch.id] = ch
        # chan_rtp answers and the channel enters Stasis(app[,data]) (pbx.md §1.4) on its own thread, a few
        # ms after the reply: until then addChannel answers 422 (as Asterisk 22 does).
        asyncio.get_running_loop().call_later(MEDIA_STASIS_DELAY, self._media_enters_stasis, ch, q)
        return ch.model()

    async def _external_audiosocket(self, q: dict[str, str], address: tuple[str, int]) -> dict[str, Any]:
        """chan_audiosocket: `AudioSocket/<host:port>/<data>`; audiosocket_request connects (a failure is a failed
        originate: 500), audiosocket_call sends the UUID and queues ANSWER; the channel enters Stasis(app,data)."""
        channel_id = q.get("channelId") or f"{self._epoch}.{next(self._ids)}"
        if channel_id in self.channels:
            raise AriReply(409, "Channel with that id already exists")
        client = FakeAudioSocketClient(address, q["data"])
        try:
            await client.connect()
        except OSError:
            raise AriReply(500, "An internal error prevented this request from being handled") from None
        ch = FakeChannel(channel_id, f"AudioSocket/{q['external_host']}-{q['data']}", "Down",
                         dialplan={"context": "default", "exten": "s", "priority": 1, "app_name": "AppDial2",
                                   "app_data": "(Outgoing Line)"}, audiosocket=client)
        self.channels[ch.id] = ch
        asyncio.get_running_loop().call_later(MEDIA_STASIS_DELAY, self._media_enters_stasis, ch, q)
        return ch.model()

    def _media_enters_stasis(self, ch: FakeChannel, q: dict[str, str]) -> None:
        if ch.id not in self.channels:
            return
        ch.state, ch.app = "Up", q["app"]
        ch.dialplan = {"context": "default", "exten": "s", "priority": 1, "app_name": "Stasis",
                       "app_data": ",".join(filter(None, (q["app"], q.get("data"))))}
        self._emit(ch.app, "StasisStart", channel=ch.model(), args=[q["data"]] if q.get("data") else [])

    # ---- bridges -------------------------------------------------------------------------------------------

    def _bridge(self, bridge_id: str) -> FakeBridge:
        bridge = self.bridges.get(bridge_id)
        if bridge is None:
            raise AriReply(404, "Bridge not found")
        return bridge

    def _create_bridge(self, op: Any, path: dict[str, str], q: dict[str, str]) -> dict[str, Any]:
        types = q.get("type", "mixing")
        if not set(types.split(",")) <= BRIDGE_TYPES:
            raise AriReply(400, f"Invalid bridge type {types!r}")
        bridge_id = q.get("bridgeId") or f"fake-bridge-{next(self._ids)}"
        if bridge_id in self.bridges:
            raise AriReply(409, "Bridge with id already exists")
        bridge = self.bridges[bridge_id] = FakeBridge(bridge_id, q.get("name", ""), types)
        return bridge.model()

    def _destroy_bridge(self, op: Any, path: dict[str, str], q: dict[str, str]) -> None:
        bridge = self._bridge(path["bridgeId"])
        for channel_id in list(bridge.channels):
            self._leave_bridge(self.channels[channel_id])
        del self.bridges[bridge.id]
        for app in list(self.sockets):
            self._emit(app, "BridgeDestroyed", bridge=bridge.model())

    def _add_channel(self, op: Any, path: dict[str, str], q: dict[str, str]) -> None:
        bridge = self._bridge(path["bridgeId"])
        channels = []
        for channel_id in q["channel"].split(","):
            ch = self.channels.get(channel_id)
            if ch is None:
                raise AriReply(400, "Channel not found")
            if ch.app is None:
                raise AriReply(422, "Channel not in Stasis application")
            channels.append(ch)
        for ch in channels:
            self._leave_bridge(ch)
            ch.bridge = bridge.id
            bridge.channels.append(ch.id)
            self._emit(ch.app, "ChannelEnteredBridge", channel=ch.model(), bridge=bridge.model())
        if "mixing" in bridge.types.split(","):
            for channel_id in bridge.channels:
                rtp = self.channels[channel_id].rtp
                if rtp is not None and len(bridge.channels) > 1:
                    rtp.start()

    def _remove_channel(self, op: Any, path: dict[str, str], q: dict[str, str]) -> None:
        bridge = self._bridge(path["bridgeId"])
        for channel_id in q["channel"].split(","):
            if channel_id not in bridge.channels:
                raise AriReply(422, "Channel not in this bridge")
            self._leave_bridge(self.channels[channel_id])

    # ---- media through a mixing bridge ---------------------------------------------------------------------

    def _mix_for(self, ch: FakeChannel) -> bytes | None:
        """The frame the bridge gives `ch`: what the other parties say (summed), or None when nobody speaks."""
        bridge = self.bridges.get(ch.bridge or "")
        if bridge is None or "mixing" not in bridge.types:
            return None
        frames = [o.source() for o in (self.channels[i] for i in bridge.channels if i != ch.id) if o.source]
        if not frames:
            return None
        mixed = frames[0]
        for frame in frames[1:]:
            mixed = audioop.add(mixed, frame, 2)
        return mixed

    def _deliver(self, ch: FakeChannel, item: tuple[float, bytes]) -> None:
        bridge = self.bridges.get(ch.bridge or "")
        if bridge is None or "mixing" not in bridge.types:
            return
        for other in bridge.channels:
            if other != ch.id:
                self.channels[other].heard.append(item)
