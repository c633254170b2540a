"""SIGTERM to a real `sip-to-ai serve` process while a call is live: /ready and the metrics show the drain."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

from prometheus_client.parser import text_string_to_metric_families

from bridge import caller as uac
from tests.ops.harness import get
from tests.sip.sip_live import RawClient, status_of


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def metric(admin: str, name: str) -> float:
    _, text = await get(f"{admin}/metrics")
    return next((s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name), 0.0)


async def test_sigterm_turns_ready_to_503_while_the_live_call_finishes(tmp_path):
    sip, admin_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    admin = f"http://127.0.0.1:{admin_port}"
    env = dict(os.environ, SIP_PORT=str(sip), ADMIN_LISTEN=f"127.0.0.1:{admin_port}", RTP_PORT_MIN="47400",
               RTP_PORT_MAX="47599", SHUTDOWN_DRAIN_SEC="10", LOG_LEVEL="info")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bridge", "serve", cwd=tmp_path, env=env,
                                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            try:
                if (await get(f"{admin}/ready"))[0] == 200:
                    break
            except OSError:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the admin endpoint never came up")
        call = asyncio.create_task(uac.place_calls(f"sip:echo@127.0.0.1:{sip}", calls=1, seconds=3.0))
        for _ in range(100):
            if await metric(admin, "sip_to_ai_calls_active") == 1:
                break
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # the real signal, to the real process
        for _ in range(100):
            status, body = await get(f"{admin}/ready")
            if status == 503:
                break
            await asyncio.sleep(0.02)
        assert (status, body) == (503, "not ready: shutting down\n")
        assert await metric(admin, "sip_to_ai_draining") == 1 and await metric(admin, "sip_to_ai_ready") == 0
        options = await RawClient.open()
        try:
            options.options(("127.0.0.1", sip))
            assert status_of(await options.final(1.0)) == 503  # no new calls while draining
        finally:
            options.close()
        (figures,) = await call
        assert figures.answered and figures.ended_by == "caller" and figures.received >= 140  # it finished
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.stderr is not None and b"shutting down" in await proc.stderr.read()
