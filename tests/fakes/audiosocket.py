"""A fake Asterisk AudioSocket client, written from res/res_audiosocket.c, app_audiosocket.c and chan_audiosocket.c
at 22.10.1 (../shared/docs/pbx.md §1.7). It shares no code with bridge.pbx.audiosocket.

Like Asterisk it connects (TCP_NODELAY), writes kind 0x01 + htons(16) + the uuid_parse'd UUID, then one slin
frame (kind 0x10, 320 bytes, little-endian) every 20 ms and DTMF as kind 0x03 + one ASCII byte. What comes back
is read as ast_audiosocket_receive_frame_with_hangup does: kind 0x00 or EOF is a hang-up; audio kinds are kept;
a zero length or any other kind fails the read, and like app_audiosocket the fake then ends the call by
closing the socket. Closing the socket is also how it hangs up itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import struct
import time
import uuid as uuidlib

RATE = 8000
FRAME = 160  # samples per 20 ms
AUDIO_KINDS = set(range(0x10, 0x19))


def tone(hz: float, frames: int, amplitude: int = 8000) -> list[bytes]:
    samples = [int(amplitude * math.sin(2 * math.pi * hz * n / RATE)) for n in range(frames * FRAME)]
    return [struct.pack(f"<{FRAME}h", *samples[i * FRAME : (i + 1) * FRAME]) for i in range(frames)]


class FakeAudioSocketClient:
    """One AudioSocket connection as Asterisk makes it."""

    def __init__(self, address: tuple[str, int], call_uuid: str | None = None) -> None:
        self.address = address
        self.uuid = call_uuid or str(uuidlib.uuid4())
        self.received: list[tuple[float, bytes]] = []  # (monotonic time, slin payload) of each audio message
        self.hangup_reason = ""  # why the read side ended: "hangup", "eof", "failed: ..."
        self.ended = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def connect(self, frames: list[bytes] | None = None) -> None:
        """Connect, identify, then stream `frames` (silence after them) every 20 ms until closed."""
        reader, self._writer = await asyncio.open_connection(*self.address)
        self._writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._writer.write(bytes([0x01, 0x00, 0x10]) + uuidlib.UUID(self.uuid).bytes)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read(reader)), loop.create_task(self._stream(frames or []))]

    def send_raw(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)

    def send_dtmf(self, digit: str) -> None:
        self.send_raw(bytes([0x03, 0x00, 0x01]) + digit.encode())

    async def _stream(self, frames: list[bytes]) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        silence = bytes(2 * FRAME)
        n = 0
        while not self.ended.is_set():
            payload = frames[n] if n < len(frames) else silence
            self.send_raw(bytes([0x10]) + struct.pack("!H", len(payload)) + payload)
            n += 1
            await asyncio.sleep(max(0.0, t0 + n * 0.020 - loop.time()))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                try:
                    header = await reader.readexactly(3)
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.hangup_reason = "eof"
                    return
                kind, length = header[0], struct.unpack("!H", header[1:])[0]
                if kind == 0x00:
                    self.hangup_reason = "hangup"
                    return
                if kind not in AUDIO_KINDS:
                    self.hangup_reason = f"failed: kind 0x{kind:02x}"
                    return
                if length < 1:
                    self.hangup_reason = "failed: zero length"
                    return
                self.received.append((time.monotonic(), await reader.readexactly(length)))
        finally:
            self.ended.set()
            if self._writer is not None:
                self._writer.close()

    def abort(self) -> None:
        """Hang up from Asterisk's side without waiting (close the socket; the tasks end on their own)."""
        self.ended.set()
        if self._writer is not None:
            self._writer.close()

    async def close(self) -> None:
        """Hang up from Asterisk's side: close the socket."""
        self.ended.set()
        if self._writer is not None:
            self._writer.close()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await task
