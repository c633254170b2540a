"""chan_websocket's control messages as Asterisk 22.10.1 writes and reads them, sans-I/O.

Media is BINARY messages of raw codec bytes (no header), one 20 ms frame each from Asterisk; control is TEXT
(channels/chan_websocket.c; ../shared/docs/pbx.md §1.8). Asterisk's events are plain text by default,
`NAME key:value key:value ...` (`_create_event_*`), or JSON `{"event": NAME, ...}` with dial option `f(json)` or
`chan_websocket.conf` `control_message_format = json`; `MEDIA_START` is always the first. Our commands are one
word plus an optional argument, case-sensitive, at most 128 bytes (`MAX_TEXT_MESSAGE_LEN`, longer ones are
ignored with a warning).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from bridge.errors import ParseError

MAX_COMMAND_BYTES = 128  # MAX_TEXT_MESSAGE_LEN: Asterisk ignores longer TEXT messages
SUBPROTOCOL = "media"  # the only websocket subprotocol chan_websocket registers
# Codecs the core carries as they are (G.711): chan_websocket sends the channel's native format untouched.
G711_FORMATS = ("ulaw", "alaw")
_FIELD = re.compile(r"(?<!\w)(\w+):(\S*)")  # a name starts a word: no retry at each of its letters (n²)
_NAME = re.compile(r"[A-Z][A-Z_]*")  # every event name chan_websocket writes


class WebSocketProtocolError(ParseError):
    """A TEXT message from Asterisk that is not a chan_websocket event."""


@dataclass(frozen=True)
class MediaStart:
    """The first message: which channel, in which format, in which frame size."""

    connection_id: str
    channel: str
    channel_id: str
    format: str
    optimal_frame_size: int
    ptime: int
    variables: Mapping[str, str] = field(default_factory=dict)  # JSON format only: the channel's variables
    json: bool = False  # the channel's control format: our commands must match it


@dataclass(frozen=True)
class DtmfEnd:
    digit: str


@dataclass(frozen=True)
class FlowControl:
    """MEDIA_XOFF (Asterisk's queue reached 900 frames: stop sending) or MEDIA_XON (below 800 again)."""

    paused: bool


@dataclass(frozen=True)
class Other:
    """An event the adapter does not act on (STATUS, QUEUE_DRAINED, MEDIA_MARK_PROCESSED, ERROR, ...)."""

    name: str
    fields: Mapping[str, str]


Event = MediaStart | DtmfEnd | FlowControl | Other


def parse_event(text: str) -> Event:
    """One TEXT message from Asterisk, plain or JSON.

    Raises:
        WebSocketProtocolError: not an event (empty, JSON without "event", MEDIA_START without its fields).
    """
    text = text.strip()
    fields = _fields(text)
    name = fields.pop("event", "")
    try:
        match name:
            case "MEDIA_START":
                variables = json.loads(fields.pop("channel_variables", None) or "{}")
                if not isinstance(variables, dict):
                    raise ValueError("channel_variables")
                return MediaStart(fields["connection_id"], fields["channel"], fields["channel_id"], fields["format"],
                                  int(fields["optimal_frame_size"]), int(fields["ptime"]),
                                  {str(k): str(v) for k, v in variables.items()}, text.startswith("{"))
            case "DTMF_END":
                return DtmfEnd(fields["digit"])
            case "MEDIA_XOFF" | "MEDIA_XON":
                return FlowControl(paused=name == "MEDIA_XOFF")
    except (KeyError, ValueError) as exc:
        raise WebSocketProtocolError(f"{name} without a usable {exc}") from None
    if not _NAME.fullmatch(name):
        raise WebSocketProtocolError(f"not a chan_websocket event: {text[:60]!r}")
    return Other(name, fields)


def _fields(text: str) -> dict[str, str]:
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # also int() of 4,300 digits and more, and deep nesting
            raise WebSocketProtocolError(f"bad JSON event: {type(exc).__name__}") from None
        if not isinstance(data, dict):
            raise WebSocketProtocolError("JSON event is not an object")
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}
    name, _, rest = text.partition(" ")
    if name == "ERROR":  # error_text is free text, the last field
        head, _, error_text = rest.partition("error_text:")
        return {"event": name, **dict(_FIELD.findall(head)), "error_text": error_text}
    if name in ("MEDIA_BUFFERING_COMPLETED", "MEDIA_MARK_PROCESSED"):  # "NAME <correlation id>"
        return {"event": name, "correlation_id": rest}
    return {"event": name, **dict(_FIELD.findall(rest))}


def command(name: str, as_json: bool = False, correlation_id: str = "") -> str:
    """A command (ANSWER, HANGUP, FLUSH_MEDIA, MARK_MEDIA ...) in the channel's control format: plain text
    `NAME [id]`, or `{"command": NAME, "correlation_id": id}` for a channel in JSON format (`handle_command`).

    Raises:
        ValueError: longer than Asterisk reads.
    """
    if as_json:
        body = {"command": name, **({"correlation_id": correlation_id} if correlation_id else {})}
        text = json.dumps(body, separators=(",", ":"))
    else:
        text = f"{name} {correlation_id}" if correlation_id else name
    if len(text.encode()) > MAX_COMMAND_BYTES:
        raise ValueError(f"chan_websocket ignores commands over {MAX_COMMAND_BYTES} bytes")
    return text
