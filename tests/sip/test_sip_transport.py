"""The live SIP listener on loopback: calls with the test caller, admission, refusals, our BYE and REFER."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import secrets

from bridge.caller import place_calls
from bridge.sip import message, sdp
from bridge.sip.message import Request, Response
from bridge.vendors.base import (
    HangupRequest,
    TransferRequest,
)
from tests.sip.sip_live import RawClient, ScriptedAgent, live_server, status_of


def invite(client: RawClient, dest: tuple[str, int], call_id: str, body: bytes | None = None,
           extra_headers: str = "") -> bytes:
    offer = body if body is not None else sdp.build(sdp.default_offer(), ("127.0.0.1", 30000), 1, 1, offer=True)
    data = (f"INVITE sip:ai@{dest[0]}:{dest[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{client.port};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:+15550001@127.0.0.1>;tag=t1\r\nTo: <sip:ai@127.0.0.1>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@127.0.0.1:{client.port}>\r\n{extra_headers}"
            f"Content-Type: application/sdp\r\nContent-Length: {len(offer)}\r\n\r\n").encode() + offer
    client.send(data, dest)
    return data


async def test_a_call_with_the_test_caller_echoes_back():
    async with live_server() as server:
        (fig,) = await place_calls(f"sip:echo@127.0.0.1:{server.address[1]}", calls=1, seconds=1.5)
    assert fig.answered and fig.ended_by == "caller"
    assert fig.sent == 75 and fig.received > 60
    assert fig.echo_delay_ms is not None and 80 < fig.echo_delay_ms < 600  # ECHO_DELAY_MS=100 plus the path


async def test_sources_outside_the_allowed_cidrs_are_dropped():
    async with live_server(sip_allowed_cidrs=(ipaddress.ip_network("10.0.0.0/8"),)) as server:
        client = await RawClient.open()
        client.options(server.address)
        assert await client.recv(0.5) is None
        assert server.core.datagrams_denied["sip"] == 1
        client.close()


async def test_max_calls_and_draining_answer_503_with_retry_after():
    async with live_server(max_calls=0) as server:
        client = await RawClient.open()
        invite(client, server.address, "full-1")
        resp = await client.final()
        assert status_of(resp) == 503 and isinstance(resp, Response) and resp.get("retry-after")
        client.options(server.address)
        assert status_of(await client.final()) == 503
        client.close()
    async with live_server() as server:
        server.core.draining = True
        client = await RawClient.open()
        invite(client, server.address, "drain-1")
        assert status_of(await client.final()) == 503
        client.close()


async def test_agent_refused_is_503_and_nothing_is_left_allocated():
    async with live_server(lambda ctx: ScriptedAgent(ctx, [], refuse=True)) as server:
        client = await RawClient.open()
        invite(client, server.address, "refused-1")
        assert status_of(await client.final()) == 503
        assert not server.core.calls and not server.core.ports.in_use
        client.close()


async def test_the_adapter_sends_bye_when_the_agent_hangs_up():
    async with live_server(lambda ctx: ScriptedAgent(ctx, [(0.4, HangupRequest("goodbye"))])) as server:
        (fig,) = await place_calls(f"sip:echo@127.0.0.1:{server.address[1]}", calls=1, seconds=5)
        assert fig.answered and fig.ended_by == "adapter" and fig.sent < 100
        await asyncio.sleep(0.1)
        assert not server.core.calls


async def test_transfer_sends_refer_and_the_callers_bye_ends_the_call():
    async with live_server(lambda ctx: ScriptedAgent(ctx, [(0.2, TransferRequest("sales"))])) as server:
        client = await RawClient.open()
        invite(client, server.address, "xfer-1")
        ok = await client.final()
        assert isinstance(ok, Response) and ok.status == 200
        to = ok.get("to")
        ack = (f"ACK sip:sip-to-ai@127.0.0.1:{server.address[1]} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{client.port};branch=z9hG4bKack{secrets.token_hex(4)};rport\r\n"
               f"Max-Forwards: 70\r\nFrom: <sip:+15550001@127.0.0.1>;tag=t1\r\nTo: {to}\r\nCall-ID: xfer-1\r\n"
               "CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n").encode()
        client.send(ack, server.address)
        refer = await client.recv(3.0)
        while isinstance(refer, Response):
            refer = await client.recv(3.0)
        assert isinstance(refer, Request) and refer.method == "REFER"
        assert refer.get("refer-to") == "<sip:sales@127.0.0.1>"
        client.send(bytes(message.response(refer, 202)), server.address)  # FreeSWITCH: 202, NOTIFY, then BYE
        bye = (f"BYE sip:sip-to-ai@127.0.0.1:{server.address[1]} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{client.port};branch=z9hG4bKbye{secrets.token_hex(4)};rport\r\n"
               f"Max-Forwards: 70\r\nFrom: <sip:+15550001@127.0.0.1>;tag=t1\r\nTo: {to}\r\nCall-ID: xfer-1\r\n"
               "CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n").encode()
        client.send(bye, server.address)
        assert status_of(await client.final()) == 200
        await asyncio.sleep(0.2)
        assert not server.core.calls
        client.close()


async def test_tcp_and_udp_on_the_same_port():
    async with live_server(sip_transport_type="both") as server:
        reader, writer = await asyncio.open_connection(*server.address)
        client = await RawClient.open()
        data = client.options(server.address).replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP").replace(b"z9hG4bK", b"z9hG4bKtcp")
        assert status_of(await client.final()) == 200  # the UDP copy
        writer.write(data[:30])
        await writer.drain()
        writer.write(data[30:])  # split across segments: framed by Content-Length
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
        assert head.startswith(b"SIP/2.0 200 OK")
        writer.close()
        client.close()


async def test_a_tcp_stream_that_cannot_be_framed_is_closed_and_the_port_keeps_serving(caplog):
    async with live_server(sip_transport_type="tcp") as server:
        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(b"OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nContent-Length: \xb2\r\n\r\n")  # '\xb2' is latin-1 '²'
        assert await asyncio.wait_for(reader.read(), 2.0) == b""  # closed: no way to find the next message
        writer.close()
        client = await RawClient.open()
        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(client.options(server.address).replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
        assert head.startswith(b"SIP/2.0 200 OK")
        writer.close()
        client.close()
    assert "cannot frame a stream" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # not asyncio's "data_received() failed"


async def test_shutdown_sends_bye_to_live_calls():
    async with live_server() as server:
        calls = asyncio.create_task(place_calls(f"sip:echo@127.0.0.1:{server.address[1]}", calls=1, seconds=3))
        await asyncio.sleep(0.8)
    (fig,) = await calls
    assert fig.answered and fig.ended_by == "adapter" and fig.sent < 100


def test_a_wildcard_bind_never_advertises_the_wildcard():
    from bridge.sip.transport import advertised_host

    assert advertised_host("127.0.0.1", "") == "127.0.0.1"
    assert advertised_host("0.0.0.0", "10.1.2.3") == "10.1.2.3"
    assert advertised_host("0.0.0.0", "") not in ("0.0.0.0", "")


async def _read_message(reader: asyncio.StreamReader) -> Request | Response:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3.0)
    length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))
    return message.parse(head + await reader.readexactly(length), stream=True)


async def test_a_call_over_tcp_gets_its_answer_and_our_bye_on_the_same_connection():
    agent = lambda ctx: ScriptedAgent(ctx, [(0.3, HangupRequest("bye"))])  # noqa: E731
    async with live_server(agent, sip_transport_type="tcp") as server:
        reader, writer = await asyncio.open_connection(*server.address)
        local = writer.get_extra_info("sockname")
        client = await RawClient.open()  # only to build the INVITE bytes
        data = invite(client, ("127.0.0.1", 9), "tcp-1").replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")
        client.close()
        writer.write(data)
        msgs = [await _read_message(reader) for _ in range(2)]
        assert [m.status for m in msgs] == [100, 200]
        to = msgs[1].get("to")
        writer.write((f"ACK sip:sip-to-ai@127.0.0.1 SIP/2.0\r\n"
                      f"Via: SIP/2.0/TCP {local[0]}:{local[1]};branch=z9hG4bKa\r\n"
                      f"From: <sip:+15550001@127.0.0.1>;tag=t1\r\nTo: {to}\r\nCall-ID: tcp-1\r\nCSeq: 1 ACK\r\n"
                      "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode())
        bye = await _read_message(reader)
        assert isinstance(bye, Request) and bye.method == "BYE" and "SIP/2.0/TCP" in bye.get("via")
        writer.write(bytes(message.response(bye, 200)))
        await writer.drain()
        await asyncio.sleep(0.2)
        assert not server.core.calls and server.uas is not None and not server.uas._client
        writer.close()


async def test_hold_stops_our_rtp_and_unhold_moves_it_to_the_new_address():
    async with live_server() as server:
        client, media = await RawClient.open(), await RawClient.open()
        offer = sdp.build(sdp.default_offer(), ("127.0.0.1", media.port), 1, 1, offer=True)
        invite(client, server.address, "hold-1", offer)
        ok = await client.final()
        to = ok.get("to")

        def in_dialog(method: str, cseq: int, body: bytes = b"") -> None:
            ctype = "Content-Type: application/sdp\r\n" if body else ""
            client.send((f"{method} sip:sip-to-ai@127.0.0.1:{server.address[1]} SIP/2.0\r\n"
                         f"Via: SIP/2.0/UDP 127.0.0.1:{client.port};branch=z9hG4bK{secrets.token_hex(5)};rport\r\n"
                         f"Max-Forwards: 70\r\nFrom: <sip:+15550001@127.0.0.1>;tag=t1\r\nTo: {to}\r\n"
                         f"Call-ID: hold-1\r\nCSeq: {cseq} {method}\r\n"
                         f"Contact: <sip:caller@127.0.0.1:{client.port}>\r\n{ctype}"
                         f"Content-Length: {len(body)}\r\n\r\n").encode() + body, server.address)

        in_dialog("ACK", 1)
        await asyncio.sleep(0.2)
        assert await media.recv(0.5) is not None  # silence/echo flows to the signalled address
        call = server._calls["hold-1"]
        in_dialog("INVITE", 2, offer.replace(b"a=sendrecv", b"a=sendonly"))
        assert b"a=recvonly" in (await client.final()).body
        in_dialog("ACK", 2)
        assert not call.endpoint.sending
        other = await RawClient.open()
        in_dialog("INVITE", 3, offer.replace(str(media.port).encode(), str(other.port).encode()))
        assert b"a=sendrecv" in (await client.final()).body
        in_dialog("ACK", 3)
        assert call.endpoint.sending and call.endpoint.leg.remote == ("127.0.0.1", other.port)
        assert await other.recv(0.5) is not None
        for sock in (client, media, other):
            sock.close()
