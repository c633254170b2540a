"""The `bridge` way: the snippet's X- headers reach the call as metadata, and transfer goes by uuid_transfer."""

from __future__ import annotations

import asyncio
import secrets
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from bridge.pbx.esl.inbound import EslInboundControl, a_leg_uuid
from bridge.sip.events import IncomingCall
from bridge.sip.message import Request, Response
from bridge.sip.uas import Uas, UasConfig
from bridge.vendors.base import TransferRequest
from tests.fakes.esl import FakeInboundServer
from tests.pbx.esl.test_inbound import bridged, inbound
from tests.sip.sip_live import RawClient, ScriptedAgent, live_server, status_of
from tests.sip.test_sip_transport import invite

A_LEG = "0d5cbb42-6a5b-4b49-9d07-4c9ad0e7a2f1"
BRIDGE_FILE = Path(__file__).resolve().parents[3] / "freeswitch" / "bridge-to-adapter.xml"

# The B-leg INVITE mod_sofia sends for the bridge snippet (pbx.md §2.1: sip_h_X-* become headers, SDP with only
# the forced G.711 codecs, telephone-event 101 with fmtp 0-15, ptime 20).
_SDP = ("v=0\r\no=FreeSWITCH 1732450000 1732450001 IN IP4 127.0.0.1\r\ns=FreeSWITCH\r\nc=IN IP4 127.0.0.1\r\n"
        "t=0 0\r\nm=audio 24000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\n")
INVITE = (
    "INVITE sip:ai@127.0.0.1:6060 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5080;rport;branch=z9hG4bKa1b2c3\r\n"
    "Max-Forwards: 69\r\n"
    'From: "Alice" <sip:1001@127.0.0.1:5080>;tag=Q1a2b3\r\n'
    "To: <sip:ai@127.0.0.1:6060>\r\n"
    "Call-ID: 9f1e2d3c-fs-bridge\r\n"
    "CSeq: 12345 INVITE\r\n"
    "Contact: <sip:mod_sofia@127.0.0.1:5080>\r\n"
    "User-Agent: FreeSWITCH-mod_sofia/1.10.12-release~64bit\r\n"
    "Content-Type: application/sdp\r\n"
    "X-AI-Caller: 1001\r\n"
    f"X-AI-Call-UUID: {A_LEG}\r\n"
    f"Content-Length: {len(_SDP)}\r\n\r\n{_SDP}"
).encode()


def incoming_call() -> IncomingCall:
    uas = Uas(UasConfig("127.0.0.1", 6060))
    uas.receive(INVITE, ("127.0.0.1", 5080), 0.0)
    [call] = [e for e in uas.events() if isinstance(e, IncomingCall)]
    return call


def test_snippet_headers_arrive_as_call_metadata():
    call = incoming_call()
    assert call.caller == "1001"
    assert {k.lower(): v for k, v in call.metadata.items()}["x-ai-caller"] == "1001"
    assert a_leg_uuid(call.metadata) == A_LEG


async def test_agent_transfer_of_a_bridged_call_sends_uuid_transfer():
    metadata = incoming_call().metadata
    async with FakeInboundServer(channels={A_LEG}) as fake, inbound(fake) as control:
        assert await control.transfer(bridged(metadata), "3001")
        assert fake.commands[-1] == f"api uuid_transfer {A_LEG} 3001 XML sales"


def test_bridge_snippet_sets_the_headers_this_test_sends():
    if not BRIDGE_FILE.exists():
        pytest.skip("freeswitch/bridge-to-adapter.xml (the SIP responder's file) is not there yet")
    data = " ".join(a.get("data", "") for a in ET.parse(BRIDGE_FILE).iter("action"))
    assert "sip_h_X-AI-Call-UUID=${uuid}" in data and "sip_h_X-AI-Caller=" in data


async def test_sip_call_bridged_by_freeswitch_is_transferred_by_uuid_transfer_not_refer():
    """The whole bridge way: INVITE with the snippet's X-AI-Call-UUID, the agent transfers, ESL inbound acts."""
    a_leg = "0b8f2a4e-7c1d-4e5f-9a6b-3c2d1e0f4a5b"
    async with FakeInboundServer(channels={a_leg}) as fake, live_server(
        lambda ctx: ScriptedAgent(ctx, [(0.2, TransferRequest("3001"))]),
        esl_inbound=fake.address, transfer_context="sales",
    ) as server:
        ready = asyncio.Event()
        esl_inbound = EslInboundControl(server.core.settings)
        server.leg_transfer = esl_inbound  # as bridge/app.py wires the two ingresses
        control = asyncio.create_task(esl_inbound.run(ready))
        await asyncio.wait_for(ready.wait(), 5)
        client = await RawClient.open()
        invite(client, server.address, "fs-bridge-1", extra_headers=f"X-AI-Call-UUID: {a_leg}\r\n")
        ok = await client.final()
        assert isinstance(ok, Response) and ok.status == 200
        to = ok.get("to")
        hdr = (f"Via: SIP/2.0/UDP 127.0.0.1:{client.port};branch=z9hG4bK{secrets.token_hex(4)};rport\r\n"
               f"Max-Forwards: 70\r\nFrom: <sip:+15550001@127.0.0.1>;tag=t1\r\nTo: {to}\r\nCall-ID: fs-bridge-1\r\n")
        client.send(f"ACK sip:ai@127.0.0.1 SIP/2.0\r\n{hdr}CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n".encode(),
                    server.address)
        async with asyncio.timeout(5):
            while not fake.transfers:
                await asyncio.sleep(0.02)
        assert fake.transfers == [f"{a_leg} 3001 XML sales"]
        # FreeSWITCH now moves the A-leg and hangs up its B-leg to us: a BYE, and never a REFER from us.
        client.send(f"BYE sip:ai@127.0.0.1 SIP/2.0\r\n{hdr}CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n".encode(),
                    server.address)
        seen = []
        while (msg := await client.recv(0.5)) is not None:
            seen.append(msg)
        assert not any(isinstance(m, Request) and m.method == "REFER" for m in seen)
        assert any(status_of(m) == 200 and isinstance(m, Response) and m.get("cseq") == "2 BYE" for m in seen)
        await asyncio.sleep(0.1)
        assert not server.core.calls
        control.cancel()
        client.close()
