"""A call's media over the ingress's own connection (AudioSocket's TCP, chan_websocket) instead of a UDP socket.

Same contract as the RTP endpoint towards the core: uplink frames go to the call's `on_media`; on each tick of
the shared clock exactly one 20 ms G.711 frame (agent audio or silence) goes out, through the `send` function
the ingress attaches once its connection is there (frames before that are dropped, as RTP's are before the
peer's address is known). The ingress turns the frame into its wire format in `send`.

The core also keeps the rendezvous between a call and its connection when the two arrive apart: the ARI
ingress creates the call, names it with the id Asterisk will present (AudioSocket UUID, chan_websocket
channel id), and the server that accepts Asterisk's connection claims the call by that id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from bridge.clock import Datagram
from bridge.media import Address, MediaLeg
from bridge.rtp.playout import Playout
from bridge.rtp.session import Audio, Dtmf, RtpStats

if TYPE_CHECKING:
    from bridge.call import Call

MAX_CATCHUP = 5  # frames sent back-to-back after late ticks; later than that the gap stays silent (as RTP's)
NOWHERE: Address = ("", 0)

Send = Callable[[bytes], object]


class StreamEndpoint:
    """The stream side of one call: `receive`/`digit` for the uplink, `attach(send)` for the downlink."""

    local_address: Address = NOWHERE

    def __init__(self, leg: MediaLeg, playout: Playout, on_media: Callable[[Audio | Dtmf], None]) -> None:
        self.leg = leg
        self.playout = playout
        self.on_media = on_media
        self.sending = True
        self.stats = RtpStats()
        self._send: Send | None = None
        self._last_tick: int | None = None
        self._sequence = 0
        self.tap: Callable[[bytes], None] | None = None  # gets every frame the caller hears (a call recording)

    def attach(self, send: Send) -> None:
        """The connection is up: frames go out through `send(frame)` from the next tick on."""
        self._send = send

    def close(self) -> None:
        self._send = None

    def retarget(self, leg: MediaLeg) -> None:
        self.leg = leg

    def receive(self, payload: bytes) -> None:
        """Caller audio in the call's G.711, any length."""
        self.stats.received += 1
        self._sequence = (self._sequence + 1) & 0xFFFF
        self.on_media(Audio(payload, self._sequence))

    def digit(self, key: str) -> None:
        self.on_media(Dtmf(key))

    def on_tick(self, tick: int, out: list[Datagram]) -> None:
        gap = 1 if self._last_tick is None else tick - self._last_tick
        self._last_tick = tick
        for _ in range(min(gap, MAX_CATCHUP)):
            frame = self.playout.pop_frame() or self.playout.silence_frame
            if self._send is not None and self.sending:
                out.append((self._sendto, frame, NOWHERE))
                self.stats.sent += 1
            elif self.tap is not None:
                frame = self.playout.silence_frame  # not connected yet or on hold: the caller hears nothing
            if self.tap is not None:
                self.tap(frame)

    def _sendto(self, frame: bytes, _address: Address) -> object:
        return self._send(frame) if self._send is not None else None


async def carry(call: Call, send: Send, read: Coroutine[Any, Any, str]) -> None:
    """Carry `call`'s media over an ingress's connection until either ends.

    Attaches `send` for the downlink and runs `read`, the ingress's loop that feeds the uplink to
    `call.endpoint` and returns why the connection ended; that reason ends the call. The call's release
    (whoever ended it) stops the reader.
    """
    assert isinstance(call.endpoint, StreamEndpoint), "a stream call (MediaLeg.stream)"
    call.endpoint.attach(send)
    reading = asyncio.ensure_future(read)
    released = asyncio.ensure_future(call.released.wait())
    try:
        await asyncio.wait((reading, released), return_when=asyncio.FIRST_COMPLETED)
    finally:
        reading.cancel()
        released.cancel()
    if reading.done() and not reading.cancelled():
        call.end(reading.result())
