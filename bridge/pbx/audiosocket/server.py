"""The AudioSocket ingress (AUDIOSOCKET_LISTEN): Asterisk connects, presents the call's UUID, then streams audio.

Three ways in reach it (asterisk/extensions.conf): the `AudioSocket(uuid,host:port)` dialplan application, a
`Dial(AudioSocket/host:port/uuid/c(slin))` channel, and the ARI ExternalMedia channel (ARI_MEDIA=audiosocket).
The first two become calls of their own here. The third is a call the ARI ingress already created and named
with the UUID (MediaCore.expect_stream): this server only hands it its connection.

Audio (../shared/docs/pbx.md §1.7): Asterisk sends signed-linear frames (slin 8 kHz as kind 0x10, or 0x11-0x18 at
the higher slin rates when the channel is in one of them); the core speaks G.711, so the uplink is resampled to
8 kHz where needed and encoded, and every 20 ms frame of the downlink goes back as 0x10 slin 8 kHz, which
Asterisk accepts whatever the channel's format. `app_audiosocket` ends the call after 2 s with nothing from
either side (MAX_WAIT_TIMEOUT_MSEC): the shared clock sends silence whenever the agent is quiet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import numpy as np

from bridge.call import Call, CallLog, MediaCore
from bridge.codec import g711
from bridge.codec.resample import StreamResampler
from bridge.config import Settings, allowed
from bridge.listen import ConnectionCap
from bridge.media import SAMPLE_RATE, Address, CallInfo, Codec, MediaLeg
from bridge.pbx.audiosocket import protocol as wire
from bridge.pbx.audiosocket.protocol import AudioSocketError, AudioSocketParser
from bridge.stream import carry

log = logging.getLogger(__name__)

CODEC = Codec.PCMU  # the core's side of the conversion: μ-law keeps the telephone's 8 kHz 14-bit range
IDENTIFY_TIMEOUT = 5.0  # seconds for the UUID message, which Asterisk writes right after connecting
READ_SIZE = 65536
# A stalled Asterisk stops reading: past 64 KiB waiting in our send buffer (about 4 s of 20 ms frames) newer
# frames are dropped and counted rather than queued without end.
MAX_UNSENT_BYTES = 64 * 1024


class AudioSocketControl:
    """CallControl of a dialplan AudioSocket call: the connection is all there is to talk back to Asterisk."""

    def __init__(self, writer: asyncio.StreamWriter, log_: logging.LoggerAdapter) -> None:
        self.writer = writer
        self.log = log_

    async def hangup(self, reason: str) -> None:
        """Kind 0x00: `AudioSocket()` returns 0 (the dialplan goes on after it); the AudioSocket channel hangs up."""
        if not self.writer.is_closing():
            self.writer.write(wire.hangup())
            with contextlib.suppress(OSError):
                await self.writer.drain()
            self.writer.close()

    async def transfer(self, destination: str) -> None:
        """Not available: AudioSocket carries no signalling. The AudioSocket ends; the dialplan after it decides."""
        self.log.warning("! transfer_call to %r is not available over AudioSocket: ending the AudioSocket; the "
                         "dialplan continues after AudioSocket() (or after Dial with the g option)", destination)
        await self.hangup("transfer not available")


class AudioSocketSession:
    """One connection from Asterisk: its UUID, then its audio to a call and the call's audio back."""

    def __init__(self, core: MediaCore, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.core = core
        self.reader = reader
        self.writer = writer
        self.parser = AudioSocketParser()
        self.peer: Address = writer.get_extra_info("peername")[:2]
        self.log: logging.LoggerAdapter = CallLog(log, {"call_id": "audiosocket:{}:{}".format(*self.peer)})
        self._resampler: StreamResampler | None = None
        self._resampler_rate = 0
        self._pending: list[wire.Message] = []  # what arrived with the UUID
        self.failures = 0
        self.dropped = 0  # downlink frames dropped because Asterisk did not read (MAX_UNSENT_BYTES)
        # DTMF over the connection reaches the agent, except on an ARI call: the bridge passes the caller's keys
        # to the ExternalMedia channel too, and ARI already reports them (ChannelDtmfReceived); once is enough.
        self.digits = True

    async def run(self) -> None:
        try:
            async with asyncio.timeout(IDENTIFY_TIMEOUT):
                uuid = await self._identify()
        except (AudioSocketError, TimeoutError, OSError) as exc:
            self.log.warning("! not an AudioSocket connection: %s", exc or "no UUID in time")
            return
        self.log = CallLog(log, {"call_id": uuid})
        call = self.core.claim_stream(uuid)
        if call is False:  # its call ended before Asterisk connected: nothing to carry, no new call either
            self.log.info("x media connection for a call that has ended: closing it")
            return
        if call is not None:  # an ExternalMedia channel of a call the ARI ingress runs: media only
            self.log.info("= media connection for %s", call.call_id)
            self.digits = False
            await self.carry(call)
            return
        await self._dialplan_call(uuid)

    async def _identify(self) -> str:
        while True:
            data = await self.reader.read(READ_SIZE)
            if not data:
                raise AudioSocketError("closed before its UUID")
            match self.parser.feed(data):
                case [wire.Identify(uuid=uuid), *rest]:  # the parser accepts nothing else first
                    self._pending = rest
                    return str(uuid)

    async def _dialplan_call(self, uuid: str) -> None:
        """A call of its own: AudioSocket() or Dial(AudioSocket/...) in Asterisk's dialplan."""
        if (refused := self.core.admit("audiosocket")) is not None:
            await self._refuse(refused)
            return
        info = CallInfo(uuid, "audiosocket", metadata={"uuid": uuid, "peer": "{}:{}".format(*self.peer)})
        async with asyncio.TaskGroup() as tg:
            async def connect(call: Call) -> None:
                tg.create_task(self.carry(call))

            reason = await self.core.serve_call(info, MediaLeg(None, CODEC, stream=True),
                                                AudioSocketControl(self.writer, self.log),
                                                refuse=self._refuse, connect=connect, gone=lambda: "")
        if reason is not None:
            self.log.info("= audiosocket call over: %s", reason)

    async def _refuse(self, why: object) -> None:
        """No call: kind 0x00, so AudioSocket() returns and the dialplan after it routes the caller."""
        self.log.warning("x refusing the call: %s", why)
        self.writer.write(wire.hangup())

    async def carry(self, call: Call) -> None:
        """Carry `call`'s media over this connection until either ends."""
        if why := self._deliver(call, self._pending):
            call.end(why)
            return
        await carry(call, self._send, self._read(call))

    async def _read(self, call: Call) -> str:
        while data := await self.reader.read(READ_SIZE):
            try:
                messages = self.parser.feed(data)
            except AudioSocketError as exc:  # only the first message can break the protocol; kept for safety
                return f"audiosocket protocol error: {exc}"
            if (why := self._deliver(call, messages)) is not None:
                return why
        return "asterisk closed the AudioSocket"

    def _deliver(self, call: Call, messages: list[wire.Message]) -> str | None:
        """Hand the messages to the call; a reason when one of them ends it."""
        endpoint = call.endpoint
        for message in messages:
            match message:
                case wire.Audio(pcm=pcm, rate=rate):
                    endpoint.receive(self._to_g711(pcm, rate))  # type: ignore[union-attr]
                case wire.Digit(key=key) if self.digits:
                    call.dtmf(key)
                case wire.Hangup():
                    return "asterisk sent hang-up"
                case wire.Failure(code=code):
                    self.failures += 1
                    self.log.warning("! asterisk reports an AudioSocket error (%s)", code.hex() or "no code")
                case wire.Garbage(kind=kind, why=why):
                    self.log.warning("! dropped AudioSocket message 0x%02x: %s (%d so far)", kind, why,
                                     self.parser.garbage)
        return None

    def _to_g711(self, pcm: bytes, rate: int) -> bytes:
        samples = np.frombuffer(pcm, dtype="<i2")
        if rate != SAMPLE_RATE:
            if self._resampler is None or self._resampler_rate != rate:
                self._resampler, self._resampler_rate = StreamResampler(rate, SAMPLE_RATE), rate
            samples = self._resampler.process(samples)
        return g711.encode(CODEC, samples)

    def _send(self, frame: bytes) -> None:
        """One 20 ms G.711 frame of the downlink, as a 0x10 slin message (called on the clock's tick)."""
        if self.writer.is_closing():
            return
        if self.writer.transport.get_write_buffer_size() > MAX_UNSENT_BYTES:
            self.dropped += 1
            return
        self.writer.write(wire.audio(g711.decode(CODEC, frame).astype("<i2").tobytes()))


class AudioSocketServer:
    """Listens on AUDIOSOCKET_LISTEN; one AudioSocketSession per connection, all owned by one TaskGroup."""

    def __init__(self, core: MediaCore, settings: Settings) -> None:
        if settings.audiosocket_listen is None:
            raise ValueError("AUDIOSOCKET_LISTEN is not set")
        self.core = core
        self.settings = settings
        self.address: Address = settings.audiosocket_listen
        self.sessions: set[AudioSocketSession] = set()
        self.cap = core.listeners["audiosocket"] = ConnectionCap.for_calls("audiosocket", settings.max_calls)

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        """Accept until cancelled; cancelling ends every call of this server (their sockets close)."""
        async with asyncio.TaskGroup() as tg:
            def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                peer = writer.get_extra_info("peername")
                if not allowed(peer[0], self.settings.audiosocket_allowed_cidrs):  # every call spends API money
                    self.cap.denied += 1
                    log.warning("! audiosocket connection from %s refused: not in AUDIOSOCKET_ALLOWED_CIDRS", peer[0])
                    writer.close()
                    return
                tg.create_task(self._session(reader, writer))

            server = await self.cap.listen_streams(accept, *self.settings.audiosocket_listen)
            self.address = server.sockets[0].getsockname()[:2]
            log.info("= audiosocket server on %s:%d", *self.address)
            async with server:
                if ready is not None:
                    ready.set()
                await asyncio.Future()  # until cancelled

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = AudioSocketSession(self.core, reader, writer)
        self.sessions.add(session)
        try:
            await session.run()
        except Exception:  # a bug in one connection must not take the listener and every other call down
            session.log.exception("! audiosocket session crashed")
        finally:
            self.sessions.discard(session)
            writer.close()


async def serve_audiosocket(core: MediaCore, settings: Settings, ready: asyncio.Event | None = None) -> None:
    """The AudioSocket ingress (AUDIOSOCKET_LISTEN): runs until cancelled; sets `ready` once listening."""
    await AudioSocketServer(core, settings).serve(ready)
