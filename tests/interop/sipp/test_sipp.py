"""sipp (Debian sip-tester), a real SIP peer, runs the scenarios in this folder against a live responder.

Skipped, with the reason, when `sipp` is not installed (`make test` installs it as root).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import shutil
import socket
from datetime import datetime
from pathlib import Path

import pytest

from bridge.ops import events as ops
from bridge.vendors.base import HangupRequest
from tests.sip.sip_live import ScriptedAgent, live_server

HERE = Path(__file__).parent
SIPP = shutil.which("sipp")
pytestmark = pytest.mark.skipif(SIPP is None, reason="sipp not installed (apt-get install sip-tester)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_media_port() -> int:
    """An even port with the three above it free too: sipp binds audio RTP/RTCP and video RTP/RTCP there."""
    for _ in range(200):
        base = random.randrange(22000, 32000, 2)  # below the ephemeral range, which any socket may take meanwhile
        socks = []
        try:
            for port in range(base, base + 4):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return base
    raise RuntimeError("no free media port block for sipp")


async def run_sipp(scenario: str, port: int, workdir: Path, timeout: float = 15.0) -> tuple[int, str]:
    """Run one call of `scenario` against 127.0.0.1:port; returns (exit code, message trace)."""
    trace = workdir / f"{scenario}.msg"
    errors = workdir / f"{scenario}.err"
    args = [SIPP, f"127.0.0.1:{port}", "-sf", str(HERE / f"{scenario}.xml"), "-m", "1", "-l", "1", "-s", "ai",
            "-i", "127.0.0.1", "-p", str(_free_port()), "-mp", str(_free_media_port()), "-nostdin",
            "-timeout", f"{int(timeout)}s", "-timeout_error", "-trace_msg", "-message_file", str(trace),
            "-trace_err", "-error_file", str(errors)]
    proc = await asyncio.create_subprocess_exec(*args, cwd=workdir, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(timeout + 5):
            _, stderr = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    text = trace.read_text(errors="replace") if trace.exists() else ""
    if proc.returncode != 0:
        err = errors.read_text(errors="replace") if errors.exists() else ""
        print(stderr.decode(errors="replace"), err, text[-3000:])
    return proc.returncode or 0, text


async def test_call_with_rtp_and_caller_bye(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="bridge.call")
    async with live_server() as server:
        code, _ = await run_sipp("call_rtp_bye", server.address[1], tmp_path)
        await asyncio.sleep(0.2)
    assert code == 0
    ended = _ended(caplog)
    assert ended and "caller hung up" in ended[0]
    assert int(re.search(r"rtp in (\d+)", ended[0]).group(1)) > 50  # sipp's pcap reached the call


async def test_ack_withheld_2xx_retransmitted_at_t1_doubling(tmp_path):
    async with live_server() as server:
        code, trace = await run_sipp("ack_withheld", server.address[1], tmp_path)
    assert code == 0
    stamps = re.findall(r"-{10,} (\d{4}-\d\d-\d\d\s+\d\d:\d\d:\d\d\.\d+)\s*\n\s*UDP message received \[\d+\] bytes :"
                        r"\s*\n\s*SIP/2\.0 200 OK[^\n]*\n(?:(?!-{10,}).*\n)*?CSeq: 1 INVITE", trace)
    times = [datetime.strptime(s.split()[0] + " " + s.split()[1], "%Y-%m-%d %H:%M:%S.%f") for s in stamps]
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
    print("2xx retransmission gaps (s):", gaps)
    assert len(gaps) >= 4
    for gap, expected in zip(gaps, [0.5, 1.0, 2.0, 4.0], strict=False):
        assert abs(gap - expected) < 0.25, gaps


async def test_cancel_before_answer_with_ringing(tmp_path):
    slow = lambda ctx: ScriptedAgent(ctx, [], connect_delay=3.0)  # noqa: E731 - the agent is still connecting
    async with live_server(slow, sip_ringing=True) as server:
        code, _ = await run_sipp("cancel", server.address[1], tmp_path)
        await asyncio.sleep(0.3)
        assert not server.core.calls and not server.core.ports.in_use
    assert code == 0


@pytest.mark.parametrize("scenario", ["options", "g729_only", "bye_no_dialog", "unknown_method", "hold_unhold",
                                      "timer_too_brief"])
async def test_scenario(scenario, tmp_path):
    async with live_server() as server:
        code, _ = await run_sipp(scenario, server.address[1], tmp_path)
    assert code == 0


async def test_adapter_bye_after_the_agent_hangs_up(tmp_path):
    agent = lambda ctx: ScriptedAgent(ctx, [(0.5, HangupRequest("goodbye"))])  # noqa: E731
    async with live_server(agent) as server:
        code, trace = await run_sipp("agent_bye", server.address[1], tmp_path)
        await asyncio.sleep(0.2)
        assert not server.core.calls
    assert code == 0
    assert re.search(r"UDP message received.*\n\s*\nBYE sip:sipp@", trace)


# -- RFC 4028 session timers, with SIP_SESSION_MIN_SE lowered so that a 3-4 s interval is accepted ------------------


def _received_at(trace: str, start_line: str) -> list[datetime]:
    """When sipp received each message whose start line begins with `start_line`."""
    stamps = re.findall(r"-{10,} (\d{4}-\d\d-\d\d\s+\d\d:\d\d:\d\d\.\d+)\s*\n\s*UDP message received \[\d+\] bytes :"
                        rf"\s*\n\s*{re.escape(start_line)}", trace)
    return [datetime.strptime(" ".join(s.split()[:2]), "%Y-%m-%d %H:%M:%S.%f") for s in stamps]


def _bye_after_ok(trace: str) -> float:
    """Seconds from the 200 OK to the adapter's BYE, as sipp received them."""
    gap = (_received_at(trace, "BYE sip:sipp@")[0] - _received_at(trace, "SIP/2.0 200 OK")[0]).total_seconds()
    print("our BYE after the 200 OK (s):", gap)
    return gap


