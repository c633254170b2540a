"""Shared fixtures: settings for tests, a recording CallControl, a UDP peer on loopback."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

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
