"""A call's two audio channels on one timeline, in bounded memory: what the caller sent, what the caller heard.

The timeline is the call's own RTP sender: every frame the endpoint sends (agent audio, or silence while the
agent is quiet, on hold, or after a barge-in cleared the queue) adds 20 ms to the right channel. A caller
packet lands on the left channel at the position its RTP sequence number gives, relative to an anchor taken
where the first packet arrived (and taken afresh when the stream jumps by more than a second): network jitter
does not smear the alignment, lost packets stay silence.

Sans-I/O: full chunks of both channels are handed to `sink(left, right)` (G.711 bytes, equal lengths) for a
writer thread to decode and store; this module never touches a file or a clock.
"""

from __future__ import annotations

from collections.abc import Callable

CHUNK = 16000  # samples (2 s at 8 kHz) handed to the writer at once
SLACK = 1600  # samples of left-channel lateness tolerated beyond the chunk (200 ms of jitter)
REANCHOR = 8000  # a caller packet whose computed place is more than 1 s off is re-anchored where it arrives


class TwoChannels:
    """Left: caller audio placed by sequence number; right: every frame sent. Both G.711 of one law."""

    def __init__(self, silence: int, sink: Callable[[bytes, bytes], None]) -> None:
        self.silence = silence
        self.sink = sink
        self.left = bytearray()
        self.right = bytearray()
        self.base = 0  # timeline position (samples) of the first byte still buffered
        self._anchor: tuple[int, int, int] | None = None  # (sequence, position, length) of the last caller packet
        self.late = 0  # caller packets that arrived after their place was written out

    @property
    def samples(self) -> int:
        """Timeline length so far (what has been sent to the caller)."""
        return self.base + len(self.right)

    def heard(self, frame: bytes) -> None:
        """One frame that left towards the caller (called by the endpoint on every tick)."""
        self.right += frame
        if len(self.right) >= CHUNK + SLACK:
            self._flush(CHUNK)

    def caller(self, payload: bytes, sequence: int) -> None:
        """One caller audio payload with its RTP sequence number."""
        now = self.samples
        pos = now
        if self._anchor is not None:
            seq0, pos0, len0 = self._anchor
            delta = (sequence - seq0) & 0xFFFF
            if delta >= 0x8000:
                delta -= 0x10000
            # right after the previous packet, whatever its length (stream ingresses vary it); gaps and
            # reordering in units of this packet's length
            pos = pos0 + len0 + (delta - 1) * len(payload) if delta > 0 else pos0 + delta * len(payload)
            if abs(pos - now) > REANCHOR:
                pos = now
        self._anchor = (sequence, pos, len(payload))
        at = pos - self.base
        if at < 0:
            self.late += 1
            return
        if at > len(self.left):
            self.left += bytes([self.silence]) * (at - len(self.left))
        self.left[at:at + len(payload)] = payload

    def close(self) -> None:
        """Hand over everything buffered, both channels padded to the same length."""
        self._flush(max(len(self.left), len(self.right)))

    def _flush(self, n: int) -> None:
        if n <= 0:
            return
        pad = bytes([self.silence])
        for buf in (self.left, self.right):
            if len(buf) < n:
                buf += pad * (n - len(buf))
        left, right = bytes(self.left[:n]), bytes(self.right[:n])
        del self.left[:n]
        del self.right[:n]
        self.base += n
        self.sink(left, right)
