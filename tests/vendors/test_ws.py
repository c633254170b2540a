"""The shared vendor websocket runner: policy as pure functions, then the runner against a toy loopback peer."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.server import serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI
from websockets.frames import Close
from websockets.http11 import Response

from bridge.errors import AgentRefused
from bridge.media import AudioFormat, CallInfo, Codec
from bridge.vendors.base import AgentAudio, AgentClosed, AgentContext
from bridge.vendors.ws import (
    Endpoint,
    KeepAlive,
    Ready,
    Reconnect,
    Send,
    SendQueue,
    VendorError,
    WsAgent,
    classify,
    describe,
    reconnect_delays,
    redact,
)
from tests.conftest import make_settings

SECRET = "tok-secret-123456"


def status(code: int, body: bytes = b"") -> InvalidStatus:
    return InvalidStatus(Response(code, "x", Headers(), body))


def closed(code: int | None, reason: str = "") -> ConnectionClosed:
    return ConnectionClosed(Close(code, reason) if code is not None else None, None)


class TestClassify:
    @pytest.mark.parametrize("code", [400, 401, 403, 404, 429])
    def test_http_client_errors_are_refusals(self, code):
        assert classify(status(code)) == "refused"

    @pytest.mark.parametrize("code", [500, 502, 503])
    def test_http_server_errors_are_retried(self, code):
        assert classify(status(code)) == "retry"

    @pytest.mark.parametrize("code", [None, 1000, 1001, 1006, 1011, 1012, 1013])
    def test_going_away_and_failures_are_retried(self, code):
        assert classify(closed(code)) == "retry"

    @pytest.mark.parametrize("code", [1002, 1003, 1007, 1008, 4000, 4999])
    def test_closes_that_blame_the_request_are_refusals(self, code):
        assert classify(closed(code)) == "refused"

    def test_other_failures(self):
        assert classify(OSError("refused")) == "retry"
        assert classify(TimeoutError()) == "retry"
        assert classify(AgentRefused("x")) == "refused"
        assert classify(InvalidURI("nope", "bad")) == "refused"


class TestReconnectDelays:
    def test_first_retry_is_immediate_then_doubles(self):
        assert list(reconnect_delays(4, 1.0, jitter=lambda: 0.5)) == [0.0, 1.0, 2.0, 4.0]

    def test_capped_and_jittered_within_ten_percent(self):
        delays = list(reconnect_delays(8, 5.0, cap=30.0))
        assert len(delays) == 8 and delays[0] == 0.0
        assert all(27.0 <= d <= 33.0 for d in delays[4:])
        assert 4.5 <= delays[1] <= 5.5

    def test_zero_attempts(self):
        assert list(reconnect_delays(0, 5.0)) == []


class TestDescribe:
    def test_http_json_error_body_gives_the_vendors_message(self):
        body = b'{"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}'
        assert describe(status(401, body)) == "HTTP 401: Incorrect API key provided"
        assert describe(status(403, b"Forbidden")) == "HTTP 403: Forbidden"
        assert describe(status(404)) == "HTTP 404"

    def test_close_frames(self):
        assert describe(closed(1007, "Request contains an invalid argument.")) == (
            "closed 1007: Request contains an invalid argument.")
        assert describe(closed(None)) == "connection lost"
        too_big = ConnectionClosed(None, Close(1009, "frame with 52428863 bytes exceeds limit of 16777216 bytes"))
        assert describe(too_big) == (
            "connection failed by us (1009: frame with 52428863 bytes exceeds limit of 16777216 bytes)")

    def test_redact(self):
        assert redact(f"bad key {SECRET}!", [SECRET, ""]) == "bad key ***!"


class TestSendQueue:
    async def test_control_first_audio_bounded_oldest_dropped(self):
        q = SendQueue(audio_limit=3)
        for n in range(5):
            q.put_audio(bytes([n]))
        q.put_control("ctl")
        assert q.dropped_audio == 2
        assert [q.pop() for _ in range(5)] == [("ctl", True), (b"\x02", False), (b"\x03", False),
                                              (b"\x04", False), None]
        assert not q.wake.is_set()


# ---- the runner against a toy peer --------------------------------------------------------------------------


class ToyAgent(WsAgent):
    """A minimal vendor: JSON {"type": ...} messages; "ready" configures, "say" is audio, "oops" an error."""

    vendor = "toy"

    def __init__(self, ctx: AgentContext, url: str) -> None:
        self.url = url
        super().__init__(ctx)
        self.input_format = self.output_format = AudioFormat.of(Codec.PCMU)
        self.opened: list[bool] = []

    def endpoint(self) -> Endpoint:
        return Endpoint(self.url, {"Authorization": f"Bearer {SECRET}"}, secrets=(SECRET,))

    def on_open(self, resumed: bool) -> list[str]:
        self.opened.append(resumed)
        return [json.dumps({"type": "hello", "resumed": resumed})]

    def translate(self, message):
        event = json.loads(message)
        match event["type"]:
            case "ready":
                return [Ready()]
            case "say":
                return [AgentAudio(event["data"].encode())]
            case "ping":
                return [Send(json.dumps({"type": "pong"}))]
            case "oops":
                return [VendorError(event["message"], fatal=event.get("fatal", False))]
            case "move":
                return [Reconnect("asked to move")]
        return []

    def audio_message(self, data: bytes) -> str:
        return json.dumps({"type": "audio", "data": data.decode()})


class Peer:
    """A loopback websocket server whose behaviour each test scripts; records what it receives."""

    def __init__(self) -> None:
        self.connections = 0
        self.received: list[list[dict]] = []
        self.close_codes: list[int | None] = []
        self.on_connect = self.ready
        self.live: list = []
        self.http_status: int | None = None
        self.refused = 0

    async def ready(self, ws) -> None:
        await ws.send(json.dumps({"type": "ready"}))

    async def handler(self, ws) -> None:
        self.connections += 1
        log: list[dict] = []
        self.received.append(log)
        self.live.append(ws)
        await self.on_connect(ws)
        try:
            async for raw in ws:
                msg = json.loads(raw)
                log.append(msg)
                if msg["type"] == "audio":
                    await ws.send(json.dumps({"type": "say", "data": msg["data"]}))
        except ConnectionClosed:
            pass
        self.close_codes.append(ws.close_code)

    def process_request(self, connection, request):
        if self.http_status is not None:
            self.refused += 1
            return connection.respond(self.http_status, f"denied {SECRET}\n")
        return None

    async def __aenter__(self) -> str:
        self.server = await serve(self.handler, "127.0.0.1", 0, process_request=self.process_request).__aenter__()
        return f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()


def toy(url: str, **overrides) -> ToyAgent:
    fields = dict(reconnect_delay_sec=0.01, max_reconnect_attempts=2, ai_connection_timeout_sec=1.0)
    fields.update(overrides)
    log = logging.LoggerAdapter(logging.getLogger("test.ws"), {})
    ctx = AgentContext(CallInfo("c", "sip"), Codec.PCMU, make_settings(**fields), lambda item: 0, log)
    return ToyAgent(ctx, url)


async def collect(agent: WsAgent, until: type = AgentClosed, timeout: float = 3.0) -> list:
    events = []
    async with asyncio.timeout(timeout):
        async for event in agent.events():
            events.append(event)
            if isinstance(event, until):
                break
    return events


async def wait_until(predicate, timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def connected(peer: Peer | None = None, **overrides) -> AsyncIterator[tuple[Peer, ToyAgent]]:
    """A toy agent connected to `peer` (a fresh one by default); closed again on leaving, before the peer stops."""
    peer = peer or Peer()
    async with peer as url:
        agent = toy(url, **overrides)
        await agent.connect()
        yield peer, agent
        await agent.aclose()


async def echoed(agent: WsAgent, data: bytes) -> list:
    """Send `data` as caller audio; the events up to the peer's echo of it as AgentAudio."""
    agent.send_audio(data)
    return await collect(agent, AgentAudio)


