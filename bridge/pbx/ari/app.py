"""The Stasis application: each caller channel entering it becomes a core call bridged to an ExternalMedia channel."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid as uuidlib
from collections.abc import Awaitable, Mapping
from typing import Any
from urllib.parse import urlsplit

from bridge.call import Call, MediaCore
from bridge.config import Settings
from bridge.errors import ConfigError
from bridge.media import Address, CallInfo, Codec, MediaLeg
from bridge.pbx.ari.client import AriClient, AriError
from bridge.pbx.ari.models import (
    ApplicationReplaced,
    AriEvent,
    Channel,
    ChannelDestroyed,
    ChannelDtmfReceived,
    StasisEnd,
    StasisStart,
)

log = logging.getLogger(__name__)

REFUSED_VARIABLE = "SIP_TO_AI_REFUSED"  # set on a channel continued in the dialplan because no call could start
MEDIA_TECHNOLOGIES = ("UnicastRTP", "AudioSocket", "WebSocket")  # ExternalMedia channels: never callers
CODECS = {"ulaw": Codec.PCMU, "alaw": Codec.PCMA}  # ExternalMedia RTP formats the G.711 core speaks
CLEANUP_TIMEOUT = 5.0  # seconds for the DELETEs that release one call in Asterisk
MEDIA_STASIS_TIMEOUT = 5.0  # seconds for the ExternalMedia channel to enter the app (a few ms on loopback)
MEDIA_STASIS_POLL = 0.1  # seconds between addChannel attempts when its StasisStart has not been seen
ANY_ADDRESS = ("0.0.0.0", "::", "")


class AriCall:
    """One caller channel's resources in Asterisk, and its CallControl (hang-up and transfer)."""

    def __init__(self, ari: AriClient, settings: Settings, channel: Channel) -> None:
        self.ari = ari
        self.settings = settings
        self.channel = channel
        self.media_id = f"{channel.id}-media"  # ExternalMedia channel id, derived from the call's id
        self.bridge_id = f"{channel.id}-bridge"
        self.call: Call | None = None
        self.media_created = False
        self.bridge_created = False
        self.gone_reason = ""  # set when Asterisk says the caller left (StasisEnd, ChannelDestroyed, 404)
        self.media_in_stasis = asyncio.Event()  # its StasisStart: only then may it join a bridge (else 422)
        self.releasing = False

    def gone(self, reason: str) -> None:
        """The caller's channel left our application: end the call (once)."""
        if not self.gone_reason:
            self.gone_reason = reason
        if self.call is not None:
            self.call.end(self.gone_reason)

    async def hangup(self, reason: str) -> None:
        """CallControl: DELETE the caller's channel (already gone is fine). Never raises: the call ends anyway."""
        try:
            await _tolerate_gone(self.ari.hangup(self.channel.id, "normal"))
        except AriError as exc:
            log.warning("! ari call %s: hang-up failed: %s", self.channel.id, exc)

    async def transfer(self, destination: str) -> None:
        """CallControl: `continue` in the dialplan (context/extension) or `redirect` to an endpoint, per config.

        A transfer Asterisk refuses (e.g. 422: redirect to another technology) hangs the caller up rather
        than leave it in Stasis with nothing on the other end.
        """
        s = self.settings
        target = destination or s.transfer_extension
        try:
            if s.ari_transfer_mode == "redirect":
                if not target:
                    raise AriError("redirect needs a TECH/resource destination or TRANSFER_EXTENSION")
                await self.ari.redirect(self.channel.id, target)
            elif target:
                await self.ari.continue_in_dialplan(self.channel.id, s.transfer_context, target, 1)
            else:
                await self.ari.continue_in_dialplan(self.channel.id)
        except AriError as exc:
            log.warning("! ari call %s: transfer to %r failed: %s; hanging up", self.channel.id, target, exc)
            await self.hangup("transfer failed")


async def _tolerate_gone(request: Awaitable[Any]) -> None:
    """Await a REST call whose target may already be gone (404 is success for a DELETE)."""
    try:
        await request
    except AriError as exc:
        if exc.status != 404:
            raise


