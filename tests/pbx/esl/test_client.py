"""EslConnection over a loopback socket: replies matched in order among events; close, timeout, garbage."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from bridge.pbx.esl import protocol as esl
from bridge.pbx.esl.client import EslConnection
from bridge.pbx.esl.protocol import EslConnectionClosed, EslError
from tests.fakes.esl import api_response, command_reply, event_plain, read_command


@contextlib.asynccontextmanager
async def pair(peer):
    """A connection to a loopback server whose handler is `peer(reader, writer)`."""
    tasks = set()

    def accept(reader, writer):
        task = asyncio.create_task(peer(reader, writer))
        tasks.add(task)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
    events, notices = [], []
    conn = EslConnection(reader, writer, events.append, notices.append)
    reading = asyncio.create_task(conn.read_loop())
    try:
        yield conn, events, notices
    finally:
        conn.close()
        for task in (*tasks, reading):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        server.close()
        await server.wait_closed()


async def test_replies_in_order_with_events_between():
    async def peer(reader, writer):
        first = await read_command(reader)
        second = await read_command(reader)
        writer.write(event_plain([("Event-Name", "DTMF"), ("DTMF-Digit", "1")]))
        writer.write(command_reply(f"+OK {first[0]}"))
        writer.write(event_plain([("Event-Name", "CHANNEL_HANGUP")]))
        writer.write(api_response(f"-ERR {second[0]}\n"))
        await read_command(reader)
        writer.write(command_reply("-ERR nope"))
        await writer.drain()
        await asyncio.sleep(10)

    async with pair(peer) as (conn, events, _):
        one, two = await asyncio.gather(conn.command(esl.myevents()), conn.command(esl.api("status")))
        assert one.reply_text == "+OK myevents plain" and one.ok
        assert two.reply_text == "-ERR api status" and not two.ok
        assert [e.name for e in events] == ["DTMF", "CHANNEL_HANGUP"]
        with pytest.raises(EslError, match="-ERR nope"):
            await conn.checked(esl.api("x"))


async def test_close_before_reply_fails_the_command():
    async def peer(reader, writer):
        await read_command(reader)
        writer.close()

    async with pair(peer) as (conn, _, _):
        with pytest.raises(EslConnectionClosed):
            await conn.command(esl.connect())
        with pytest.raises(EslConnectionClosed):  # and every later one at once
            await conn.command(esl.connect())


async def test_timeout_then_the_late_reply_is_not_taken_for_the_next():
    async def peer(reader, writer):
        await read_command(reader)
        await asyncio.sleep(0.3)
        writer.write(command_reply("+OK late"))
        await read_command(reader)
        writer.write(command_reply("+OK second"))
        await writer.drain()
        await asyncio.sleep(10)

    async with pair(peer) as (conn, _, _):
        with pytest.raises(EslError, match="no reply"):
            await conn.command(esl.linger(), timeout=0.1)
        await asyncio.sleep(0.4)
        assert (await conn.command(esl.myevents())).reply_text == "+OK second"


async def test_a_malformed_event_is_dropped_and_the_connection_goes_on():
    async def peer(reader, writer):
        await read_command(reader)
        body = b"Event-Name: DTMF\nContent-Length: 99\n\nshort"  # framed right, its own body cut short
        writer.write(b"Content-Type: text/event-plain\nContent-Length: %d\n\n%s" % (len(body), body))
        writer.write(event_plain([("Event-Name", "CHANNEL_HANGUP")]))
        writer.write(command_reply("+OK still here"))
        await writer.drain()
        await asyncio.sleep(10)

    async with pair(peer) as (conn, events, _):
        assert (await conn.command(esl.myevents())).reply_text == "+OK still here"
        assert [e.name for e in events] == ["CHANNEL_HANGUP"] and conn.bad_events == 1
        assert not conn.closed.is_set()


async def test_garbage_closes_the_connection_and_notices_pass_through():
    async def peer(reader, writer):
        writer.write(b"Content-Type: auth/request\n\n")
        await read_command(reader)
        writer.write(b"garbage without a colon\n\n")
        await writer.drain()
        await asyncio.sleep(10)

    async with pair(peer) as (conn, _, notices):
        with pytest.raises(EslConnectionClosed, match="protocol error"):
            await conn.command(esl.auth("pw"))
        assert [n.content_type for n in notices] == ["auth/request"]
        assert conn.closed.is_set()
