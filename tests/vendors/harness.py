"""What the vendor tests share: agent context, event collector, SIP responder and phone, RTP and memory checks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Protocol

import pytest

from bridge.call import MediaCore
from bridge.errors import AgentRefused
from bridge.media import CallInfo, Codec
from bridge.sip.transport import SipServer
from bridge.vendors import ws
from bridge.vendors.base import (
    Agent,
    AgentAudio,
    AgentClosed,
    AgentContext,
    AgentEvent,
    HangupRequest,
    ToolCall,
    TransferRequest,
)
from tests.conftest import make_settings
from tests.fakes.ws_vendor import wait_for
from tests.vendors.sip_phone import Phone


class Fake(Protocol):
    violations: list[str]


def agent_context(call_id: str, codec: Codec, logger: str, played: Callable[[str], int] = lambda item: 0,
                  **settings: Any) -> AgentContext:
    """The context an agent gets from a call, with `settings` over the test defaults."""
    log = logging.LoggerAdapter(logging.getLogger(logger), {})
    return AgentContext(CallInfo(call_id, "sip"), codec, make_settings(**settings), played, log)


class Collector:
    """Consumes an agent's events into a list, as the call's agent pump does."""

    def __init__(self, agent: Agent) -> None:
        self.events: list[AgentEvent] = []
        self._task = asyncio.create_task(self._run(agent.events()))

    async def _run(self, events: AsyncIterator[AgentEvent]) -> None:
        async for event in events:
            self.events.append(event)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    def audio(self) -> bytes:
        return b"".join(e.data for e in self.of(AgentAudio))

    async def wait(self, kind: type, count: int = 1, timeout: float = 5.0) -> None:
        await wait_for(lambda: len(self.of(kind)) >= count, timeout, f"{count} x {kind.__name__}")

    async def stop(self) -> None:
        await asyncio.wait_for(self._task, 5.0)


async def requested(events: Collector, request: AgentEvent) -> None:
    """The agent raises `request`, and no other event of its kind."""
    await events.wait(type(request))
    assert events.of(type(request)) == [request]


async def tool_answer(conn: Any, fid: str, events: Collector | None = None, request: AgentEvent | None = None) -> Any:
    """What the agent answers the fake's tool call `fid` (in `conn.tool_answers`), once it raised `request` if given."""
    if request is not None:
        assert events is not None
        await requested(events, request)
    await wait_for(lambda: fid in conn.tool_answers, what=f"the answer to tool call {fid}")
    return conn.tool_answers[fid]


class ToolTests:
    """The built-in tools through a vendor's fake, the same for every vendor that answers tool calls by id.

    A vendor's test module subclasses it as `TestTools`, naming in `tool_call` the fake connection's method that
    calls a tool (it returns the call id); `tools` is the agent session the tools run in.
    """

    tool_call = ""

    @pytest.fixture
    def tools(self, session: tuple[Any, Collector]) -> tuple[Any, Collector]:
        return session

    async def call_tool(self, conn: Any, name: str, args: dict[str, Any]) -> str:
        return await getattr(conn, self.tool_call)(name, args)

    async def test_end_call_answers_and_hangs_up(self, fake: Any, tools: tuple[Any, Collector]) -> None:
        _, events = tools
        conn = await fake.connection()
        fid = await self.call_tool(conn, "end_call", {"reason": "caller said bye"})
        assert await tool_answer(conn, fid, events, HangupRequest("caller said bye")) == {"ok": True}
        assert events.of(ToolCall) == [ToolCall("end_call", {"reason": "caller said bye"}, "ok")]

    async def test_transfer_call(self, fake: Any, tools: tuple[Any, Collector]) -> None:
        _, events = tools
        conn = await fake.connection()
        fid = await self.call_tool(conn, "transfer_call", {"destination": "sales"})
        await tool_answer(conn, fid, events, TransferRequest("sales"))

    async def test_unknown_tool_is_answered_unavailable(self, fake: Any, tools: tuple[Any, Collector]) -> None:
        _, events = tools
        conn = await fake.connection()
        fid = await self.call_tool(conn, "look_up_order", {"order": "42"})
        assert (await tool_answer(conn, fid))["ok"] is False
        assert events.of(ToolCall) == [ToolCall("look_up_order", {"order": "42"}, "unknown")]  # the prompt has none


