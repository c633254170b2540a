"""The process: one MediaCore shared by every configured ingress, run in one TaskGroup, drained on SIGTERM.

Shutdown steps: 1. stop taking calls (SIP answers 503, ARI continues new channels in the dialplan);
2. let live calls finish until SHUTDOWN_DRAIN_SEC; 3. cancel the ingresses, which hang up what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from bridge.call import MediaCore
from bridge.config import Settings
from bridge.listen import ADMIN_CONNECTIONS, call_cap, descriptors_needed, ensure_descriptors
from bridge.media import LegTransfer
from bridge.ops.service import Ops

log = logging.getLogger("bridge")

Ingress = Callable[[MediaCore, Settings], Coroutine[Any, Any, None]]  # runs until cancelled


def ingresses(settings: Settings) -> list[tuple[str, Ingress]]:
    """The (name, serve function) of every ingress the settings switch on, wired to each other where needed.

    The ESL inbound control is the SIP ingress's LegTransfer (uuid_transfer of a FreeSWITCH-bridged call's
    A-leg): it is handed over here so that bridge/sip and bridge/pbx never import each other.
    """
    found: list[tuple[str, Ingress]] = []
    leg_transfer: LegTransfer | None = None
    if settings.esl_inbound:
        from bridge.pbx.esl.inbound import EslInboundControl

        control = EslInboundControl(settings)
        leg_transfer = control
        async def run_inbound(core: MediaCore, settings: Settings) -> None:
            core.link("esl-inbound", control.connected.is_set)
            await control.run()

        found.append(("esl-inbound", run_inbound))
    if settings.sip_enabled:
        from bridge.sip.transport import serve_sip

        found.append(("sip", functools.partial(serve_sip, leg_transfer=leg_transfer)))
    if settings.ari_url:
        from bridge.pbx.ari.app import serve_ari

        found.append(("ari", serve_ari))
    if settings.esl_listen:
        from bridge.pbx.esl.server import serve_esl

        found.append(("esl", serve_esl))
    if settings.audiosocket_listen:
        from bridge.pbx.audiosocket.server import serve_audiosocket

        found.append(("audiosocket", serve_audiosocket))
    if settings.websocket_listen:
        from bridge.pbx.websocket.server import serve_websocket

        found.append(("websocket", serve_websocket))
    return found


def loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """EVENT_LOOP: uvloop's loop (auto: when installed), or None for asyncio's own."""
    if settings.event_loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None  # auto without uvloop (EVENT_LOOP=uvloop without it is refused by the configuration)
    return uvloop.new_event_loop


def describe(settings: Settings) -> list[str]:
    """The start-up lines: where the adapter listens, which agent it uses, how to call it."""
    lines = [f"instance {settings.instance} (SIP_TO_AI_INSTANCE)"] if settings.instance is not None else []
    lines += [f"agent: {settings.ai_vendor}" + (" (set AI_VENDOR and its key for a real AI)"
                                               if settings.ai_vendor == "echo" else "")]
    if settings.sip_enabled:
        where = f"{settings.sip_domain}:{settings.sip_port}"
        lines.append(f"SIP: {settings.sip_transport_type} {where}; "
                     f"call it: .venv/bin/sip-to-ai call sip:echo@{where}")
        if any(net.prefixlen == 0 for net in settings.sip_allowed_cidrs):
            lines.append("WARNING: SIP_ALLOWED_CIDRS admits every address: anyone can place calls that spend API money")
    if settings.ari_url:
        lines.append(f"ARI: Stasis application {settings.ari_app!r} at {settings.ari_url}, "
                     f"ExternalMedia over {settings.ari_media}")
    if settings.esl_listen:
        lines.append("ESL: outbound socket on {}:{}".format(*settings.esl_listen))
    if settings.esl_inbound:
        lines.append("ESL: inbound control to {}:{}".format(*settings.esl_inbound))
    if settings.audiosocket_listen:
        lines.append("AudioSocket: listening on {}:{}".format(*settings.audiosocket_listen))
    if settings.websocket_listen:
        lines.append("chan_websocket: listening on ws://{}:{}/".format(*settings.websocket_listen))
    lines.append(f"RTP: {settings.media_host} ports {settings.rtp_port_min}-{settings.rtp_port_max}")
    if settings.admin_listen is None:
        lines.append("admin endpoint: off (ADMIN_LISTEN=off)")
    lines.append(f"event loop: {type(asyncio.get_running_loop()).__module__.split('.')[0]}")
    return lines


def realtime_priority(priority: int) -> str:
    """REALTIME_PRIORITY: run this process under SCHED_RR at `priority` (as Asterisk -p and FreeSWITCH -rp do), so
    that other programs' load on the host cannot delay a tick. Returns the start-up line; never raises."""
    if not priority:
        return ""
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(priority))
    except (OSError, AttributeError) as exc:  # no CAP_SYS_NICE (or not Linux): run at normal priority
        return f"WARNING: REALTIME_PRIORITY={priority} not applied ({exc}); running at normal priority"
    return f"scheduling: SCHED_RR priority {priority} (REALTIME_PRIORITY)"


def connection_caps(settings: Settings) -> list[int]:
    """The connection cap of every TCP listener the settings switch on (bridge/listen.py)."""
    from bridge.sip.transport import MAX_STREAMS

    caps = [MAX_STREAMS] if settings.sip_enabled and settings.sip_transport_type != "udp" else []
    caps += [call_cap(settings.max_calls) for on in (settings.esl_listen, settings.audiosocket_listen,
                                                     settings.websocket_listen) if on]
    return caps + ([ADMIN_CONNECTIONS] if settings.admin_listen else [])


async def serve(settings: Settings, core: MediaCore | None = None) -> None:
    """Run every configured ingress until SIGTERM/SIGINT, then drain."""
    for line in (realtime_priority(settings.realtime_priority),
                 ensure_descriptors(descriptors_needed(settings.max_calls, connection_caps(settings)))):
        if line:
            (log.warning if line.startswith("WARNING") else log.info)(line)
    core = core or MediaCore(settings)
    ops = Ops(core, settings)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    for line in describe(settings) + ops.describe():
        log.info(line)
    for name in ("UPLINK_BUF_FRAMES", "DOWNLINK_BUF_FRAMES"):
        if name in os.environ:
            log.info("%s is accepted but sip-to-ai sizes its own buffers (1 s uplink, PLAYOUT_MAX_SECONDS)", name)
    async with asyncio.TaskGroup() as tg:
        ops_task = tg.create_task(ops.run(), name="ops")
        tasks = [tg.create_task(fn(core, settings), name=name) for name, fn in ingresses(settings)]
        if not tasks:
            log.warning("no ingress is configured (SIP_ENABLED=false and no ARI_URL, ESL_LISTEN, AUDIOSOCKET_LISTEN "
                        "or WEBSOCKET_LISTEN)")
        await stop.wait()
        log.info("= shutting down: no new calls; %d live call(s) may finish within %.0f s",
                 len(core.calls), settings.drain_seconds)
        core.draining = True
        await core.wait_idle(settings.drain_seconds)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await ops.flush(2.0)  # the last calls' webhooks, briefly
        ops_task.cancel()
