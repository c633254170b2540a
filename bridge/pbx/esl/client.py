"""One ESL connection over asyncio streams: feeds the parser, matches replies to commands, hands events on."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable

from bridge.pbx.esl import protocol as esl
from bridge.pbx.esl.protocol import EslConnectionClosed, EslError, EslEvent, EslMessage, EslProtocolError

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
COMMAND_TIMEOUT = 10.0  # seconds; FreeSWITCH answers in milliseconds, an async socket never blocks on an app
_REPLIES = (esl.CONTENT_COMMAND_REPLY, esl.CONTENT_API_RESPONSE)


class EslConnection:
    """Commands are answered in the order they were sent (mod_event_socket handles one at a time per socket).

    `on_event` gets each event, `on_notice` each other unsolicited message (auth/request, disconnect-notice,
    rude-rejection). `closed` is set once the stream ended, failed to parse, or was closed by us; an event whose
    own serialisation is malformed is counted and dropped (the framing around it still holds).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_event: Callable[[EslEvent], None] | None = None,
                 on_notice: Callable[[EslMessage], None] | None = None) -> None:
        self.reader = reader
        self.writer = writer
        self.on_event = on_event or (lambda _e: None)
        self.on_notice = on_notice or (lambda _m: None)
        self.parser = esl.EslParser()
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.bad_events = 0  # text/event-plain messages whose event did not parse: dropped
        self._waiting: collections.deque[asyncio.Future[EslMessage]] = collections.deque()

    @property
    def peer(self) -> tuple[str, int]:
        return self.writer.get_extra_info("peername")[:2]

    @property
    def local(self) -> tuple[str, int]:
        return self.writer.get_extra_info("sockname")[:2]

    async def read_loop(self) -> None:
        """Read until EOF, a protocol error or cancellation; then fail every command still waiting."""
        try:
            while data := await self.reader.read(READ_CHUNK):
                for message in self.parser.feed(data):
                    self._dispatch(message)
            self._closing("connection closed by FreeSWITCH")
        except EslProtocolError as exc:
            log.warning("! esl %s:%d sent bad bytes: %s; closing", *self.peer, exc)
            self._closing(f"protocol error: {exc}")
        except OSError as exc:
            self._closing(f"connection lost: {exc}")
        finally:
            self._closing("closed")
            self.writer.close()

    def _dispatch(self, message: EslMessage) -> None:
        if message.content_type in _REPLIES and self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_result(message)
        elif message.content_type == esl.CONTENT_EVENT_PLAIN:
            try:
                event = message.event()
            except EslProtocolError as exc:  # the stream is still framed: only this event is lost
                self.bad_events += 1
                log.warning("! esl %s:%d event dropped: %s (%d so far)", *self.peer, exc, self.bad_events)
                return
            self.on_event(event)  # type: ignore[arg-type]
        else:
            self.on_notice(message)

    def _closing(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(EslConnectionClosed(reason))

    def send_nowait(self, data: bytes) -> None:
        """Write a command whose reply nobody waits for (a last hangup on the way out)."""
        if not self.closed.is_set() and not self.writer.is_closing():
            self.writer.write(data)
            future: asyncio.Future[EslMessage] = asyncio.get_running_loop().create_future()
            future.add_done_callback(lambda f: f.cancelled() or f.exception())  # nobody awaits it
            self._waiting.append(future)

    async def command(self, data: bytes, timeout: float = COMMAND_TIMEOUT) -> EslMessage:
        """Send one framed command and return its reply (command/reply or api/response, +OK or -ERR).

        Raises:
            EslConnectionClosed: the connection is gone or closed before the reply.
            EslError: no reply within `timeout`.
        """
        if self.closed.is_set() or self.writer.is_closing():
            raise EslConnectionClosed(self.close_reason or "closed")
        future: asyncio.Future[EslMessage] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self.writer.write(data)
        try:
            async with asyncio.timeout(timeout):
                await self.writer.drain()
                return await future
        except TimeoutError:
            raise EslError(f"no reply within {timeout:g} s") from None
        except OSError as exc:
            raise EslConnectionClosed(str(exc)) from None

    async def checked(self, data: bytes, timeout: float = COMMAND_TIMEOUT) -> EslMessage:
        """Like command(), and a `-ERR` reply raises EslError with its text."""
        reply = await self.command(data, timeout)
        if not reply.ok:
            raise EslError(reply.reply_text or "empty reply")
        return reply

    def close(self) -> None:
        self._closing("closed by the adapter")
        self.writer.close()
