"""ARI over aiohttp: the REST calls the adapter makes, and the events websocket with reconnect and backoff."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from bridge.errors import BridgeError, ParseError
from bridge.pbx.ari.models import AriEvent, Bridge, Channel, parse_event_text

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 10.0  # seconds for one REST call; Asterisk answers in milliseconds unless it is stuck
HEARTBEAT = 15.0  # websocket ping interval: a dead Asterisk host is noticed within ~2 of these
BACKOFF_INITIAL = 0.5  # first reconnect delay (seconds), jittered, as websockets' client does
BACKOFF_FACTOR = 1.6
BACKOFF_MAX = 10.0  # an Asterisk restart takes a few seconds: do not wait much longer than that


class AriError(BridgeError):
    """A REST call failed: `status` is the HTTP status, or None when Asterisk could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def backoff(
    initial: float = BACKOFF_INITIAL, factor: float = BACKOFF_FACTOR, maximum: float = BACKOFF_MAX
) -> Iterator[float]:
    """Reconnect delays: a jittered first one, then growing by `factor` up to `maximum`, forever."""
    yield random.random() * initial
    delay = initial
    while True:
        yield delay
        delay = min(maximum, delay * factor)


def base_url(ari_url: str) -> str:
    """`http://host:8088` or `http://host:8088/ari` to the REST base ending in `/ari`."""
    parts = urlsplit(ari_url.rstrip("/"))
    path = parts.path if parts.path.endswith("/ari") else parts.path + "/ari"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def events_url(rest_base: str) -> str:
    parts = urlsplit(rest_base)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path + "/events", "", ""))


def _model(parse: Callable[[Any], Any], data: Any, what: str) -> Any:
    """Parse a reply body; a body that does not fit its model is an AriError like any failed call."""
    try:
        return parse(data)
    except ParseError as exc:
        raise AriError(f"malformed {what} from Asterisk: {exc}") from None


