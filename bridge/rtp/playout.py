"""The downlink buffer: agent audio of any chunk size in, exact 20 ms frames of the call's format out.

It keeps an incomplete frame until more audio arrives (padding it with silence only when the agent's turn
ends), drops everything at once on `clear()` (barge-in), caps what it holds, and counts, per reply, how
much audio has actually been played, which OpenAI's truncate needs.
"""

from __future__ import annotations

from collections import deque

from bridge.media import FRAME_MS, FRAME_SAMPLES

DEFAULT_MAX_SECONDS = 180.0  # a few minutes of speech: no agent reply is longer, memory stays bounded


class Playout:
    """The call's audio bytes queued for the caller: G.711 (one byte per sample at 8 kHz), or PCM16 at its rate.

    `silence` is the G.711 silence byte, or a whole 20 ms frame of silence (which sets the frame size).
    """

    def __init__(self, silence: int | bytes, max_seconds: float = DEFAULT_MAX_SECONDS) -> None:
        self.silence_frame = silence if isinstance(silence, bytes) else bytes([silence]) * FRAME_SAMPLES
        self.frame_bytes = len(self.silence_frame)
        self.bytes_per_second = self.frame_bytes * 1000 // FRAME_MS
        self.max_bytes = int(max_seconds * self.bytes_per_second)
        self._buf = bytearray()
        self._items: deque[list] = deque()  # [item_id, bytes still queued] in queue order
        self._played: dict[str, int] = {}  # item_id -> bytes played (only the latest few items are kept)
        self.dropped_bytes = 0

    def __len__(self) -> int:
        return len(self._buf)

    def push(self, data: bytes, item_id: str | None = None) -> None:
        """Queue agent audio (the call's format). Beyond the cap, the excess is dropped and counted."""
        room = self.max_bytes - len(self._buf)
        if len(data) > room:
            self.dropped_bytes += len(data) - max(room, 0)
            data = data[: max(room, 0)]
        if not data:
            return
        self._buf += data
        if self._items and self._items[-1][0] == item_id:
            self._items[-1][1] += len(data)
        else:
            self._items.append([item_id, len(data)])

    def end_turn(self) -> None:
        """The agent's turn is over: pad a trailing partial frame with silence so it gets played."""
        partial = len(self._buf) % self.frame_bytes
        if partial:
            self.push(self.silence_frame[partial:], self._items[-1][0] if self._items else None)

    def clear(self) -> int:
        """Barge-in: drop every queued byte at once. Returns how many were dropped."""
        n = len(self._buf)
        self._buf.clear()
        self._items.clear()
        return n

    def pop_frame(self) -> bytes | None:
        """The next whole 20 ms frame, or None when less than a frame is queued."""
        if len(self._buf) < self.frame_bytes:
            return None
        frame = bytes(self._buf[: self.frame_bytes])
        del self._buf[: self.frame_bytes]
        self._account(self.frame_bytes)
        return frame

    def played_ms(self, item_id: str) -> int:
        """Milliseconds of `item_id`'s audio that have left towards the caller."""
        return self._played.get(item_id, 0) * 1000 // self.bytes_per_second

    def _account(self, n: int) -> None:
        while n and self._items:
            item = self._items[0]
            take = min(n, item[1])
            if item[0] is not None:
                if item[0] not in self._played and len(self._played) >= 8:
                    self._played.pop(next(iter(self._played)))
                self._played[item[0]] = self._played.get(item[0], 0) + take
            item[1] -= take
            n -= take
            if not item[1]:
                self._items.popleft()
