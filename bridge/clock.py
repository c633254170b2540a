"""The one process-wide 20 ms clock that drives every call's RTP sender.

Tick n is due at t0 + n·20 ms on the loop's monotonic clock (never accumulated, so no drift). The clock
sleeps to just before the tick and spins the rest: the event loop's own timer wakes ~1 ms late (epoll has
millisecond resolution) and 3-10 ms late on a noisy host, while a spin is exact. The spin margin adapts to
the oversleep seen recently, so the cost is one short spin per tick for the whole process, not per call.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

TICK = 0.020
MIN_MARGIN = 0.0015  # the loop's timer wakes up to ~1.1 ms late even on a quiet machine (epoll ms rounding)
MAX_MARGIN = 0.004  # beyond this the spin would starve the calls' own work (20 % of a core); accept lateness
MARGIN_WINDOW = 250  # ticks (5 s) of oversleep history behind the margin


Datagram = tuple[Callable[[bytes, tuple[str, int]], object], bytes, tuple[str, int]]  # (sendto, data, address)


class TickListener(Protocol):
    def on_tick(self, tick: int, out: list[Datagram]) -> None:
        """Called once per tick with the tick's index (gaps mean missed ticks): append what to send to `out`."""
        ...


class SharedClock:
    """One ticker for all calls. Runs only while at least one listener is registered."""

    def __init__(self) -> None:
        self._listeners: dict[TickListener, None] = {}  # ordered set: a call keeps its place in the round
        self._task: asyncio.Task[None] | None = None
        self._oversleep: deque[float] = deque(maxlen=MARGIN_WINDOW)
        self.margin = MIN_MARGIN
        self.send_errors = 0
        self.lateness: deque[float] = deque(maxlen=3000)  # dispatch lateness, seconds, for figures

    def __len__(self) -> int:
        return len(self._listeners)

    def register(self, listener: TickListener) -> None:
        self._listeners[listener] = None
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="shared-clock")

    def unregister(self, listener: TickListener) -> None:
        self._listeners.pop(listener, None)
        if not self._listeners and self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        tick = 0
        gc_was_enabled = gc.isenabled()
        gc.disable()  # collections run right after each tick, in the slack, never in the middle of one
        try:
            await self._loop(loop, t0, tick)
        finally:
            if gc_was_enabled:
                gc.enable()

    async def _loop(self, loop: asyncio.AbstractEventLoop, t0: float, tick: int) -> None:
        while True:
            tick += 1
            due = t0 + tick * TICK
            wake = due - self.margin
            await asyncio.sleep(max(0.0, wake - loop.time()))
            now = time.monotonic()
            self._oversleep.append(now - wake)
            while now < due:  # spin the last stretch: exact where the timer is not
                now = time.monotonic()
            late = now - due
            if late >= TICK:  # missed whole ticks: jump to the current one; listeners see the gap
                tick += int(late / TICK)
            self.lateness.append(late)
            self._dispatch(tick)
            gc.collect(0 if tick % 50 else 1 if tick % 3000 else 2)
            if tick % 50 == 0:
                self._adapt()

    def _dispatch(self, tick: int) -> None:
        """Collect every call's frame first, then send them all in one tight loop (the same spacing each tick)."""
        out: list[Datagram] = []
        for listener in list(self._listeners):
            try:
                listener.on_tick(tick, out)
            except Exception:  # one broken call must not stop every other call's audio
                log.exception("! tick listener %r failed; removed", listener)
                self._listeners.pop(listener, None)
        for sendto, data, address in out:
            try:
                sendto(data, address)
            except OSError:  # a full socket buffer or a closed socket: this frame is lost, the rest go out
                self.send_errors += 1

    def _adapt(self) -> None:
        ordered = sorted(self._oversleep)
        p99 = ordered[int(len(ordered) * 0.99)] if ordered else 0.0
        self.margin = min(MAX_MARGIN, max(MIN_MARGIN, p99 + 0.0005))
