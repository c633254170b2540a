"""A fake FreeSWITCH for the ESL tests, written from the protocol facts (../shared/docs/pbx.md §2.3-2.5, §2.7).

FakeSocketApp plays the dialplan's `socket <adapter> async full`: it connects to the adapter, answers `connect`
with the channel's data serialised as switch_event_serialize does (URL-encoded values, `_undef_`, plus
Content-Type/Reply-Text/Socket-Mode/Control, one header block without Content-Length), replies to commands as
mod_event_socket does (including `-ERR`), emits the events that follow, and does `unicast` media like
switch_ivr_activate_unicast: raw frames over UDP every 20 ms from its local port, recording what arrives.
FakeInboundServer plays the 8021 listener: auth/request, auth, api/response.
It shares no code with bridge.pbx.esl.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import functools
import re
import time
import uuid as uuidlib

FRAME = 160
# What `unicast` sends while the channel reads comfort noise (no RTP from the caller: call start, pauses): a frame
# of 0xFF in the *linear* size, 2 bytes a sample, even with `native` on a G.711 channel (switch_ivr.c, SFF_CNG).
SILENCE = b"\xff" * 2 * FRAME


def _ulaw(code: int) -> int:  # G.711 μ-law expansion (ITU-T G.711 table 2), as FreeSWITCH's mod_g711 decodes
    code = ~code & 0xFF
    magnitude = (((code & 0x0F) << 3) + 0x84) << ((code >> 4) & 0x07)
    return 0x84 - magnitude if code & 0x80 else magnitude - 0x84


def _alaw(code: int) -> int:  # G.711 A-law expansion (table 1)
    code ^= 0x55
    magnitude = (code & 0x0F) << 4
    exponent = (code >> 4) & 0x07
    magnitude = magnitude + 8 if exponent == 0 else (magnitude + 0x108) << (exponent - 1)
    return magnitude if code & 0x80 else -magnitude


def _to_ulaw(linear: int) -> int:  # linear_to_ulaw of FreeSWITCH's src/include/g711.h
    linear, mask = (0x84 - linear, 0x7F) if linear < 0 else (0x84 + linear, 0xFF)
    seg = (linear | 0xFF).bit_length() - 8
    return (0x7F ^ mask) if seg >= 8 else (((seg << 4) | ((linear >> (seg + 3)) & 0xF)) ^ mask)


def _to_alaw(linear: int) -> int:  # linear_to_alaw of the same file
    mask = 0x55 | 0x80 if linear >= 0 else 0x55
    if linear < 0:
        linear = -linear - 8
    seg = (linear | 0xFF).bit_length() - 8 if linear >= 0 else 24  # top_bit() of the unsigned: a tiny step below 0
    if seg >= 8:
        return (0x7F ^ mask) if linear >= 0 else (0x00 ^ mask)
    return ((seg << 4) | ((linear >> (seg + 3 if seg else 4)) & 0x0F)) ^ mask


class G711:
    """One law both ways: what FreeSWITCH does to a G.711 channel's frames around a unicast without `native`
    (decode what the channel reads, encode what comes back to write into it)."""

    def __init__(self, name: str) -> None:
        expand, compress = (_ulaw, _to_ulaw) if name == "PCMU" else (_alaw, _to_alaw)
        self._decoded = [expand(code).to_bytes(2, "little", signed=True) for code in range(256)]
        self._encoded = bytes(compress(v - 0x10000 if v & 0x8000 else v) for v in range(0x10000))  # by uint16

    def decode(self, frame: bytes) -> bytes:
        return b"".join(self._decoded[c] for c in frame)

    def encode(self, pcm: bytes) -> bytes:
        return bytes(self._encoded[v] for v in array.array("H", pcm[: len(pcm) // 2 * 2]))


g711 = functools.cache(G711)  # one table pair per law


# switch_url_encode: outside ' '..'~', plus these, become %XX (uppercase hex)
_ENCODED = set(' #%&+:;<=>?@[\\]^`{|}"\r\n')
_UPPER_HEX = re.compile(rb"[0-9A-F]{2}")


def fs_url_encode(value: str) -> str:
    data = value.encode()
    out = []
    for i, b in enumerate(data):
        if b == 0x25 and _UPPER_HEX.fullmatch(data[i + 1 : i + 3]):
            out.append("%")  # an uppercase %XX is left alone (a lowercase one is encoded again)
        elif b < 0x20 or b > 0x7E or chr(b) in _ENCODED:
            out.append(f"%{b:02X}")
        else:
            out.append(chr(b))
    return "".join(out)


def serialize_event(headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    """switch_event_serialize(..., encode=TRUE)."""
    text = "".join(f"{name}: {fs_url_encode(value) if value else '_undef_'}\n" for name, value in headers)
    if body:
        return (text + f"Content-Length: {len(body)}\n\n").encode() + body
    return (text + "\n").encode()


def event_plain(headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    inner = serialize_event(headers, body)
    return f"Content-Length: {len(inner)}\nContent-Type: text/event-plain\n\n".encode() + inner


def command_reply(text: str) -> bytes:
    return f"Content-Type: command/reply\nReply-Text: {text}\n\n".encode()


def api_response(text: str) -> bytes:
    data = text.encode()
    return f"Content-Type: api/response\nContent-Length: {len(data)}\n\n".encode() + data


async def read_command(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes] | None:
    """One command as read_packet reads it: lines to a blank line, then Content-Length bytes. None at EOF."""
    try:
        block = await reader.readuntil(b"\n\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = block.decode().replace("\r", "").strip("\n").split("\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(": ")
        headers[name.lower()] = value
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    return lines[0], headers, body


class UnicastMedia(asyncio.DatagramProtocol):
    """FreeSWITCH's unicast socket: bound to local-ip:local-port, sends read audio to remote, records writes."""

    def __init__(self, remote: tuple[str, int], frames: list[bytes], silence: bytes = SILENCE,
                 law: G711 | None = None) -> None:
        self.remote = remote
        # a scripted SILENCE stands for comfort noise (SFF_CNG): sent as it is, native or not
        self.frames = [law.decode(f) if law and f != SILENCE else f for f in frames]
        self.silence = silence
        self.law = law  # a G.711 channel forked without `native`: L16 on the wire, G.711 in the channel
        self.received: list[tuple[float, bytes]] = []  # (time.monotonic(), what the channel got written)
        self.sent_at: list[float] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        self.transport = transport

    def datagram_received(self, data, addr):  # type: ignore[no-untyped-def]
        self.received.append((time.monotonic(), self.law.encode(data) if self.law else data))

    async def send_loop(self) -> None:
        """One frame per 20 ms on an absolute schedule: the script, then silence (the channel keeps reading)."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        n = 0
        while self.transport is not None and not self.transport.is_closing():
            frame = self.frames.pop(0) if self.frames else self.silence
            self.transport.sendto(frame, self.remote)
            self.sent_at.append(time.monotonic())
            n += 1
            await asyncio.sleep(max(0.0, t0 + n * 0.020 - loop.time()))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class FakeSocketApp:
    """One channel handed to the adapter by `socket <host:port> async full`. Use as `async with`."""

    def __init__(self, adapter: tuple[str, int], *, caller: str = "1001", destination: str = "7000",
                 answered: bool = False, full: bool = True, codec: str = "PCMU", rate: int = 8000,
                 variables: dict[str, str] | None = None, frames: list[bytes] | None = None,
                 unicast_port_taken: bool = False) -> None:
        self.adapter = adapter
        self.uuid = str(uuidlib.uuid4())
        self.caller = caller
        self.destination = destination
        self.answered = answered
        self.full = full
        self.codec = codec
        self.rate = rate  # Channel-Read-Codec-Rate: the codec's actual rate (OPUS 48000, G722 16000)
        self.unicast_flags = ""
        self.variables = {"direction": "inbound", "uuid": self.uuid, "sip_from_user": caller,
                          "sip_h_X-Empty": "", **(variables or {})}
        self.script = frames or []
        self.unicast_port_taken = unicast_port_taken  # the local-port is in use: FreeSWITCH logs it, sends nothing
        self.commands: list[str] = []  # every command line received, in order
        self.sendmsgs: list[dict[str, str]] = []
        self.api_calls: list[str] = []
        self.transfers: list[str] = []
        self.media: UnicastMedia | None = None
        self.hangup_cause = ""
        self.hung_up = asyncio.Event()
        self.adapter_closed = asyncio.Event()
        self.connected = False
        self.myevents = False
        self.linger: int | None = None
        self.resumed = False
        self.continued = False
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> FakeSocketApp:
        reader, self._writer = await asyncio.open_connection(*self.adapter)
        self._tasks.append(asyncio.create_task(self._serve(reader)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.media is not None:
            self.media.close()
        if self._writer is not None:
            self._writer.close()

    # -- what a test does to the channel ------------------------------------------------------------------------

    def press(self, digit: str) -> None:
        """The caller presses a key (RFC 2833 from the phone): a DTMF event, without variables."""
        self._event("DTMF", [("DTMF-Digit", digit), ("DTMF-Duration", "2000"), ("DTMF-Source", "RTP")],
                    variables=False)

    async def hangup(self, cause: str = "NORMAL_CLEARING") -> None:
        """The caller hangs up."""
        await self._hangup(cause)

    def vanish(self) -> None:
        """FreeSWITCH dies: the TCP connection resets, the media stops."""
        if self.media is not None:
            self.media.close()
        if self._writer is not None:
            self._writer.transport.abort()

    # -- the wire ----------------------------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(data)

    def _channel_headers(self, event_name: str, variables: bool = True) -> list[tuple[str, str]]:
        state = "ACTIVE" if self.answered else "RINGING"
        headers = [
            ("Event-Name", event_name),
            ("Core-UUID", "6f2c1a9e-0000-4000-8000-00000000c0de"),
            ("FreeSWITCH-Hostname", "fs1.example.org"),
            ("Event-Date-Local", time.strftime("%Y-%m-%d %H:%M:%S")),
            ("Event-Calling-File", "mod_event_socket.c"),
            ("Channel-State", "CS_HANGUP" if self.hangup_cause else "CS_EXECUTE"),
            ("Channel-Call-State", "HANGUP" if self.hangup_cause else state),
            ("Answer-State", "hangup" if self.hangup_cause else ("answered" if self.answered else "ringing")),
            ("Unique-ID", self.uuid),
            ("Call-Direction", "inbound"),
            ("Caller-Caller-ID-Name", "Alice & Bob"),
            ("Caller-Caller-ID-Number", self.caller),
            ("Caller-Destination-Number", self.destination),
            ("Caller-Context", "public"),
            ("Channel-Name", f"sofia/internal/{self.caller}@10.0.0.1"),
        ]
        if self.answered or self.codec != "PCMU":
            headers += [("Channel-Read-Codec-Name", self.codec), ("Channel-Read-Codec-Rate", str(self.rate))]
        if variables:
            headers += [(f"variable_{k}", v) for k, v in self.variables.items()]
        return headers

    def _event(self, name: str, extra: list[tuple[str, str]] = (), variables: bool = True,  # type: ignore[assignment]
               body: bytes = b"") -> None:
        if self.myevents:
            self._send(event_plain(self._channel_headers(name, variables) + list(extra), body))

    async def _serve(self, reader: asyncio.StreamReader) -> None:
        try:
            while (cmd := await read_command(reader)) is not None:
                await self._command(*cmd)
        finally:
            self.adapter_closed.set()
            if not self.hangup_cause and not self.transfers:
                # The park loop of an `async` socket ends with the socket, `resume` or not (FreeSWITCH 1.10.12,
                # seen): the dialplan goes on after the socket app. A transferred channel is elsewhere already.
                self.continued = True
            if self.media is not None:
                self.media.close()

    async def _command(self, line: str, headers: dict[str, str], body: bytes) -> None:
        self.commands.append(line)
        word, _, arg = line.partition(" ")
        if not self.connected and word != "connect":
            return  # acted on, but its reply never comes (the first command must be connect)
        match word:
            case "connect":
                self.connected = True
                reply = self._channel_headers("CHANNEL_DATA") + [
                    ("Content-Type", "command/reply"), ("Reply-Text", "+OK\n"),
                    ("Socket-Mode", "async"), ("Control", "full" if self.full else "single-channel")]
                self._send(serialize_event(reply))
            case "myevents":
                if self.myevents:
                    self._send(command_reply("-ERR aready enabled."))
                else:
                    self.myevents = True
                    self._send(command_reply("+OK Events Enabled"))
            case "linger" | "nolinger" | "api" | "bgapi" | "event" if not self.full:
                self._send(command_reply("-ERR command not found"))
            case "linger":
                self.linger = int(arg) if arg else -1
                self._send(command_reply(f"+OK will linger {arg} seconds" if arg else "+OK will linger"))
            case "resume":
                self.resumed = True
                self._send(command_reply("+OK"))
            case "sendmsg":
                await self._sendmsg(arg, headers, body)
            case "api":
                self._send(api_response(await self._api(arg)))
            case "exit":
                self._send(command_reply("+OK bye"))
                await self._close()
            case _:
                self._send(command_reply("-ERR command not found"))

    async def _api(self, arg: str) -> str:
        self.api_calls.append(arg)
        cmd, _, rest = arg.partition(" ")
        args = rest.split()
        if cmd == "uuid_transfer":
            if len(args) < 2:
                return "-USAGE: <uuid> [-bleg|-both] <dest-exten> [<dialplan>] [<context>]\n"
            if args[0] != self.uuid or self.hangup_cause:
                return "-ERR No such channel!\n"
            self.transfers.append(" ".join(args[1:]))
            self._tasks.append(asyncio.create_task(self._socket_app_ends()))  # after this reply is written
            return "+OK\n"
        if cmd == "uuid_kill":
            if not args or args[0] != self.uuid:
                return "-ERR No such channel!\n"
            cause = args[1] if len(args) > 1 else "NORMAL_CLEARING"
            self._tasks.append(asyncio.create_task(self._hangup(cause)))  # runs after this reply is written
            return "+OK\n"
        return f"-ERR {cmd} Command not found!\n"

    async def _sendmsg(self, target: str, headers: dict[str, str], body: bytes) -> None:
        if target and target != self.uuid:
            self._send(command_reply(f"-ERR invalid session id [{target}]"))
            return
        self.sendmsgs.append(headers)
        self._send(command_reply("+OK"))  # async socket: +OK at once, whatever it carries
        match headers.get("call-command"):
            case "execute":
                await self._execute(headers.get("execute-app-name", ""),
                                    headers.get("execute-app-arg", body.decode()), headers.get("event-uuid", ""))
            case "hangup":
                await self._hangup(headers.get("hangup-cause", "NORMAL_CLEARING"))
            case "unicast":
                await self._unicast(headers)

    async def _execute(self, app: str, arg: str, event_uuid: str) -> None:
        app_uuid = event_uuid or str(uuidlib.uuid4())
        info = [("Application", app), ("Application-Data", arg), ("Application-UUID", app_uuid)]
        self._event("CHANNEL_EXECUTE", info)
        if app == "answer":
            self.answered = True
            self._event("CHANNEL_PROGRESS_MEDIA")
            self._event("CHANNEL_ANSWER")
        elif app == "transfer":
            self.transfers.append(arg)
        elif app == "set":
            name, _, value = arg.partition("=")
            self.variables[name] = value
        elif app == "hangup":
            await self._hangup(arg or "NORMAL_CLEARING")
            return
        elif app not in ("park", "playback", "sleep"):
            await self._hangup("DESTINATION_OUT_OF_ORDER")
            return
        self._event("CHANNEL_EXECUTE_COMPLETE", info + [("Application-Response", "_none_")])

    async def _unicast(self, h: dict[str, str]) -> None:
        local = (h.get("local-ip", "127.0.0.1"), int(h.get("local-port", "8025")))
        remote = (h.get("remote-ip", "127.0.0.1"), int(h.get("remote-port", "8026")))
        if self.unicast_port_taken:
            return  # switch_ivr_activate_unicast fails to bind; the async socket already said +OK
        # without `native` the channel's audio is decoded to L16 at its actual rate (switch_ivr_activate_unicast)
        self.unicast_flags = h.get("flags", "")
        native = "native" in self.unicast_flags
        silence = SILENCE if native else b"\xff" * (self.rate // 50 * 2)
        law = g711(self.codec) if not native and self.codec in ("PCMU", "PCMA") else None
        loop = asyncio.get_running_loop()
        _, self.media = await loop.create_datagram_endpoint(lambda: UnicastMedia(remote, self.script, silence, law),
                                                            local_addr=local)
        self._tasks.append(asyncio.create_task(self.media.send_loop()))

    async def _socket_app_ends(self, cause: str = "") -> None:
        """Transfer (or hangup) breaks the park loop: the socket app completes; the channel goes on elsewhere."""
        extra = [("Hangup-Cause", cause)] if cause else []
        self._event("CHANNEL_UNPARK", extra)
        self._event("CHANNEL_EXECUTE_COMPLETE", [("Application", "socket"), ("Application-Data", "adapter async full"),
                                                 ("Application-UUID", str(uuidlib.uuid4())), *extra])
        self._event("CHANNEL_STATE", extra)
        self._event("CHANNEL_STATE", extra)

    async def _hangup(self, cause: str) -> None:
        """The hangup order of mod_event_socket with linger, then the disconnect-notice."""
        if self.hangup_cause:
            return
        self.hangup_cause = cause
        if self.media is not None:
            self.media.close()
        self._event("CHANNEL_HANGUP", [("Hangup-Cause", cause)])
        if not self.transfers:  # after a transfer the socket app is over already
            await self._socket_app_ends(cause)
        self._event("CHANNEL_HANGUP_COMPLETE", [("Hangup-Cause", cause)])
        self.hung_up.set()
        if self.linger is not None:
            self._send(("Content-Type: text/disconnect-notice\n"
                        f"Controlled-Session-UUID: {self.uuid}\nContent-Disposition: linger\n"
                        f"Channel-Name: sofia/internal/{self.caller}@10.0.0.1\nLinger-Time: {self.linger}\n"
                        "Content-Length: 0\n\n").encode())
            if self.linger == -1:
                return  # FreeSWITCH waits for the adapter to close the socket
            await asyncio.sleep(self.linger)
        await self._close()

    async def _close(self) -> None:
        text = b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
        self._send(f"Content-Type: text/disconnect-notice\nControlled-Session-UUID: {self.uuid}\n"
                   f"Content-Disposition: disconnect\nContent-Length: {len(text)}\n\n".encode() + text)
        if self._writer is not None:
            self._writer.close()


class FakeInboundServer:
    """FreeSWITCH's event socket listener (8021): auth/request, auth, api. Use as `async with`."""

    def __init__(self, password: str = "ClueCon", channels: set[str] | None = None) -> None:
        self.password = password
        self.channels = channels or set()
        self.commands: list[str] = []  # command lines after auth (auth lines are recorded as "auth ***")
        self.transfers: list[str] = []
        self.connections = 0
        self.authed = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    async def __aenter__(self) -> FakeInboundServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.create_task(self._client(reader, writer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        self._server = await asyncio.start_server(accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """FreeSWITCH goes down: the listener and every connection close."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self.authed.clear()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        writer.write(b"Content-Type: auth/request\n\n")
        authed = False
        try:
            while (cmd := await read_command(reader)) is not None:
                line = cmd[0]
                if not authed:
                    self.commands.append("auth ***" if line.startswith("auth ") else line)
                    if line == f"auth {self.password}":
                        authed = True
                        writer.write(command_reply("+OK accepted"))
                        self.authed.set()
                    else:
                        writer.write(command_reply("-ERR invalid"))
                        break
                    continue
                self.commands.append(line)
                word, _, arg = line.partition(" ")
                if word == "api":
                    writer.write(api_response(self._api(arg)))
                elif word == "event":
                    writer.write(command_reply("+OK event listener enabled plain"))
                elif word == "exit":
                    writer.write(command_reply("+OK bye"))
                    break
                else:
                    writer.write(command_reply("-ERR command not found"))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def _api(self, arg: str) -> str:
        cmd, _, rest = arg.partition(" ")
        args = rest.split()
        if cmd == "uuid_transfer":
            if len(args) < 2:
                return "-USAGE: <uuid> [-bleg|-both] <dest-exten> [<dialplan>] [<context>]\n"
            if args[0] not in self.channels:
                return "-ERR No such channel!\n"
            self.transfers.append(rest)
            return "+OK\n"
        return f"-ERR {cmd} Command not found!\n"