async def closed_event(agent: WsAgent) -> AgentClosed:
    """The one AgentClosed among the events to the end of the session."""
    (last,) = [e for e in await collect(agent) if isinstance(e, AgentClosed)]
    return last


def drop_refusing_503(peer: Peer) -> None:
    """Cut the first connection; reconnects are answered HTTP 503 until the test clears `peer.http_status`."""
    peer.http_status = 503
    peer.live[0].transport.abort()


def ws_tasks_left() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if "WsSession" in t.get_coro().__qualname__]


class TestRunnerConnect:
    async def test_http_refusal_names_status_and_hides_the_secret(self):
        peer = Peer()
        async with peer as url:
            peer.http_status = 403
            with pytest.raises(AgentRefused) as info:
                await toy(url).connect()
        assert "HTTP 403" in str(info.value) and "denied" in str(info.value)
        assert SECRET not in str(info.value)

    async def test_close_during_handshake_is_a_refusal_with_code_and_reason(self):
        peer = Peer()

        async def reject(ws):
            await ws.close(1008, "policy says no")

        peer.on_connect = reject
        async with peer as url:
            with pytest.raises(AgentRefused, match="closed 1008: policy says no"):
                await toy(url).connect()

    async def test_error_event_before_ready_is_a_refusal(self):
        peer = Peer()

        async def complain(ws):
            await ws.send(json.dumps({"type": "oops", "message": f"quota exceeded for {SECRET}"}))

        peer.on_connect = complain
        async with peer as url:
            with pytest.raises(AgentRefused) as info:
                await toy(url).connect()
        assert "quota exceeded for ***" in str(info.value)

    async def test_no_ready_in_time_is_a_refusal(self):
        peer = Peer()

        async def mute(ws):
            return None

        peer.on_connect = mute
        async with peer as url:
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(AgentRefused, match="timed out"):
                await toy(url, ai_connection_timeout_sec=0.2).connect()
            assert loop.time() - start < 2.0


