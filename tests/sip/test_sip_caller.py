"""bridge.caller: the echo-delay measure, and the test caller against a real `python -m bridge serve` process."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bridge.caller import echo_delay_ms, noise_signal, place_calls, read_wav, summary
from tests.sip.sip_live import RawClient, status_of

ROOT = Path(__file__).resolve().parents[2]


def test_echo_delay_finds_the_lag():
    sent = noise_signal(2.0).astype(np.float64)
    heard = np.concatenate([np.zeros(8 * 130), sent])  # heard from t0 + 20 ms, the echo 130 ms into it
    assert echo_delay_ms(sent, heard, 0.020) == pytest.approx(150, abs=0.2)
    assert echo_delay_ms(sent, np.zeros(8000), 0.0) is None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served() -> Iterator[int]:
    """`python -m bridge serve` (the README's run command) with the echo agent on a free port."""
    port = _free_port()
    env = dict(os.environ, SIP_PORT=str(port), RTP_PORT_MIN="44000", RTP_PORT_MAX="45999", ECHO_DELAY_MS="100",
               LOG_LEVEL="warning", MAX_CALLS="60")
    proc = subprocess.Popen([sys.executable, "-m", "bridge", "serve"], cwd="/tmp", env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _wait_up(port: int) -> None:
    client = await RawClient.open()
    try:
        for _ in range(50):
            client.options(("127.0.0.1", port))
            if status_of(await client.final(0.2)) == 200:
                return
        raise AssertionError("the server never answered OPTIONS")
    finally:
        client.close()


async def test_fifty_concurrent_calls_are_answered_and_echo_back(served):
    await _wait_up(served)
    figures = await place_calls(f"sip:echo@127.0.0.1:{served}", calls=50, seconds=2.0)
    lines = summary(figures)
    print("\n".join(["", "50 concurrent calls, 2 s each:"] + lines))
    assert all(f.answered for f in figures)
    assert all(f.received > 50 and f.echo_delay_ms is not None for f in figures)


def test_the_call_command_plays_and_records(served, tmp_path):
    asyncio.run(_wait_up(served))
    tone = (8000 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.int16)  # 1 s at 16 kHz
    with wave.open(str(tmp_path / "in.wav"), "wb") as w:  # 16 kHz: the caller resamples to 8 kHz
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(tone.tobytes())
    out = subprocess.run([sys.executable, "-m", "bridge", "call", f"sip:echo@127.0.0.1:{served}", "--seconds", "1.5",
                          "--play", str(tmp_path / "in.wav"), "--record", str(tmp_path / "out.wav")],
                         cwd=ROOT, capture_output=True, text=True, timeout=20)
    print(out.stdout)
    assert out.returncode == 0, out.stderr
    assert "answered: 1" in out.stdout and "packets: sent 75" in out.stdout
    heard = read_wav(tmp_path / "out.wav").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(heard))
    assert abs(np.argmax(spectrum) * 8000 / len(heard) - 440) < 10  # the 440 Hz tone came back
