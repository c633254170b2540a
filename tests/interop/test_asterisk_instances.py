"""Three sip-to-ai processes serving one real Asterisk 22 through asterisk/instances.conf (one Stasis app each).

SIP_TO_AI_INSTANCE=0,1,2 register sip-to-ai-0, -1, -2; the dialplan starts each call at the next instance in
turn and moves on when Stasis() FAILED (no process connected) or the instance refused (SIP_TO_AI_REFUSED). In order:

1. spread: 6 calls land 2 on each instance;
2. drain: instance 2 gets SIGTERM with its 2 calls live; 3 more calls arrive, the one whose turn is instance 2
   is refused by it and served by the next; its own calls finish whole and it exits;
3. crash: instance 1 is SIGKILLed; 3 more calls are all served by instance 0 (Stasis() fails at once for the
   dead ones, so the failover costs no time).

Every call's far end records what came back: each must hold the echo. Nothing is left in Asterisk at the end.
Figures print with -s.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from tests.interop.asterisk_peer import AsteriskPeer, _replace, skip_reason
from tests.interop.instances import Instances
from tests.interop.test_asterisk import SILENT_RMS, aget, nothing_left, read_wav, rms, wait_for_log

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")

SECONDS = 3  # each call: the far end records this long, then hangs up


@pytest.fixture
def asterisk(tmp_path: Path):
    (tmp_path / "asterisk").mkdir()
    peer = AsteriskPeer(tmp_path / "asterisk", record_seconds=SECONDS)
    conf = peer.dir / "etc" / "instances.conf"
    conf.write_text(_replace(conf.read_text(), "SIP_TO_AI_INSTANCES", "3"))
    peer.start()
    yield peer
    peer.stop()


async def until(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(what)
        await asyncio.sleep(0.05)


async def exists(peer: AsteriskPeer, path: str) -> bool:
    try:
        await aget(peer, path)
        return True
    except urllib.error.HTTPError:
        return False


async def place(peer: AsteriskPeer, k: int) -> float:
    """Call k into [sip-to-ai-instances]; seconds until an instance bridged it (its `<id>-bridge` exists)."""
    t0 = time.monotonic()
    await asyncio.to_thread(peer.post, f"/channels?endpoint=Local/rec-{k}@interop-tone&context=sip-to-ai-instances"
                                       f"&extension=s&priority=1&formats=ulaw&channelId=call-{k}")
    await until(lambda: exists(peer, f"/bridges/call-{k}-bridge"), 10, f"call {k} never bridged")
    return time.monotonic() - t0


async def no_calls(peer: AsteriskPeer) -> None:
    await until(lambda: _empty(peer), 2 * SECONDS + 5, "calls never ended")


async def _empty(peer: AsteriskPeer) -> bool:
    return not await aget(peer, "/channels")


async def test_three_instances_spread_drain_and_fail_over_in_the_dialplan(tmp_path, asterisk):
    env = {"ARI_URL": asterisk.url, "ARI_USERNAME": asterisk.username, "ARI_PASSWORD": asterisk.password,
           "SIP_ENABLED": "false", "MEDIA_ADDRESS": "127.0.0.1", "RTP_PORT_MIN": "30000", "RTP_PORT_MAX": "39999",
           "ECHO_DELAY_MS": "100", "SHUTDOWN_DRAIN_SEC": "10"}
    with Instances(tmp_path, 3, env) as inst:
        for n in range(3):
            await until(lambda n=n: exists(asterisk, f"/applications/sip-to-ai-{n}"), 20, f"sip-to-ai-{n} missing")
        # 1. spread
        setup = [await place(asterisk, k) for k in range(6)]
        await asyncio.to_thread(inst.wait_calls, 6)
        spread = [inst.calls(n) for n in range(3)]

        # 2. drain instance 2 with its calls live; 3 more calls
        t0 = time.monotonic()
        inst.drain(2)
        await asyncio.to_thread(inst.wait_log, 2, "shutting down")
        setup += [await place(asterisk, k) for k in range(6, 9)]
        rc = await asyncio.to_thread(inst.procs[2].wait, 15)
        drain_s = time.monotonic() - t0
        await asyncio.to_thread(inst.wait_calls, 9)
        after_drain = [inst.calls(n) for n in range(3)]
        await no_calls(asterisk)

        # 3. crash instance 1; 3 more calls
        inst.kill(1)
        failover = [await place(asterisk, k) for k in range(9, 12)]
        await no_calls(asterisk)
        await asyncio.to_thread(inst.wait_calls, 12)
        after_crash = [inst.calls(n) for n in range(3)]
        await nothing_left(asterisk)
        await wait_for_log(asterisk, "sip-to-ai-2 unavailable: SUCCESS shutting down")
        await wait_for_log(asterisk, "sip-to-ai-1 unavailable: FAILED")

    echo_s = [sum(rms(b) > SILENT_RMS for b in _blocks(asterisk, k)) * 0.02 for k in range(12)]
    ended_on_2 = inst.log(2).read_text().count("x call ended")
    print(f"\nreal Asterisk 22, 3 instances: calls per instance {spread} after 6 calls, {after_drain} after the "
          f"drain of instance 2 (exit {rc} after {drain_s:.1f} s, {ended_on_2} of its calls ended), {after_crash} "
          f"after the crash of instance 1; setup s p50 {np.median(setup):.2f} max {max(setup):.2f}, after the "
          f"crash {np.round(failover, 2).tolist()}; echo s per call {np.round(echo_s, 1).tolist()}")
    assert spread == [2, 2, 2]
    assert rc == 0 and ended_on_2 == 2 and after_drain == [4, 3, 2]  # the refused call went on to instance 0
    assert after_crash == [7, 3, 2]
    assert all(s > SECONDS - 1.0 for s in echo_s)  # every call, on whichever instance, was echoed throughout


def _blocks(peer: AsteriskPeer, k: int) -> np.ndarray:
    pcm = read_wav(peer.recordings / f"rec-{k}.wav")
    return pcm[: len(pcm) // 160 * 160].reshape(-1, 160)