class TestRunnerSession:
    async def test_audio_round_trip_then_clean_close_1000(self):
        async with connected() as (peer, agent):
            for ch in "abc":
                agent.send_audio(ch.encode())
            events = []
            async with asyncio.timeout(3):
                async for event in agent.events():
                    events.append(event)
                    if len(events) == 3:
                        break
            assert [e.data for e in events] == [b"a", b"b", b"c"]
            await agent.aclose()
            await wait_until(lambda: peer.close_codes)
            assert peer.close_codes == [1000]
            assert await collect(agent) == [AgentClosed("closed by the bridge")]
            assert agent.session._owner is None
            await agent.aclose()  # idempotent

    async def test_audio_is_written_at_once_unless_something_waits_before_it(self):
        async with connected() as (peer, agent):
            await wait_until(lambda: agent.session._direct is not None)  # the connection is being served
            agent.send_audio(b"a")  # nothing queued: on the socket before send_audio returns
            assert not agent.session.queue.audio and agent.session.queue.sent_audio == 1
            agent.send(json.dumps({"type": "note"}))  # a control message waits for the sender task...
            agent.send_audio(b"b")  # ...so audio queues behind it, in order
            assert list(agent.session.queue.audio) == [agent.audio_message(b"b")]
            await wait_until(lambda: len(peer.received[0]) == 4)
            assert [m["type"] for m in peer.received[0]] == ["hello", "audio", "note", "audio"]
            assert [m.get("data") for m in peer.received[0][1::2]] == ["a", "b"]

    async def test_close_is_1001_going_away_while_the_process_drains(self):
        async with connected() as (peer, agent):
            agent.ctx = dataclasses.replace(agent.ctx, draining=lambda: True)
            await agent.aclose()
            await wait_until(lambda: peer.close_codes)
            assert peer.close_codes == [1001]

    async def test_replies_and_malformed_messages(self):
        peer = Peer()

        async def chatty(ws):
            await ws.send(json.dumps({"type": "ready"}))
            await ws.send("not json")
            await ws.send(json.dumps({"type": "ping"}))

        peer.on_connect = chatty
        async with connected(peer) as (_, agent):
            await wait_until(lambda: peer.received and {"type": "pong"} in peer.received[0])
            assert (await echoed(agent, b"x"))[-1] == AgentAudio(b"x")

    async def test_keepalive_after_idle(self):
        peer = Peer()
        async with peer as url:
            agent = toy(url)
            agent.keepalive = KeepAlive(0.05, json.dumps({"type": "KeepAlive"}))
            await agent.connect()
            await wait_until(lambda: {"type": "KeepAlive"} in peer.received[0])
            await agent.aclose()

    async def test_fatal_vendor_error_ends_the_session(self):
        async with connected() as (peer, agent):
            await peer.live[0].send(json.dumps({"type": "oops", "message": "session expired", "fatal": True}))
            last = await closed_event(agent)
            assert last.error and "session expired" in last.reason

    async def test_drop_reconnects_resumed_and_keeps_control_messages(self):
        async with connected(reconnect_delay_sec=0.2) as (peer, agent):
            drop_refusing_503(peer)  # the first reconnect fails: the socket stays down a while
            await wait_until(lambda: peer.refused == 1)
            agent.send(json.dumps({"type": "tool_result"}))  # queued while the socket is down
            peer.http_status = None
            await wait_until(lambda: peer.connections == 2 and peer.received[1])
            await wait_until(lambda: {"type": "tool_result"} in peer.received[1])
            assert agent.opened == [False, True] and agent.session.reconnects == 1
            assert (await echoed(agent, b"z"))[-1] == AgentAudio(b"z")

    async def test_refusing_close_code_mid_call_is_not_retried(self):
        async with connected() as (peer, agent):
            await peer.live[0].close(4003, "account suspended")
            last = await closed_event(agent)
            assert last.error and "4003" in last.reason and "account suspended" in last.reason
            assert peer.connections == 1

    async def test_exhausted_retries_end_with_an_error(self):
        async with connected(max_reconnect_attempts=2) as (peer, agent):
            drop_refusing_503(peer)
            last = await closed_event(agent)
            assert last.error and "503" in last.reason

    async def test_vendor_asked_move_opens_a_resumed_connection(self):
        async with connected() as (peer, agent):
            await peer.live[0].send(json.dumps({"type": "move"}))
            await wait_until(lambda: peer.connections == 2)
            await wait_until(lambda: peer.close_codes and len(agent.opened) == 2)  # the client learns it last
            assert peer.close_codes == [1000] and agent.opened == [False, True]
            events = await echoed(agent, b"m")
            assert events[-1] == AgentAudio(b"m") and not any(isinstance(e, AgentClosed) for e in events)

    async def test_no_task_left_after_close(self):
        async with connected() as (_, agent):
            await echoed(agent, b"q")
            await agent.aclose()
        assert ws_tasks_left() == []


