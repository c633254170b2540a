"""Shared fixtures: settings for tests, a recording CallControl, a UDP peer on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from datetime import timedelta

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as profiles

from bridge import config

MS = 0.001  # time unit for readable timeouts


def make_settings(**overrides) -> config.Settings:
    """Settings as the defaults give them, with no .env read, plus overrides (field names)."""
    base = config.load(environ={}, dotenv=None)
    return dataclasses.replace(base, **overrides)


@pytest.fixture
def settings() -> config.Settings:
    return make_settings(rtp_port_min=40000, rtp_port_max=40999, echo_delay_ms=100)


class RecordingControl:
    """A CallControl that records what the call asked of its ingress."""

    def __init__(self) -> None:
        self.hangups: list[str] = []
        self.transfers: list[str] = []

    async def hangup(self, reason: str) -> None:
        self.hangups.append(reason)

    async def transfer(self, destination: str) -> None:
        self.transfers.append(destination)


class UdpPeer(asyncio.DatagramProtocol):
    """A loopback UDP socket that records (arrival time, bytes) of what it receives."""

    def __init__(self) -> None:
        self.received: list[tuple[float, bytes]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.received.append((asyncio.get_running_loop().time(), data))

    @property
    def address(self):
        return self.transport.get_extra_info("sockname")[:2]

    @classmethod
    async def open(cls) -> UdpPeer:
        loop = asyncio.get_running_loop()
        _, peer = await loop.create_datagram_endpoint(cls, local_addr=("127.0.0.1", 0))
        return peer


# The fuzz tests (tests/test_fuzz.py): a bounded, reproducible run in CI; HYPOTHESIS_PROFILE=fuzz for a longer one.
profiles.register_profile(
    "ci", max_examples=100, derandomize=True, database=None, deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
profiles.register_profile("fuzz", profiles.get_profile("ci"), max_examples=5000, derandomize=False)
profiles.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
