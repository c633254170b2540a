"""FreeSWITCH Event Socket (mod_event_socket) framing, sans-I/O: a message parser and the command builders.

Wire format (../shared/docs/pbx.md §2.3, `mod_event_socket.c` `read_packet`): header lines `Name: value`
ended by LF (or, for a whole block, CRLF), a blank line, then `Content-Length` bytes of body when that header is
present. An event (`text/event-plain`) carries a second, nested serialisation in that body: its own header lines,
a blank line, and its own optional `Content-Length` body. Values are URL-encoded by `switch_event_serialize`
(names are not) and an empty value is written `_undef_`: every value is decoded here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from bridge.errors import BridgeError, ParseError

# A CHANNEL_DATA block with every channel variable of a SIP call is 5-20 KB; 256 KiB leaves room for long
# custom headers while keeping a peer that never sends a blank line from growing our buffer without end.
MAX_HEADER_BYTES = 256 * 1024
# The adapter never asks for bulk output (no `show channels`): 1 MiB bounds one api/response or event body.
MAX_BODY_BYTES = 1024 * 1024
MAX_HEADER_LINES = 2000  # far above the ~300 headers of a verbose CHANNEL_DATA

# A dialplan extension or context as a transfer target may carry one: the model chooses it, so nothing that
# could add an api argument or start a new ESL line gets through.
EXTENSION = re.compile(r"[A-Za-z0-9_+*#.@-]{1,64}")
UUID = re.compile(r"[0-9A-Za-z-]{1,64}")  # FreeSWITCH uuids are RFC 4122 text; also accepts custom origination_uuid

UNDEF = "_undef_"  # switch_event_serialize writes an empty value this way

CONTENT_COMMAND_REPLY = "command/reply"
CONTENT_API_RESPONSE = "api/response"
CONTENT_AUTH_REQUEST = "auth/request"
CONTENT_EVENT_PLAIN = "text/event-plain"
CONTENT_DISCONNECT = "text/disconnect-notice"
CONTENT_RUDE_REJECTION = "text/rude-rejection"


class EslProtocolError(ParseError):
    """Bytes from FreeSWITCH that are not an ESL message (malformed or oversized): the connection is closed."""


class EslError(BridgeError):
    """An ESL command failed: `-ERR` reply, timeout, or the connection is gone."""


class EslConnectionClosed(EslError):
    """The ESL connection closed before the command was answered."""


_ESCAPES = re.compile(r"(?:%[0-9A-Fa-f]{2})+")


def decode_value(raw: str) -> str:
    """Undo switch_url_encode (%XX, any case) and map `_undef_` back to the empty string.

    Each run of escapes is UTF-8 (invalid sequences become U+FFFD); a '%' not followed by two hex digits stays.
    Like urllib's unquote, without its list of one string per '%' (a header of 100 KB of '%' made 20 MB of them).
    """
    if raw == UNDEF:
        return ""
    if "%" not in raw:
        return raw
    return _ESCAPES.sub(lambda m: bytes.fromhex(m.group().replace("%", "")).decode("utf-8", "replace"), raw)


class Headers(Mapping[str, str]):
    """Header values by name, decoded; lookups ignore case (FreeSWITCH writes `Content-Type`, we `content-type`)."""

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        self._items: dict[str, tuple[str, str]] = {}
        for name, value in pairs:
            self._items.setdefault(name.lower(), (name, value))  # first wins, like switch_event_get_header

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()][1]

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({dict(self.items())!r})"


@dataclass(frozen=True)
class EslEvent:
    """One FreeSWITCH event: its headers (decoded) and its own body (BACKGROUND_JOB output, custom bodies)."""

    headers: Headers
    body: bytes = b""

    @property
    def name(self) -> str:
        return self.headers.get("Event-Name", "")

    @property
    def uuid(self) -> str:
        return self.headers.get("Unique-ID", "")


@dataclass(frozen=True)
class EslMessage:
    """One framed message from FreeSWITCH: the outer headers and body."""

    headers: Headers
    body: bytes = b""
    _event: list[EslEvent] = field(default_factory=list, repr=False, compare=False)

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    @property
    def reply_text(self) -> str:
        """`Reply-Text` of a command/reply, or the body of an api/response, stripped."""
        if self.content_type == CONTENT_API_RESPONSE:
            return self.body.decode("utf-8", "replace").strip()
        return self.headers.get("Reply-Text", "").strip()

    @property
    def ok(self) -> bool:
        return self.reply_text.startswith("+OK")

    def event(self) -> EslEvent | None:
        """The event carried by a `text/event-plain` message (None for other content types).

        Raises:
            EslProtocolError: the nested serialisation is malformed.
        """
        if self.content_type != CONTENT_EVENT_PLAIN:
            return None
        if not self._event:
            self._event.append(parse_event(self.body))
        return self._event[0]


def _header_end(buf: bytes | bytearray) -> tuple[int, int] | None:
    """(end of the header lines, start of what follows) for the first blank line, LF or CRLF framed."""
    found = [(i, i + n) for sep, n in ((b"\n\n", 2), (b"\r\n\r\n", 4)) if (i := buf.find(sep)) >= 0]
    return min(found) if found else None


def _parse_headers(block: bytes) -> Headers:
    lines = block.split(b"\n")
    if len(lines) > MAX_HEADER_LINES:
        raise EslProtocolError(f"{len(lines)} header lines (limit {MAX_HEADER_LINES})", 413)
    pairs = []
    for raw in lines:
        line = raw.rstrip(b"\r").decode("utf-8", "replace")
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or not _NAME.fullmatch(name):
            raise EslProtocolError(f"not a header line: {line[:60]!r}")
        pairs.append((name, decode_value(value.removeprefix(" "))))
    return Headers(pairs)


_NAME = re.compile(r"[!-9;-~]+")  # printable ASCII except ':' (RFC 822 field-name, as FreeSWITCH writes them)


def _content_length(headers: Headers) -> int:
    raw = headers.get("Content-Length")
    if raw is None:
        return 0
    if not raw.isdigit() or not raw.isascii():
        raise EslProtocolError(f"bad Content-Length {raw[:20]!r}")
    if len(raw) > len(str(MAX_BODY_BYTES)) or int(raw) > MAX_BODY_BYTES:  # int() refuses 4,300 digits and more
        raise EslProtocolError(f"Content-Length {raw[:20]} above the {MAX_BODY_BYTES} limit", 413)
    return int(raw)


def parse_event(data: bytes) -> EslEvent:
    """Parse a serialised event (the body of a `text/event-plain` message).

    Raises:
        EslProtocolError: no blank line after the headers, a bad header line, or a body shorter than announced.
    """
    end = _header_end(data)
    if end is None:
        raise EslProtocolError("event without the blank line after its headers")
    headers = _parse_headers(bytes(data[: end[0]]))
    length = _content_length(headers)
    body = bytes(data[end[1] : end[1] + length])
    if len(body) < length:
        raise EslProtocolError(f"event body of {len(body)} bytes, {length} announced")
    return EslEvent(headers, body)


class EslParser:
    """Turns the bytes of one ESL connection, split anywhere, into EslMessages.

    After it has raised EslProtocolError once the stream cannot be resynchronised: the parser stays broken.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pending: Headers | None = None  # headers whose body has not fully arrived
        self._need = 0
        self._broken: EslProtocolError | None = None

    def feed(self, data: bytes) -> list[EslMessage]:
        """Add received bytes; return every message they complete, in order.

        Raises:
            EslProtocolError: malformed or oversized input (now or earlier on this stream).
        """
        if self._broken is not None:
            raise self._broken
        self._buf += data
        try:
            return list(self._drain())
        except EslProtocolError as exc:
            self._broken = exc
            raise

    def _drain(self) -> Iterator[EslMessage]:
        while True:
            if self._pending is None:
                end = _header_end(self._buf)
                if end is None:
                    if len(self._buf) > MAX_HEADER_BYTES:
                        raise EslProtocolError(f"header block above {MAX_HEADER_BYTES} bytes", 413)
                    return
                if end[0] > MAX_HEADER_BYTES:
                    raise EslProtocolError(f"header block above {MAX_HEADER_BYTES} bytes", 413)
                block = bytes(self._buf[: end[0]])
                del self._buf[: end[1]]
                if not block.strip(b"\r\n"):
                    continue  # stray blank lines between messages
                self._pending = _parse_headers(block.lstrip(b"\r\n"))
                self._need = _content_length(self._pending)
            if len(self._buf) < self._need:
                return
            body = bytes(self._buf[: self._need])
            del self._buf[: self._need]
            headers, self._pending = self._pending, None
            yield EslMessage(headers, body)