async def _until_our_bye(scenario: str, tmp_path: Path, **settings: object) -> tuple[float, list[str]]:
    """Run `scenario` (which ends awaiting our BYE): seconds from the 200 OK to that BYE, the calls' outcomes."""
    outcomes: list[str] = []
    async with live_server(**settings) as server:
        server.core.events.subscribe(lambda e: outcomes.append(e.outcome) if isinstance(e, ops.CallEnded) else None)
        code, trace = await run_sipp(scenario, server.address[1], tmp_path)
        await asyncio.sleep(0.2)
        assert not server.core.calls
    assert code == 0
    return _bye_after_ok(trace), outcomes


def _ended(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "call ended" in r.getMessage()]


async def test_session_timer_caller_refreshes_by_update(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="bridge.call")
    async with live_server(sip_session_min_se=2) as server:
        code, trace = await run_sipp("timer_uac_update", server.address[1], tmp_path)
        await asyncio.sleep(0.2)
    assert code == 0  # 7 s of a 4 s session, refreshed every 2 s: no BYE from us (sipp would fail on it)
    assert "BYE sip:sipp@" not in trace
    ended = _ended(caplog)
    assert ended and "caller hung up" in ended[0]


@pytest.mark.parametrize("scenario", ["timer_uas_update", "timer_uas_reinvite"])
async def test_session_timer_we_refresh(scenario, tmp_path):
    async with live_server(sip_session_min_se=2) as server:
        code, trace = await run_sipp(scenario, server.address[1], tmp_path)
    assert code == 0
    method = "UPDATE" if scenario == "timer_uas_update" else "INVITE"
    ok = _received_at(trace, "SIP/2.0 200 OK")[0]
    refreshes = _received_at(trace, f"{method} sip:sipp@")
    gaps = [(b - a).total_seconds() for a, b in zip([ok, *refreshes], refreshes, strict=False)]
    print(f"{method} refreshes after the 200 OK / each other (s):", gaps)
    assert len(gaps) == 2 and all(1.7 < g < 2.6 for g in gaps)  # half the 4 s interval


async def test_session_timer_no_refresh_gets_our_bye(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    gap, outcomes = await _until_our_bye("timer_no_refresh", tmp_path, sip_session_min_se=2)
    assert outcomes == ["session_expired"]
    assert 1.7 < gap < 2.6  # 3 s - min(32 s, 3 s / 3)
    assert any("session timer expired" in r.getMessage() for r in caplog.records)


# -- RTP_TIMEOUT_SEC (lowered to 1.5 s) and RTP_HOLD_TIMEOUT_SEC (its default, 600 s) ------------------------------


async def test_caller_rtp_stops_our_bye_after_the_timeout(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    # 3.4 s of RTP bursts 0.84 s apart keep the call: sipp fails on a BYE before its last pause
    gap, outcomes = await _until_our_bye("rtp_stops", tmp_path, rtp_timeout_sec=1.5)
    assert outcomes == ["rtp_timeout"]
    assert 3.36 + 1.5 - 0.3 < gap < 3.36 + 2.5 + 1.0  # the last burst ends at ~3.36 s; checked once a second
    ended = _ended(caplog)
    assert ended and "rtp timeout: no media from the caller for 1.5 s" in ended[0]


async def test_held_call_without_rtp_is_kept(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="bridge.call")
    async with live_server(rtp_timeout_sec=1.5) as server:
        code, trace = await run_sipp("rtp_hold_silent", server.address[1], tmp_path)
        await asyncio.sleep(0.2)
    assert code == 0  # 3 s on hold (a=inactive) without RTP: no BYE from us
    assert "BYE sip:sipp@" not in trace
    ended = _ended(caplog)
    assert ended and "caller hung up" in ended[0]
