"""SIP requests and responses (RFC 3261 §7, §20): parse(bytes) with limits, and bytes(message); no I/O.

A message that frames but breaks a rule raises SipParseError carrying the headers that could be read, so the
UAS can still answer 400 (or the error's status hint) when a Via is there to route the answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bridge.errors import ParseError
from bridge.sip import grammar as g

MAX_MESSAGE = 65_535  # the largest UDP datagram; RFC 3261 §18.1.1 moves anything near the MTU to TCP anyway
MAX_HEADERS = 256  # header fields per message; real INVITEs carry 15-40, a flood of them is an attack
MAX_HEADER_LINE = 8_192  # one header after unfolding; SDP goes in the body, nothing legitimate nears this
SINGLE = ("call-id", "cseq", "from", "to", "content-length", "max-forwards", "content-type")  # §20: one value each
LIST = ("via", "route", "record-route", "contact", "allow", "supported", "require", "accept", "proxy-require")
CANONICAL = {
    "call-id": "Call-ID", "cseq": "CSeq", "www-authenticate": "WWW-Authenticate", "mime-version": "MIME-Version",
    "rack": "RAck", "rseq": "RSeq", "p-asserted-identity": "P-Asserted-Identity", "min-se": "Min-SE",
}


class SipParseError(ParseError):
    """A SIP message that does not parse. `headers` holds what could be read (for a 400), `request` if it is one."""

    def __init__(self, message: str, status_hint: int = 400, headers: list[tuple[str, str]] | None = None,
                 request: bool = True) -> None:
        super().__init__(message, status_hint)
        self.headers = headers or []
        self.request = request


def canonical(name: str) -> str:
    """Header name as written on the wire: `call-id` -> `Call-ID`, `x-foo` -> `X-Foo`."""
    return CANONICAL.get(name) or "-".join(p[:1].upper() + p[1:] for p in name.split("-"))


@dataclass(frozen=True)
class NameAddr:
    """From / To / Contact / Route value: display name, URI, header parameters (§20.10, §25.1 name-addr)."""

    uri: str
    display: str = ""
    params: dict[str, str] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return self.params.get("tag", "")

    @classmethod
    def parse(cls, value: str) -> NameAddr:
        """Raises ValueError on unbalanced quotes, a bad display name or whitespace inside <...>."""
        text = value.strip()
        display = ""
        if "<" in text or text.startswith('"'):
            m = re.match(rf"^({g.QUOTED}|[^\"<]*?)\s*<([^<>]*)>(.*)$", text, re.DOTALL)
            if not m:
                raise ValueError(f"bad name-addr {value!r}")
            raw_display, uri, rest = m.group(1).strip(), m.group(2), m.group(3)
            if raw_display.startswith('"'):
                display = g.unquote_string(raw_display)
            elif raw_display and not g.DISPLAY_TOKENS.match(raw_display):
                raise ValueError(f"display name {raw_display!r} must be quoted")
            else:
                display = raw_display
            if not uri or uri != uri.strip() or any(c.isspace() for c in uri):
                raise ValueError(f"whitespace inside <{uri}>")
        else:
            uri, semi, rest = text.partition(";")
            uri, rest = uri.strip(), semi + rest
            if not uri or any(c.isspace() for c in uri):
                raise ValueError(f"bad addr-spec {value!r}")
        if not g.SCHEME.match(uri):
            raise ValueError(f"not a URI: {uri!r}")
        return cls(uri, display, g.parse_params(rest))


@dataclass(frozen=True)
class Via:
    """One Via value (§20.42): transport, sent-by host and port, parameters."""

    transport: str
    host: str
    port: int | None
    params: dict[str, str]

    @property
    def branch(self) -> str:
        return self.params.get("branch", "")

    @classmethod
    def parse(cls, value: str) -> Via:
        """Raises ValueError when the value is not a via-parm."""
        m = g.VIA.match(value)
        if not m:
            raise ValueError(f"bad Via {value[:80]!r}")
        port = int(m.group(3)) if m.group(3) else None
        if port is not None and not 0 < port <= 65535:  # the answer could go nowhere (sendto raises)
            raise ValueError(f"Via port {port} out of range")
        return cls(m.group(1).upper(), m.group(2).strip("[]"), port, g.parse_params(m.group(4) or ""))


@dataclass
class Message:
    """Headers as (lower-case full name, unfolded value) in wire order, and the body."""

    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    spelling: dict[str, str] = field(default_factory=dict)  # lower-case name -> as the peer wrote it

    def original_name(self, name: str) -> str:
        return self.spelling.get(name) or canonical(name)

    def get(self, name: str) -> str | None:
        """The first value of a header (compact names accepted)."""
        name = g.COMPACT.get(name.lower(), name.lower())
        return next((v for n, v in self.headers if n == name), None)

    def values(self, name: str) -> list[str]:
        """Every value of a header, comma lists split (§7.3.1)."""
        name = g.COMPACT.get(name.lower(), name.lower())
        out: list[str] = []
        for n, v in self.headers:
            if n == name:
                out.extend(p.strip() for p in g.split_list(v) if p.strip()) if n in LIST else out.append(v)
        return out

    def header_lines(self) -> list[str]:
        lines = [f"{canonical(n)}: {v}" for n, v in self.headers if n != "content-length"]
        lines.append(f"Content-Length: {len(self.body)}")
        return lines

    def vias(self) -> list[Via]:
        return [Via.parse(v) for v in self.values("via")]

    def name_addr(self, name: str) -> NameAddr:
        value = self.get(name)
        if value is None:
            raise ValueError(f"no {name} header")
        return NameAddr.parse(value)

    def cseq(self) -> tuple[int, str]:
        m = g.CSEQ.match((self.get("cseq") or "").strip())
        if not m:
            raise ValueError("bad CSeq")
        return int(m.group(1)), m.group(2)


@dataclass
class Request(Message):
    method: str = ""
    uri: str = ""

    def __bytes__(self) -> bytes:
        head = "\r\n".join([f"{self.method} {self.uri} SIP/2.0", *self.header_lines()])
        return (head + "\r\n\r\n").encode("utf-8", "surrogateescape") + self.body


@dataclass
class Response(Message):
    status: int = 200
    reason: str = "OK"

    def __bytes__(self) -> bytes:
        head = "\r\n".join([f"SIP/2.0 {self.status} {self.reason}", *self.header_lines()])
        return (head + "\r\n\r\n").encode("utf-8", "surrogateescape") + self.body


REASONS = {
    100: "Trying", 180: "Ringing", 200: "OK", 202: "Accepted", 400: "Bad Request", 403: "Forbidden",
    405: "Method Not Allowed", 406: "Not Acceptable", 408: "Request Timeout", 413: "Request Entity Too Large",
    415: "Unsupported Media Type", 416: "Unsupported URI Scheme", 420: "Bad Extension",
    422: "Session Interval Too Small",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist", 482: "Loop Detected",
    487: "Request Terminated", 488: "Not Acceptable Here", 491: "Request Pending", 500: "Server Internal Error",
    501: "Not Implemented", 503: "Service Unavailable", 505: "Version Not Supported", 513: "Message Too Large",
}


def parse(data: bytes, stream: bool = False) -> Request | Response:
    """Parse one message. On a datagram a body beyond Content-Length is ignored (RFC 4475 dblreq).

    Args:
        data: the datagram, or one framed message from a stream.
        stream: the message came over TCP, where Content-Length is mandatory (§18.3).

    Raises:
        SipParseError: with `headers` filled in when the header block could be read.
    """
    if len(data) > MAX_MESSAGE:
        raise SipParseError(f"{len(data)} bytes is over the {MAX_MESSAGE} limit", 513)
    data = data.lstrip(b"\r\n")  # §7.5: CRLFs before the start line are ignored (keep-alives)
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")
    text = head.decode("utf-8", "surrogateescape")
    lines = re.split(r"\r?\n", text)
    start, request = lines[0], not lines[0].startswith("SIP/")
    try:
        headers = _headers(lines[1:])
    except SipParseError as exc:
        exc.request = request  # never answer a broken response
        raise
    try:
        msg = _start_line(start, headers)
        msg.spelling = _spelling(lines[1:])
        msg.body = _body(msg, body, stream)
        _check(msg, text)
    except SipParseError as exc:
        exc.headers, exc.request = headers, request
        raise
    return msg


def next_stream_message(buffer: bytearray) -> bytes | None:
    """Take the first complete message off a TCP stream's buffer (§18.3: framed by Content-Length), else None.

    Keep-alive CRLFs before it are dropped (RFC 5626 §3.5.1). A message without Content-Length is taken with no
    body (parse() then answers 400).

    Raises:
        SipParseError: a Content-Length that is not a number below MAX_MESSAGE: the stream cannot be framed.
    """
    while buffer[:2] == b"\r\n":
        del buffer[:2]
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    length = 0
    for line in bytes(buffer[:end]).split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() in (b"content-length", b"l"):
            value = value.strip()
            if not value.isdigit() or len(value) > len(str(MAX_MESSAGE)) or int(value) > MAX_MESSAGE:
                raise SipParseError(f"Content-Length {value[:20]!r} cannot frame a stream", 400)
            length = int(value)
    total = end + 4 + length
    if len(buffer) < total:
        return None
    message = bytes(buffer[:total])
    del buffer[:total]
    return message


def _headers(lines: list[str]) -> list[tuple[str, str]]:
    unfolded: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t") and unfolded:
            unfolded[-1] += " " + line.strip()  # §7.3.1: a folded line continues the header
        else:
            unfolded.append(line)
    headers: list[tuple[str, str]] = []
    bad: list[str] = []
    for line in unfolded[:MAX_HEADERS]:
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not g.TOKEN_RE.match(name) or len(line) > MAX_HEADER_LINE:
            bad.append(line[:40])
            continue
        name = g.COMPACT.get(name.lower(), name.lower())
        headers.append((name, value.strip(" \t")))
    if len(unfolded) > MAX_HEADERS:  # the first ones are kept: a 400 can still be routed by their Via
        raise SipParseError(f"{len(unfolded)} header fields (limit {MAX_HEADERS})", 400, headers)
    if bad:
        raise SipParseError(f"bad header line {bad[0]!r}", 400, headers)
    return headers


def _spelling(lines: list[str]) -> dict[str, str]:
    names: dict[str, str] = {}
    for line in lines:
        name = line.partition(":")[0].strip()
        if name and line[:1] not in (" ", "\t"):
            names.setdefault(g.COMPACT.get(name.lower(), name.lower()), name)
    return names


def _start_line(start: str, headers: list[tuple[str, str]]) -> Request | Response:
    if start.startswith("SIP/"):
        m = g.STATUS_LINE.match(start)
        if not m:
            raise SipParseError(f"bad status line {start[:60]!r}", 400)
        return Response(headers, status=int(m.group(1)), reason=m.group(2) or "")
    m = g.REQUEST_LINE.match(start)
    if not m:
        raise SipParseError(f"bad request line {start[:60]!r}", 400)
    if m.group(3) != "SIP/2.0":
        raise SipParseError(f"version {m.group(3)}", 505)
    return Request(headers, method=m.group(1), uri=m.group(2))


def _body(msg: Message, body: bytes, stream: bool) -> bytes:
    lengths = {v.strip() for n, v in msg.headers if n == "content-length"}
    if not lengths:
        if stream:
            raise SipParseError("Content-Length is required on a stream", 400)
        return body
    if len(lengths) > 1:
        raise SipParseError("conflicting Content-Length values", 400)
    (raw,) = lengths
    if not (raw.isascii() and raw.isdigit()):  # isdigit() alone takes '²', which int() refuses
        raise SipParseError(f"bad Content-Length {raw[:20]!r}", 400)
    if len(raw) > len(str(MAX_MESSAGE)) or int(raw) > len(body):  # int() refuses 4,300 digits and more
        raise SipParseError(f"Content-Length {raw[:20]} but {len(body)} bytes of body", 400)
    return body[: int(raw)]


def _check(msg: Request | Response, text: str) -> None:
    """The rules every message must meet before anyone acts on it (§8.1.1, §20)."""
    for name in SINGLE:
        if sum(1 for n, _ in msg.headers if n == name) > 1:
            raise SipParseError(f"{name} appears more than once", 400)
    try:
        vias = msg.vias()
        if not vias:
            raise ValueError("no Via")
        number, method = msg.cseq()
        for name in ("from", "to"):
            msg.name_addr(name)
        if msg.get("call-id") is None:
            raise ValueError("no Call-ID")
    except ValueError as exc:
        raise SipParseError(str(exc), 400) from None
    if number >= 2**31:
        raise SipParseError("CSeq number beyond 2**31", 400)
    if isinstance(msg, Request):
        if method != msg.method:
            raise SipParseError(f"CSeq method {method} differs from {msg.method}", 400)
        if "<" in msg.uri or ">" in msg.uri:
            raise SipParseError("Request-URI in <>", 400)
        if msg.uri.lower().startswith(("sip:", "sips:")) and not g.SIP_URI.match(msg.uri):
            raise SipParseError("bad SIP Request-URI", 400)
        if re.search(r"\?.*route=", msg.uri, re.IGNORECASE):
            raise SipParseError("Request-URI carries a Route header (§19.1.5)", 400)
        for name in ("contact", "record-route", "route"):
            for value in msg.values(name):
                if value != "*" or name != "contact" or msg.method != "REGISTER":  # §10.2.2: `*` only there
                    _name_addr_or_400(value)
    if any("\udc80" <= c <= "\udcff" for c in text):
        raise SipParseError("header bytes are not UTF-8", 400)


def _name_addr_or_400(value: str) -> None:
    try:
        uri = NameAddr.parse(value).uri
    except ValueError as exc:
        raise SipParseError(str(exc), 400) from None
    if g.SIP_URI.match(uri) and g.uri_hostport(uri) is None:  # in-dialog requests could go nowhere
        raise SipParseError(f"port out of range in {uri[:80]!r}", 400)


def response(req: Request, status: int, to_tag: str = "", extra: list[tuple[str, str]] | None = None,
             body: bytes = b"", reason: str = "") -> Response:
    """A response to `req` (§8.2.6.2): Via (all, in order), From, To (+ our tag), Call-ID, CSeq copied."""
    headers: list[tuple[str, str]] = []
    for name, value in req.headers:
        if name in ("via", "from", "call-id", "cseq") or (name == "timestamp" and status == 100):
            headers.append((name, value))
        elif name == "to":
            headers.append((name, _with_tag(value, to_tag) if status != 100 else value))
    headers.extend(extra or [])
    return Response(headers, body, status=status, reason=reason or REASONS.get(status, "Unknown"))


def _with_tag(to: str, tag: str) -> str:
    if not tag:
        return to
    try:
        if NameAddr.parse(to).tag:
            return to
    except ValueError:
        return to
    return f"{to};tag={tag}"