def transfer_target(destination: str, default_extension: str, context: str) -> tuple[str, str]:
    """(extension, context) of a transfer: the agent's destination, else the default extension.

    Raises:
        ValueError: no destination and no default, or a target that is not a plain extension/context name.
    """
    extension = destination.strip() or default_extension
    if not extension:
        raise ValueError("no destination and TRANSFER_EXTENSION is not set")
    if not EXTENSION.fullmatch(extension) or not EXTENSION.fullmatch(context):
        raise ValueError(f"transfer target {extension[:64]!r} in {context[:64]!r} is not a plain extension")
    return extension, context


# ---- commands (adapter -> FreeSWITCH) ------------------------------------------------------------------------


def _clean(text: str, what: str) -> str:
    """A command line or header value: one line, since a newline would end the block and start a new command."""
    if "\n" in text or "\r" in text:
        raise ValueError(f"{what} must not contain a line break")
    return text


def command(line: str, headers: Mapping[str, str] | None = None, body: bytes = b"") -> bytes:
    """Frame one command: its line, its headers, and a body with its Content-Length."""
    parts = [_clean(line, "command")]
    for name, value in (headers or {}).items():
        parts.append(f"{_clean(name, 'header name')}: {_clean(value, name)}")
    if body:
        parts.append(f"content-length: {len(body)}")
    return ("\n".join(parts) + "\n\n").encode() + body