async def test_audio_sent_into_a_dead_socket_is_replayed_after_reconnect():
    """The peer stops reading (a dead socket nobody noticed yet) at frame 20, then the connection is killed:
    the next connection receives every frame after the last one the first acknowledged, none lost."""
    peer = Peer()
    stop_at = 20
    real_handler = peer.handler

    async def handler(ws) -> None:  # the first connection stops reading from the socket after frame 20
        original = ws.transport.pause_reading

        async def watch() -> None:
            await wait_until(lambda: any(m.get("data") == f"{stop_at:04d}" for m in peer.received[0]), 5.0)
            original()

        if peer.connections == 0:
            asyncio.get_running_loop().create_task(watch())
        await real_handler(ws)

    peer.handler = handler
    async with connected(peer) as (_, agent):
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for n in range(60):  # 1.2 s of 20 ms frames, the RTP pace
            await asyncio.sleep(max(0.0, t0 + n * 0.02 - loop.time()))
            agent.send_audio(f"{n:04d}".encode())
            if n == stop_at + 15:  # 300 ms of frames went into the deaf socket
                peer.live[0].transport.abort()
        await wait_until(lambda: len(peer.received) == 2 and any(m.get("data") == "0059" for m in peer.received[1]))
        first = [int(m["data"]) for m in peer.received[0] if m["type"] == "audio"]
        second = [int(m["data"]) for m in peer.received[1] if m["type"] == "audio"]
        assert set(first) | set(second) == set(range(60))  # nothing lost
        assert second[0] <= max(first) + 1 and second == sorted(second)  # resent from the last acknowledged on
        assert second[0] >= stop_at - 15  # only what was not acknowledged (~ACK_INTERVAL), not the whole call


async def test_aclose_during_reconnect_is_prompt_and_leaves_nothing_open():
    async with connected(reconnect_delay_sec=5.0, max_reconnect_attempts=3) as (peer, agent):
        drop_refusing_503(peer)  # first retry fails; the next one waits 5 s
        await wait_until(lambda: peer.refused == 1)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await agent.aclose()
        assert loop.time() - start < 1.0
        assert await collect(agent) == [AgentClosed("closed by the bridge")]
        assert peer.connections == 1
    assert ws_tasks_left() == []