class StasisApp:
    """Turns the application's events into calls and releases what each call made in Asterisk."""

    def __init__(self, core: MediaCore, settings: Settings, ari: AriClient, tg: asyncio.TaskGroup) -> None:
        self.core = core
        self.settings = settings
        self.ari = ari
        self.tg = tg
        self.codec = CODECS[settings.ari_format]
        self.calls: dict[str, AriCall] = {}  # by caller channel id
        self.media_ids: set[str] = set()
        self.orphans: set[tuple[str, str]] = set()  # ("channel"|"bridge", id) a DELETE could not reach

    # ---- events ---------------------------------------------------------------------------------------------

    def on_event(self, event: AriEvent) -> None:
        match event:
            case StasisStart(channel=ch) if ch.id in self.media_ids or ch.technology in MEDIA_TECHNOLOGIES:
                self._media_entered(ch.id)  # our own ExternalMedia channel entering the app: not a call
            case StasisStart(channel=ch, args=args) if ch.id not in self.calls:
                log.info("< StasisStart %s (%s) from %r args=%s", ch.id, ch.name, ch.caller_number, list(args))
                self._start(ch, args)
            case StasisEnd(channel=ch) | ChannelDestroyed(channel=ch):
                self._left(ch, type(event).__name__)
            case ChannelDtmfReceived(channel=ch, digit=digit) if ch.id in self.calls:
                call = self.calls[ch.id].call
                if call is not None:
                    call.dtmf(digit)
            case ApplicationReplaced():
                log.error("! another websocket took over ARI app %r: give each adapter its own ARI_APP",
                          self.settings.ari_app)

    def _start(self, ch: Channel, args: tuple[str, ...]) -> None:
        session = AriCall(self.ari, self.settings, ch)
        self.calls[ch.id] = session
        self.tg.create_task(self._serve(session, args), name=f"ari-call-{ch.id}")

    def _media_entered(self, channel_id: str) -> None:
        for session in self.calls.values():
            if session.media_id == channel_id:
                session.media_in_stasis.set()

    def _left(self, ch: Channel, why: str) -> None:
        if ch.id in self.calls:
            self.calls[ch.id].gone(f"caller left ({why})")
            return
        for session in self.calls.values():  # the ExternalMedia channel vanished under a live call
            if session.media_id == ch.id and not session.releasing:
                session.gone(f"media channel ended ({why})")

    async def on_connect(self, reconnected: bool) -> None:
        """Serve callers already waiting in Stasis(ARI_APP): their StasisStart was lost while the websocket was
        down, or while this process was restarting. After a reconnect, first end the calls whose channel is gone
        and retry the DELETEs that failed meanwhile."""
        if not reconnected:
            await self._adopt()
            return
        for session in list(self.calls.values()):
            try:
                if await self.ari.get_channel(session.channel.id) is None:
                    session.gone("caller channel gone while ARI was disconnected")
            except AriError as exc:
                log.warning("! ari: cannot check channel %s: %s", session.channel.id, exc)
        for kind, ident in sorted(self.orphans):
            await self._delete(kind, ident)
        await self._adopt()

    async def _adopt(self) -> None:
        """Serve callers that entered Stasis(ARI_APP) while the websocket was down (their StasisStart is lost)."""
        try:
            channels = await self.ari.list_channels()
        except AriError as exc:
            log.warning("! ari: cannot list channels: %s", exc)
            return
        for ch in channels:
            app, *args = ch.app_data.split(",")
            if ch.app_name != "Stasis" or app != self.settings.ari_app or ch.id in self.calls:
                continue
            if ch.id in self.media_ids or ch.technology in MEDIA_TECHNOLOGIES:
                continue
            log.info("< %s (%s) entered %s while ARI was disconnected: serving it", ch.id, ch.name, app)
            for kind, ident in (("channel", f"{ch.id}-media"), ("bridge", f"{ch.id}-bridge")):
                await self._delete(kind, ident)  # left by a process that died under this caller; 404 when not
            self._start(ch, tuple(args))

    # ---- one call -------------------------------------------------------------------------------------------

    async def _serve(self, session: AriCall, args: tuple[str, ...]) -> None:
        cancelled = False
        try:
            await self._setup_and_run(session, args)
        except AriError as exc:
            log.warning("! ari call %s: %s", session.channel.id, exc)
            if session.call is not None:
                session.call.reason = session.call.reason or str(exc)
            if not session.gone_reason:  # setup failed under a caller still there: let the dialplan route it
                with contextlib.suppress(AriError):
                    await self._refuse(session.channel, f"setup failed: {exc}")
        except asyncio.CancelledError:
            cancelled = True  # shutdown: hang the caller up below, then re-raise
            raise
        finally:
            # The core lets go of the call before this cleanup: a shutdown arriving now must not cut the DELETEs
            # short (a bridge would stay in Asterisk). The release is bounded by CLEANUP_TIMEOUT.
            release = asyncio.ensure_future(self._release(session, hangup_caller=cancelled))
            try:
                await asyncio.shield(release)
            except asyncio.CancelledError:
                await release
                raise

    async def _setup_and_run(self, session: AriCall, args: tuple[str, ...]) -> None:
        ch = session.channel
        refused = self.core.admit("ari")
        if refused is not None:
            await self._refuse(ch, refused)
            return
        if ch.state != "Up":
            await self.ari.answer(ch.id)
        info = CallInfo(ch.id, "ari", ch.caller_number, ch.exten, await self._metadata(ch, args))

        async def refuse(exc: Exception) -> None:
            await self._refuse(ch, f"{type(exc).__name__}: {exc}")

        async def connect(call: Call) -> None:
            session.call = call
            await self._bridge_media(session, call)

        leg = MediaLeg(remote=None, codec=self.codec, stream=self.settings.ari_media != "rtp")
        reason = await self.core.serve_call(info, leg, session, refuse=refuse, connect=connect,
                                            gone=lambda: session.gone_reason)
        if reason is not None:
            log.info("x ari call %s ended: %s", ch.id, reason)

    async def _bridge_media(self, session: AriCall, call: Call) -> None:
        """ExternalMedia towards the call's media (ARI_MEDIA), a mixing bridge with both channels."""
        if self.settings.ari_media == "rtp":
            external_host, fmt, transport = _host_port(call.local_address), self.settings.ari_format, {}
        else:
            external_host, fmt, transport = self._stream_target(session, call)
        self.media_ids.add(session.media_id)
        session.media_created = True  # from here on release() deletes it (404 if the POST failed is fine)
        media = await self.ari.external_media(session.media_id, external_host, fmt, **transport)
        session.bridge_created = True
        await self.ari.create_bridge(session.bridge_id, f"sip-to-ai {session.channel.id}")
        await self._add_when_in_stasis(session)
        if self.settings.ari_media == "rtp":
            call.update_media(MediaLeg(remote=await self._media_address(media), codec=self.codec))

    def _stream_target(self, session: AriCall, call: Call) -> tuple[str, str, dict[str, str]]:
        """(external_host, format, transport parameters) of a stream ExternalMedia channel, after telling the
        core which id its connection will present (pbx.md §1.4, resource_channels.c external_media_*).

        AudioSocket: Asterisk connects to AUDIOSOCKET_LISTEN and sends `data` (a UUID) first; format slin, which
        the AudioSocket ingress converts. chan_websocket: Asterisk connects as the client of the
        websocket_client.conf section ARI_WEBSOCKET_CLIENT and MEDIA_START names the channel id we choose here.
        """
        s = self.settings
        if s.ari_media == "audiosocket":
            assert s.audiosocket_listen is not None  # config checks it
            host, port = s.audiosocket_listen
            if host in ANY_ADDRESS:  # listening everywhere: Asterisk reaches us where RTP would
                host = s.media_host
            stream_id = str(uuidlib.uuid4())
            self.core.expect_stream(stream_id, call)
            return _host_port((host, port)), "slin", {"encapsulation": "audiosocket", "transport": "tcp",
                                                       "data": stream_id}
        self.core.expect_stream(session.media_id, call)
        return s.ari_websocket_client, s.ari_format, {"transport": "websocket", "encapsulation": "none"}

    async def _add_when_in_stasis(self, session: AriCall) -> None:
        """addChannel once the ExternalMedia channel is in Stasis.

        It enters Stasis asynchronously, after the POST returns: adding it before its StasisStart gives 422
        "Channel not in Stasis application" (seen on Asterisk 22). The StasisStart may also be lost to a
        websocket drop, so 422 is retried every MEDIA_STASIS_POLL until MEDIA_STASIS_TIMEOUT.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + MEDIA_STASIS_TIMEOUT
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(MEDIA_STASIS_POLL):
                    await session.media_in_stasis.wait()
            if session.gone_reason:
                raise AriError(f"caller left during setup ({session.gone_reason})")
            try:
                await self.ari.add_channels(session.bridge_id, [session.channel.id, session.media_id])
                return
            except AriError as exc:
                if exc.status != 422 or loop.time() > deadline:
                    raise

    async def _media_address(self, media: Channel) -> Address:
        """UNICASTRTP_LOCAL_ADDRESS/PORT from the ExternalMedia reply, else read as channel variables."""
        values: dict[str, str] = {}
        for name in ("UNICASTRTP_LOCAL_ADDRESS", "UNICASTRTP_LOCAL_PORT"):
            value = media.channelvars.get(name) or await self.ari.get_variable(media.id, name)
            if not value:
                raise AriError(f"ExternalMedia channel {media.id} has no {name}")
            values[name] = value
        host = values["UNICASTRTP_LOCAL_ADDRESS"]
        if host in ANY_ADDRESS:  # Asterisk bound RTP to the wildcard: it is reachable where ARI is
            host = _url_host(self.ari.base)
        return host, int(values["UNICASTRTP_LOCAL_PORT"])

    async def _metadata(self, ch: Channel, args: tuple[str, ...]) -> Mapping[str, str]:
        meta = {"channel": ch.name, "caller_name": ch.caller_name, "context": ch.context, "args": ",".join(args)}
        meta.update({f"arg{i}": a for i, a in enumerate(args, 1)})
        if ch.protocol_id:
            meta["protocol_id"] = ch.protocol_id
        for name in self.settings.ari_variables:
            value = await self.ari.get_variable(ch.id, name)
            if value is not None:
                meta[name] = value
        return meta

    async def _refuse(self, ch: Channel, why: str) -> None:
        """No call: send the channel on in the dialplan, saying why, so the PBX can route it elsewhere."""
        log.warning("! ari call %s refused: %s; continuing it in the dialplan", ch.id, why)
        await self.ari.set_variable(ch.id, REFUSED_VARIABLE, why)
        await self.ari.continue_in_dialplan(ch.id)

    async def _release(self, session: AriCall, hangup_caller: bool) -> None:
        """Delete the ExternalMedia channel and the bridge, release the core call; bounded, never raises."""
        session.releasing = True
        try:
            async with asyncio.timeout(CLEANUP_TIMEOUT):
                if hangup_caller and not session.gone_reason:
                    await self._delete("channel", session.channel.id)
                if session.media_created:
                    await self._delete("channel", session.media_id)
                if session.bridge_created:
                    await self._delete("bridge", session.bridge_id)
        except TimeoutError:
            log.warning("! ari call %s: cleanup timed out", session.channel.id)
        finally:
            if session.call is not None:
                await session.call.aclose()
            self.media_ids.discard(session.media_id)
            self.calls.pop(session.channel.id, None)

    async def _delete(self, kind: str, ident: str) -> None:
        """DELETE a channel or bridge; 404 is done; unreachable is remembered and retried after reconnect."""
        request = self.ari.hangup(ident) if kind == "channel" else self.ari.delete_bridge(ident)
        try:
            await _tolerate_gone(request)
            self.orphans.discard((kind, ident))
        except AriError as exc:
            log.warning("! ari: cannot delete %s %s: %s", kind, ident, exc)
            if exc.status is None:
                self.orphans.add((kind, ident))


def _host_port(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _url_host(url: str) -> str:
    return urlsplit(url).hostname or "127.0.0.1"


async def serve_ari(core: MediaCore, settings: Settings, ready: asyncio.Event | None = None) -> None:
    """Run the Stasis application `ARI_APP` on the Asterisk at `ARI_URL` until cancelled.

    Raises:
        ConfigError: ARI_FORMAT=slin16 (ExternalMedia RTP cannot carry it back to Asterisk: dynamic PT 118
            is dropped, pbx.md §1.6; the core speaks G.711).
    """
    if settings.ari_format not in CODECS:
        raise ConfigError(
            f"ARI_FORMAT={settings.ari_format} is not supported: Asterisk drops slin16 (PT 118) sent back over "
            "ExternalMedia RTP; use ulaw or alaw"
        )
    ari = AriClient(settings.ari_url, settings.ari_username, settings.ari_password, settings.ari_app)
    core.link("ari", lambda: ari.connected)
    async with ari, asyncio.TaskGroup() as tg:
        app = StasisApp(core, settings, ari, tg)
        tg.create_task(ari.listen(app.on_event, app.on_connect, ready), name="ari-events")
