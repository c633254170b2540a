"""The shared clock's two wake-up sources: ticks 20 ms apart on the monotonic schedule, missed ticks as gaps."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from bridge.clock import TICK, Datagram, SharedClock, TimerFd

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timerfd is Linux's")


class Recorder:
    def __init__(self) -> None:
        self.ticks: list[tuple[int, float]] = []

    def on_tick(self, tick: int, out: list[Datagram]) -> None:
        self.ticks.append((tick, time.monotonic()))


@linux_only
def test_timerfd_counts_the_periods_that_elapsed():
    timer = TimerFd(time.monotonic() + TICK, TICK)
    try:
        assert timer.expirations() == 0  # nothing yet: a read that would block reports none
        time.sleep(5.5 * TICK)
        assert 4 <= timer.expirations() <= 6
        assert timer.expirations() == 0
    finally:
        timer.close()


@pytest.mark.parametrize("use_timerfd", [pytest.param(True, marks=linux_only), False])
async def test_ticks_follow_the_schedule_and_a_stall_shows_as_a_gap(use_timerfd: bool):
    clock = SharedClock(use_timerfd=use_timerfd)
    rec = Recorder()
    clock.register(rec)
    try:
        assert clock.source == ("timerfd" if use_timerfd else "sleep+spin")
        await asyncio.sleep(10 * TICK)
        time.sleep(4.5 * TICK)  # noqa: ASYNC251 - the loop is blocked on purpose: those ticks cannot go on time
        await asyncio.sleep(5 * TICK)
    finally:
        clock.unregister(rec)
    assert clock.source == ""
    ticks = [t for t, _ in rec.ticks]
    assert ticks == sorted(set(ticks)) and ticks[0] == 1
    assert max(b - a for a, b in zip(ticks, ticks[1:], strict=False)) >= 4  # the stall is one gap, not a burst
    (first_tick, first_at), (last_tick, last_at) = rec.ticks[0], rec.ticks[-1]
    assert (last_at - first_at) / (last_tick - first_tick) == pytest.approx(TICK, abs=0.004)  # the 20 ms schedule
    count = len(rec.ticks)
    await asyncio.sleep(3 * TICK)
    assert len(rec.ticks) == count  # stopped with its last listener


@linux_only
async def test_a_due_tick_is_dispatched_by_poll_before_the_loop_wakes_and_only_once():
    """The receive path polls the clock: a tick due while the loop is busy goes out at once, not after the burst."""
    clock = SharedClock()
    rec = Recorder()
    clock.register(rec)
    try:
        clock.poll()
        assert rec.ticks == []  # not due yet: nothing sent early
        while time.monotonic() < clock.due + 0.002:  # the loop is busy (a burst of callbacks) past the tick
            pass
        clock.poll()
        assert [t for t, _ in rec.ticks] == [1]  # sent from the poll, while the loop still had not woken
        await asyncio.sleep(3 * TICK)  # the timerfd's readiness is handled now: tick 1 is not sent again
        ticks = [t for t, _ in rec.ticks]
        assert ticks[:2] == [1, 2] and ticks == sorted(set(ticks))
    finally:
        clock.unregister(rec)