def connect() -> bytes:
    """Outbound mode: the first command; the reply carries the channel's data."""
    return command("connect")


def auth(password: str) -> bytes:
    """Inbound mode: answer `auth/request`. The result holds the password: never log it."""
    return command(f"auth {password}")


def myevents(fmt: str = "plain") -> bytes:
    return command(f"myevents {fmt}")


def linger(seconds: int | None = None) -> bytes:
    """Keep the socket after hangup so the last events arrive (`full` outbound sockets only)."""
    return command("linger" if seconds is None else f"linger {seconds}")


def event(fmt: str, *names: str) -> bytes:
    return command(" ".join(("event", fmt, *names)))


def filter_(header: str, value: str) -> bytes:
    return command(f"filter {header} {value}")


def api(cmd: str) -> bytes:
    return command(f"api {cmd}")


def bgapi(cmd: str, job_uuid: str | None = None) -> bytes:
    return command(f"bgapi {cmd}", {"Job-UUID": job_uuid} if job_uuid else None)


def resume() -> bytes:
    """Outbound mode: when the socket closes, continue the dialplan instead of hanging up."""
    return command("resume")


def exit_() -> bytes:
    return command("exit")


def sendmsg(call_command: str, headers: Mapping[str, str], uuid: str = "", body: bytes = b"") -> bytes:
    """`sendmsg [uuid]` with `call-command` and its headers (`switch_ivr_parse_event`)."""
    return command(f"sendmsg {uuid}".rstrip(), {"call-command": call_command, **headers}, body)


def execute(app: str, arg: str = "", uuid: str = "", event_uuid: str = "", event_lock: bool = False) -> bytes:
    """Run a dialplan application on the channel; CHANNEL_EXECUTE_COMPLETE with `Application-UUID` ends it."""
    headers = {"execute-app-name": app}
    body = b""
    if "\n" in arg or "\r" in arg:  # a multi-line argument travels as the body
        headers["content-type"] = "text/plain"
        body = arg.encode()
    elif arg:
        headers["execute-app-arg"] = arg
    if event_uuid:
        headers["event-uuid"] = event_uuid
    if event_lock:
        headers["event-lock"] = "true"
    return sendmsg("execute", headers, uuid, body)


def hangup(cause: str = "NORMAL_CLEARING", uuid: str = "") -> bytes:
    return sendmsg("hangup", {"hangup-cause": cause}, uuid)


def unicast(local: tuple[str, int], remote: tuple[str, int], transport: str = "udp", flags: str = "",
            uuid: str = "") -> bytes:
    """Fork the channel's audio (`switch_ivr_activate_unicast`).

    FreeSWITCH binds `local` (its own side), sends the read audio to `remote` (ours), and writes into the
    channel whatever arrives on `local`: 16-bit linear at the codec's rate, or with `flags` `native` the codec's
    own bytes (G.711), no RTP header either way.
    """
    headers = {
        "local-ip": local[0], "local-port": str(local[1]),
        "remote-ip": remote[0], "remote-port": str(remote[1]),
        "transport": transport,
    }
    if flags:
        headers["flags"] = flags
    return sendmsg("unicast", headers, uuid)
