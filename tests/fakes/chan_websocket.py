"""A fake Asterisk WebSocket channel in client mode, written from channels/chan_websocket.c and
res/res_websocket_client.c at 22.10.1 (../shared/docs/pbx.md §1.8). It shares no code with bridge.pbx.websocket.

Like Asterisk with a `per_call_config` websocket_client it connects to the uri (query parameters from the dial
string's v() option appended) offering the `media` subprotocol, writes MEDIA_START first (plain text, or JSON with
f(json)), then one BINARY frame of the channel's codec per 20 ms. What the app sends is handled as
read_from_ws_and_queue does: TEXT over 128 bytes is ignored, `HANGUP` hangs up (the websocket closes with 1000),
unknown commands are ignored; BINARY is cut into optimal_frame_size frames and queued (MEDIA_XOFF at 900
frames, ignored at 1000), and a 20 ms timer takes one frame off the queue (`played`, with its time).
DTMF goes out as `DTMF_END digit:<d> channel_id:<id>`. Closing the websocket is how it hangs up itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import aiohttp

FRAME = 160
MAX_TEXT = 128
QUEUE_MAX, XOFF, XON = 1000, 900, 800


class FakeChanWebSocket:
    def __init__(self, uri: str, channel_id: str = "1733300000.7", fmt: str = "ulaw", json_format: bool = False):
        self.uri = uri
        self.channel_id = channel_id
        self.format = fmt
        self.json = json_format
        self.queue: list[bytes] = []
        self.played: list[tuple[float, bytes]] = []
        self.texts: list[str] = []  # commands received
        self.hangup_reason = ""
        self.ended = asyncio.Event()
        self.queue_full = False
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def connect(self, frames: list[bytes] | None = None, variables: dict[str, str] | None = None) -> None:
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(self.uri, protocols=("media",))
        await self._ws.send_str(self._media_start(variables or {}))
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read()), loop.create_task(self._stream(frames or [])),
                       loop.create_task(self._timer())]

    def _media_start(self, variables: dict[str, str]) -> str:
        fields = {"connection_id": "sip-to-ai", "channel": "WebSocket/sip-to-ai/0x7f3c", "channel_id": self.channel_id,
                  "format": self.format, "optimal_frame_size": FRAME, "ptime": 20}
        if self.json:
            return json.dumps({"event": "MEDIA_START", **fields, "channel_variables": variables})
        return "MEDIA_START " + " ".join(f"{k}:{v}" for k, v in fields.items())

    async def send_text(self, text: str) -> None:
        assert self._ws is not None
        await self._ws.send_str(text)

    async def send_dtmf(self, digit: str) -> None:
        if self.json:  # ast_json_pack("{s:s, s:s, s:s#}", "event", "DTMF_END", "channel_id", ..., "digit", ...)
            await self.send_text(json.dumps({"event": "DTMF_END", "channel_id": self.channel_id, "digit": digit}))
        else:
            await self.send_text(f"DTMF_END digit:{digit} channel_id:{self.channel_id}")

    async def _stream(self, frames: list[bytes]) -> None:
        assert self._ws is not None
        loop = asyncio.get_running_loop()
        t0, n = loop.time(), 0
        silence = b"\xff" * FRAME
        while not self.ended.is_set():
            with contextlib.suppress(ConnectionError):
                await self._ws.send_bytes(frames[n] if n < len(frames) else silence)
            n += 1
            await asyncio.sleep(max(0.0, t0 + n * 0.020 - loop.time()))

    async def _timer(self) -> None:
        loop = asyncio.get_running_loop()
        t0, n = loop.time(), 0
        while not self.ended.is_set():
            n += 1
            await asyncio.sleep(max(0.0, t0 + n * 0.020 - loop.time()))
            if self.queue:
                self.played.append((time.monotonic(), self.queue.pop(0)))
            if self.queue_full and len(self.queue) < XON:
                self.queue_full = False
                await self.send_text("MEDIA_XON")

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for msg in self._ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    if len(msg.data) > MAX_TEXT:
                        continue  # "exceeds maximum length": ignored
                    self.texts.append(msg.data.strip())
                    command = json.loads(msg.data)["command"] if self.json else msg.data.strip().split(" ")[0]
                    if command == "HANGUP":
                        self.hangup_reason = "HANGUP"
                        await self._ws.close(code=1000)
                        return
                elif msg.type is aiohttp.WSMsgType.BINARY:
                    await self._queue(msg.data)
            self.hangup_reason = self.hangup_reason or f"closed by the app ({self._ws.close_code})"
        finally:
            self.ended.set()

    async def _queue(self, data: bytes) -> None:
        if len(self.queue) >= QUEUE_MAX:
            return
        for i in range(0, len(data) - FRAME + 1, FRAME):  # a partial frame is dropped (no bulk media mode)
            self.queue.append(data[i : i + FRAME])
            if not self.queue_full and len(self.queue) >= XOFF:
                self.queue_full = True
                await self.send_text("MEDIA_XOFF")

    async def close(self) -> None:
        self.ended.set()
        if self._ws is not None:
            await self._ws.close()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await task
        if self._session is not None:
            await self._session.close()
