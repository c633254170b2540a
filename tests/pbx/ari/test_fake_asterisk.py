"""The fake Asterisk holds requests to the ARI description: what it rejects, and that its replies fit the models."""

from __future__ import annotations

import asyncio
import base64
import struct

import aiohttp
import pytest

from tests.fakes.ari import FakeAsterisk

AUTH = {"Authorization": "Basic " + base64.b64encode(b"adapter:secret").decode()}


async def call(fake: FakeAsterisk, method: str, path: str, **kw) -> tuple[int, object]:
    async with aiohttp.ClientSession() as http, http.request(method, fake.url + "/ari" + path, **kw) as resp:
        body = await resp.read()
        return resp.status, (await resp.json() if body else None)


@pytest.mark.parametrize(("method", "path", "params", "status"), [
    ("GET", "/nothing", {}, 404),  # no such path in the description
    ("PUT", "/channels", {}, 405),  # path known, method not
    ("POST", "/bridges", {"kind": "mixing"}, 400),  # unknown parameter
    ("POST", "/channels/externalMedia", {"app": "a", "external_host": "127.0.0.1:4000"}, 400),  # format required
    ("POST", "/channels/externalMedia", {"app": "a", "format": "ulaw", "encapsulation": "srtp"}, 400),  # not allowed
    ("POST", "/channels/externalMedia", {"app": "a", "format": "ulaw", "external_host": "127.0.0.1"}, 400),  # no port
    ("POST", "/channels/externalMedia",
     {"app": "a", "format": "ulaw", "external_host": "h:1", "transport": "tcp"}, 400),  # rtp needs udp
    ("POST", "/channels/externalMedia",
     {"app": "a", "format": "slin", "external_host": "h:1", "encapsulation": "audiosocket", "transport": "tcp",
      "data": "not-a-uuid"}, 400),  # AudioSocket data must be a UUID (code rule)
    ("POST", "/channels/externalMedia",
     {"app": "a", "format": "ulaw", "external_host": "h:1", "connection_type": "server"}, 400),  # websocket only
    ("POST", "/channels/externalMedia", {"app": "a", "format": "ulaw", "direction": "sideways"}, 400),
    ("DELETE", "/channels/x", {"reason": "bye"}, 400),  # reason outside its list
    ("POST", "/channels/x/continue", {"priority": "two"}, 400),  # int expected
    ("POST", "/bridges", {"type": "conference"}, 400),  # bridge type the code refuses
    ("POST", "/channels/x/answer", {}, 404),
])
async def test_rejects_what_the_description_does_not_allow(fake, method, path, params, status):
    got, body = await call(fake, method, path, params=params, headers=AUTH)
    assert got == status
    assert isinstance(body, dict) and body["message"]


async def test_auth_by_header_or_api_key(fake):
    assert (await call(fake, "GET", "/channels"))[0] == 401
    assert (await call(fake, "GET", "/channels", params={"api_key": "adapter:secret"}))[0] == 200
    assert (await call(fake, "GET", "/channels", headers=AUTH))[0] == 200


async def test_external_media_reply_and_events_fit_the_models(fake):
    async with aiohttp.ClientSession(headers=AUTH) as http, http.ws_connect(fake.url + "/ari/events?app=a") as ws:
        status, channel = await call(fake, "POST", "/channels/externalMedia", headers=AUTH,
                                     params={"app": "a", "format": "ulaw", "external_host": "127.0.0.1:4000"})
        assert status == 200
        assert channel["channelvars"]["UNICASTRTP_LOCAL_PORT"].isdigit()  # a string, as Asterisk sends it
        event = await ws.receive_json(timeout=2)
        assert event["type"] == "StasisStart" and event["channel"]["id"] == channel["id"]
        assert (await call(fake, "DELETE", f"/channels/{channel['id']}", headers=AUTH))[0] == 204
        kinds = [(await ws.receive_json(timeout=2))["type"] for _ in range(3)]
        assert kinds == ["ChannelHangupRequest", "StasisEnd", "ChannelDestroyed"]
    assert not fake.leftovers()


async def test_a_second_websocket_replaces_the_first(fake):
    url = fake.url + "/ari/events?app=a"
    async with aiohttp.ClientSession(headers=AUTH) as http, http.ws_connect(url) as first, http.ws_connect(url):
        assert (await first.receive_json(timeout=2))["type"] == "ApplicationReplaced"


async def test_external_media_rtp_strict_learning_and_static_payload_types_only(fake):
    """pbx.md §1.6: external_host is accepted at once; another source after 4 in-sequence packets; PT > 34 dropped."""
    loop = asyncio.get_running_loop()
    named, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    other, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    try:
        host = f"127.0.0.1:{named.get_extra_info('sockname')[1]}"
        status, channel = await call(fake, "POST", "/channels/externalMedia", headers=AUTH,
                                     params={"app": "a", "format": "ulaw", "external_host": host})
        assert status == 200
        rtp = fake.channels[channel["id"]].rtp
        port = int(channel["channelvars"]["UNICASTRTP_LOCAL_PORT"])

        def packet(pt: int, seq: int) -> bytes:
            return struct.pack("!BBHII", 0x80, pt, seq, seq * 160, 7) + b"\xff" * 160

        named.sendto(packet(0, 1), ("127.0.0.1", port))
        named.sendto(packet(101, 2), ("127.0.0.1", port))  # telephone-event: dynamic, no SDP: dropped
        for seq in range(10, 16):
            other.sendto(packet(0, seq), ("127.0.0.1", port))
        for _ in range(100):
            if len(rtp.received) + rtp.dropped >= 8:
                break
            await asyncio.sleep(0.01)
        assert len(rtp.received) == 1 + 3  # the named source's PCMU, then the other's from its 4th packet on
        assert rtp.dropped == 1 + 3
        assert rtp.learned == other.get_extra_info("sockname")[:2]
    finally:
        named.close()
        other.close()


async def test_direction_in_is_accepted_as_the_code_does(fake):
    status, _ = await call(fake, "POST", "/channels/externalMedia", headers=AUTH,
                           params={"app": "a", "format": "ulaw", "external_host": "127.0.0.1:4000", "direction": "in"})
    assert status == 200