def _params(values: Mapping[str, Any]) -> dict[str, str]:
    """Query parameters: None dropped, booleans as Asterisk spells them."""
    out: dict[str, str] = {}
    for key, value in values.items():
        if value is None:
            continue
        out[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


class AriClient:
    """One Asterisk, one Stasis application. Use as `async with AriClient(...) as ari:`."""

    def __init__(self, url: str, username: str, password: str, app: str) -> None:
        self.base = base_url(url)
        self.app = app
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}"}  # RFC 7617; never logged
        self._session: aiohttp.ClientSession | None = None
        self.connected = False  # the events websocket is up (readiness)

    async def __aenter__(self) -> AriClient:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        self._session = aiohttp.ClientSession(headers=self._headers, timeout=timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("AriClient used outside `async with`")
        return self._session

    async def request(self, method: str, path: str, **params: Any) -> Any:
        """One REST call; returns the decoded JSON body, or None for 204.

        Raises:
            AriError: a 4xx/5xx answer (with its status), or Asterisk unreachable (status None).
        """
        url = self.base + path
        try:
            async with self.session.request(method, url, params=_params(params)) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    detail = body.decode("utf-8", "replace")[:200]
                    raise AriError(f"{method} {path}: {resp.status} {detail}", resp.status)
                log.debug("> %s %s %s -> %d", method, path, _params(params), resp.status)
                return json.loads(body) if body else None
        except (aiohttp.ClientError, TimeoutError, ValueError, RecursionError) as exc:  # ValueError: bad JSON
            raise AriError(f"{method} {path}: {type(exc).__name__}: {exc}") from None

    # ---- the calls the adapter makes (channels.json, bridges.json) ------------------------------------------

    async def answer(self, channel_id: str) -> None:
        await self.request("POST", f"/channels/{channel_id}/answer")

    async def hangup(self, channel_id: str, reason: str = "normal") -> None:
        await self.request("DELETE", f"/channels/{channel_id}", reason=reason)

    async def get_channel(self, channel_id: str) -> Channel | None:
        """The channel, or None when Asterisk does not know it (404)."""
        try:
            return _model(Channel.parse, await self.request("GET", f"/channels/{channel_id}"), "Channel")
        except AriError as exc:
            if exc.status == 404:
                return None
            raise

    async def list_channels(self) -> list[Channel]:
        reply = await self.request("GET", "/channels")
        return [_model(Channel.parse, c, "Channel") for c in (reply if isinstance(reply, list) else [None])]

    async def get_variable(self, channel_id: str, name: str) -> str | None:
        """A channel variable's value, or None when it is not set (404)."""
        try:
            reply = await self.request("GET", f"/channels/{channel_id}/variable", variable=name)
        except AriError as exc:
            if exc.status == 404:
                return None
            raise
        return str(reply.get("value", "")) if isinstance(reply, dict) else None

    async def set_variable(self, channel_id: str, name: str, value: str) -> None:
        await self.request("POST", f"/channels/{channel_id}/variable", variable=name, value=value)

    async def continue_in_dialplan(
        self, channel_id: str, context: str | None = None, extension: str | None = None, priority: int | None = None
    ) -> None:
        await self.request(
            "POST", f"/channels/{channel_id}/continue", context=context, extension=extension, priority=priority
        )

    async def redirect(self, channel_id: str, endpoint: str) -> None:
        await self.request("POST", f"/channels/{channel_id}/redirect", endpoint=endpoint)

    async def external_media(self, channel_id: str, external_host: str, fmt: str, **transport: str) -> Channel:
        """An ExternalMedia channel towards `external_host`; it enters our app too. RTP by default; `transport`
        adds encapsulation/transport/data for AudioSocket or chan_websocket (pbx.md §1.4)."""
        reply = await self.request(
            "POST",
            "/channels/externalMedia",
            app=self.app,
            external_host=external_host,
            format=fmt,
            channelId=channel_id,
            **transport,
        )
        return _model(Channel.parse, reply, "Channel")

    async def create_bridge(self, bridge_id: str, name: str) -> Bridge:
        reply = await self.request("POST", "/bridges", type="mixing", bridgeId=bridge_id, name=name)
        return _model(Bridge.parse, reply, "Bridge")

    async def add_channels(self, bridge_id: str, channel_ids: list[str]) -> None:
        await self.request("POST", f"/bridges/{bridge_id}/addChannel", channel=",".join(channel_ids))

    async def delete_bridge(self, bridge_id: str) -> None:
        await self.request("DELETE", f"/bridges/{bridge_id}")

    async def list_bridges(self) -> list[Bridge]:
        reply = await self.request("GET", "/bridges")
        return [_model(Bridge.parse, b, "Bridge") for b in (reply if isinstance(reply, list) else [None])]

    # ---- the events websocket (events.json `eventWebsocket`) -------------------------------------------------

    async def listen(
        self,
        on_event: Callable[[AriEvent], None],
        on_connect: Callable[[bool], Awaitable[None]],
        ready: asyncio.Event | None = None,
    ) -> None:
        """Receive events forever, reconnecting with backoff; runs until cancelled.

        `on_connect(reconnected)` is awaited after each successful connect (before events are read again),
        so the owner can check which of its channels survived the gap.
        """
        delays = backoff()
        connected_before = False
        while True:
            try:
                async with self.session.ws_connect(
                    events_url(self.base), params={"app": self.app}, heartbeat=HEARTBEAT
                ) as ws:
                    log.info("= ari events connected app=%s%s", self.app, " (reconnected)" if connected_before else "")
                    delays = backoff()
                    await on_connect(connected_before)
                    connected_before = self.connected = True
                    if ready is not None:
                        ready.set()
                    try:
                        await self._read(ws, on_event)
                    finally:
                        self.connected = False
                log.warning("x ari events websocket closed (%s); reconnecting", ws.close_code)
            except aiohttp.WSServerHandshakeError as exc:
                # 401: wrong ARI_USERNAME/ARI_PASSWORD; keep trying, ari.conf may be fixed and reloaded
                (log.error if exc.status in (401, 403) else log.warning)(
                    "! ari events refused: HTTP %s %s; retrying", exc.status, exc.message
                )
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.warning("! ari events: %s: %s; reconnecting", type(exc).__name__, exc)
            await asyncio.sleep(next(delays))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, on_event: Callable[[AriEvent], None]) -> None:
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            try:
                event = parse_event_text(msg.data)
            except ParseError as exc:
                log.warning("! ari event dropped: %s", exc)
                continue
            on_event(event)
