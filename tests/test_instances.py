"""N instances from one configuration: SIP_TO_AI_INSTANCE offsets the ports; RTP ports come from one shared range."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from bridge.bench.capacity import free_port, wait_sip
from bridge.caller import place_calls


async def _echo_calls(ports: list[int]) -> list[list]:
    await asyncio.gather(*(wait_sip(p) for p in ports))
    return await asyncio.gather(*(place_calls(f"sip:echo@127.0.0.1:{p}", calls=2, seconds=1.5) for p in ports))


def test_two_instances_of_one_configuration_serve_side_by_side(tmp_path):
    base = free_port(2)
    env = {**os.environ, "SIP_PORT": str(base), "SIP_DOMAIN": "127.0.0.1", "RTP_PORT_MIN": "47300",
           "RTP_PORT_MAX": "47309", "ECHO_DELAY_MS": "100", "LOG_FORMAT": "text"}  # 5 RTP ports for 4 calls
    procs = [subprocess.Popen([sys.executable, "-m", "bridge", "serve"], env={**env, "SIP_TO_AI_INSTANCE": str(n)},
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=(tmp_path / f"{n}.log").open("wb"))
             for n in (0, 1)]
    try:
        figures = asyncio.run(_echo_calls([base, base + 1]))
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
    assert all(f.answered and f.echo_delay_ms is not None for calls in figures for f in calls)
    for n in (0, 1):
        assert f"instance {n} (SIP_TO_AI_INSTANCE)" in (tmp_path / f"{n}.log").read_text()
