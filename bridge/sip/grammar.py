"""RFC 3261 §25 grammar pieces as regexes and small pure helpers (each names the ABNF rule it follows)."""

from __future__ import annotations

import re
from urllib.parse import unquote

# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
TOKEN_RE = re.compile(rf"^{TOKEN}$")
# quoted-string = SWS DQUOTE *(qdtext / quoted-pair ) DQUOTE; quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F)
QUOTED = r'"(?:[^"\\\r\n]|\\[\x00-\x09\x0b\x0c\x0e-\x7f])*"'
# Request-Line = Method SP Request-URI SP SIP-Version CRLF (exactly one SP each: RFC 4475 lwsstart, trws)
REQUEST_LINE = re.compile(rf"^({TOKEN}) ([^\s]+) (SIP/\d+\.\d+)$")
# Status-Line = SIP-Version SP Status-Code SP Reason-Phrase; Status-Code = 3DIGIT (RFC 4475 bigcode)
STATUS_LINE = re.compile(r"^SIP/2\.0 (\d{3})(?: (.*))?$", re.DOTALL)
# via-parm = sent-protocol LWS sent-by *( SEMI via-params ); sent-protocol = name SLASH version SLASH transport
VIA = re.compile(
    rf"^\s*SIP\s*/\s*2\.0\s*/\s*({TOKEN})\s+(\[[0-9A-Fa-f:.]+\]|[^\s;:]+)(?:\s*:\s*(\d{{1,5}}))?\s*(;.*)?$", re.DOTALL
)
# CSeq = 1*DIGIT LWS Method; the number is below 2**31 (§8.1.1.5)
CSEQ = re.compile(rf"^(\d{{1,10}})\s+({TOKEN})$")
# generic-param = token [ EQUAL gen-value ]; gen-value = token / host / quoted-string
PARAM = re.compile(rf"^\s*({TOKEN})\s*(?:=\s*({TOKEN}|\[[0-9A-Fa-f:.]+\]|{QUOTED}))?\s*$")
# SIP-URI = "sip:" [ userinfo ] hostport uri-parameters [ headers ]
SIP_URI = re.compile(r"^(sips?):(?:([^@\s]*)@)?(\[[0-9A-Fa-f:.]+\]|[^:;?\s]+)(?::(\d{1,5}))?(;[^?\s]*)?(\?\S*)?$",
                     re.IGNORECASE)
# absoluteURI scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+\-.]*):\S+$")
DISPLAY_TOKENS = re.compile(rf"^{TOKEN}(?:\s+{TOKEN})*$")

COMPACT = {
    "v": "via", "i": "call-id", "f": "from", "t": "to", "m": "contact", "l": "content-length",
    "c": "content-type", "k": "supported", "s": "subject", "e": "content-encoding", "o": "event",
    "r": "refer-to", "b": "referred-by", "u": "allow-events", "x": "session-expires", "a": "accept-contact",
    "j": "reject-contact", "d": "request-disposition", "y": "identity", "n": "identity-info",
}


def split_list(value: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside quoted strings and <...> (header lists §7.3.1, parameter lists)."""
    parts: list[str] = []
    cur: list[str] = []
    quoted = escaped = False
    angle = 0
    for ch in value:
        if quoted:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            angle += 1
        elif ch == ">":
            angle = max(0, angle - 1)
        elif ch == sep and not angle:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return parts


def parse_params(text: str) -> dict[str, str]:
    """`;name=value;flag` -> {name: value, flag: ""} (names lower-cased). Raises ValueError on an empty or bad one."""
    params: dict[str, str] = {}
    if not text.strip():
        return params
    pieces = split_list(text, ";")
    if pieces[0].strip():
        raise ValueError(f"parameters must start with ';': {text!r}")
    for piece in pieces[1:]:
        m = PARAM.match(piece)
        if not m:
            raise ValueError(f"bad parameter {piece!r}")
        params[m.group(1).lower()] = m.group(2) or ""
    return params


def unquote_string(text: str) -> str:
    """The content of a quoted-string, quoted-pairs resolved."""
    return re.sub(r"\\(.)", r"\1", text[1:-1], flags=re.DOTALL)


def uri_user(uri: str) -> str:
    """The user part of a sip/sips URI (unescaped), the number of a tel URI, else ''."""
    m = SIP_URI.match(uri)
    if m:
        return unquote((m.group(2) or "").split(":", 1)[0])
    if uri.lower().startswith("tel:"):
        return unquote(uri[4:].split(";", 1)[0])
    return ""


def uri_hostport(uri: str, default_port: int = 5060) -> tuple[str, int] | None:
    """(host, port) of a sip/sips URI, honouring `maddr`; None for other schemes and ports beyond 1-65535."""
    m = SIP_URI.match(uri)
    if not m:
        return None
    host = m.group(3).strip("[]")
    try:
        params = parse_params(m.group(5) or "")
    except ValueError:
        params = {}
    host = params.get("maddr") or host
    port = int(m.group(4)) if m.group(4) else default_port
    return (host, port) if 0 < port <= 65535 else None