async def refusal(agent: Agent, match: str | None = None, secret: str = "") -> str:
    """What the vendor refuses `agent.connect()` with (AgentRefused, matching `match`), never holding `secret`.

    The agent is closed after, as the call closes it.
    """
    try:
        with pytest.raises(AgentRefused, match=match) as info:
            await agent.connect()
    finally:
        await agent.aclose()
    message = str(info.value)
    assert not secret or secret not in message
    return message


def translated_or_skipped(agent: Any, messages: Iterable[str | bytes]) -> None:
    """Invariant: any server message is translated, or raises VendorMessageError (logged, counted, skipped)."""
    for message in messages:
        try:
            ws.read_message(agent, message)
        except ws.VendorMessageError:
            pass


@contextlib.asynccontextmanager
async def session(agent: Agent, fake: Fake) -> AsyncIterator[tuple[Any, Collector]]:
    """The agent connected with its events collected; closed after, and the fake saw no protocol breach."""
    await agent.connect()
    events = Collector(agent)
    yield agent, events
    await agent.aclose()
    await events.stop()
    assert fake.violations == []


async def closed_leaving_nothing(agent: Agent, events: Collector, fake: Fake, tasks_before: int) -> None:
    """Close the agent: its last event is AgentClosed, no task of it is left, and the fake saw no breach."""
    await agent.aclose()
    await events.stop()
    assert isinstance(events.events[-1], AgentClosed)
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) <= tasks_before
    assert fake.violations == []


class BridgeMemory:
    """tracemalloc snapshots of what bridge/ code holds, taken while the `with` block runs."""

    def __init__(self) -> None:
        self.snapshots: list[tracemalloc.Snapshot] = []

    def __enter__(self) -> BridgeMemory:
        tracemalloc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        tracemalloc.stop()

    def snapshot(self) -> None:
        self.snapshots.append(tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, "*/bridge/*")]))

    def snapshot_at(self, turn: int, *turns: int) -> None:
        """A snapshot when `turn` is one of `turns` (the first after warm-up, the last)."""
        if turn in turns:
            self.snapshot()

    def growth(self) -> int:
        """Bytes bridge/ code holds at the second snapshot beyond what it held at the first."""
        return sum(d.size_diff for d in self.snapshots[1].compare_to(self.snapshots[0], "filename"))

    def assert_flat(self, limit: int, what: str) -> None:
        """bridge/ code grew by less than `limit` bytes between the snapshots (over `what`)."""
        growth = self.growth()
        assert growth < limit, f"bridge memory grew by {growth} bytes over {what}"


@contextlib.asynccontextmanager
async def sip_bridge(**settings: Any) -> AsyncIterator[tuple[MediaCore, Phone]]:
    """The media core behind the SIP responder on loopback, with `settings`, and a test phone to call it."""
    config = make_settings(**settings)
    core = MediaCore(config)
    server = SipServer(core, config)
    ready = asyncio.Event()
    task = asyncio.create_task(server.run(ready))
    await ready.wait()
    phone = Phone(server.address)
    await phone.open()
    try:
        yield core, phone
    finally:
        phone.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await core.wait_idle(3.0)


def check_no_rtp_gap(packets: list, label: str | None = None) -> None:
    """The phone's `packets` (arrival time, packet): no sequence number missing, no arrival gap over 40 ms."""
    seqs = [p.sequence for _, p in packets]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no frame missing on the wire
    gaps = [b[0] - a[0] for a, b in zip(packets, packets[1:], strict=False)]
    if label is not None:
        print(f"{label}: {len(packets)} RTP packets, largest arrival gap {max(gaps) * 1000:.1f} ms")
    assert max(gaps) <= 0.040, f"RTP gap of {max(gaps) * 1000:.1f} ms"  # the issue: none longer than 40 ms
