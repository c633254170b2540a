"""Typed ARI objects and events (Asterisk `rest-api/api-docs/{channels,bridges,events}.json`), parsed from JSON."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.errors import ParseError


@dataclass(frozen=True)
class Channel:
    """The `Channel` model (channels.json): the fields the adapter reads."""

    id: str
    name: str
    state: str
    caller_name: str = ""
    caller_number: str = ""
    exten: str = ""
    context: str = ""
    app_name: str = ""  # the dialplan application it is running (Stasis while in an ARI app)
    app_data: str = ""
    protocol_id: str = ""
    channelvars: Mapping[str, str] = field(default_factory=dict)

    @property
    def technology(self) -> str:
        """`PJSIP`, `Local`, `UnicastRTP`, ...: the name before the first '/'."""
        return self.name.partition("/")[0]

    @classmethod
    def parse(cls, data: Any) -> Channel:
        """Raises ParseError when a required field of the model is missing or mistyped."""
        obj = _mapping(data, "Channel")
        caller = _mapping(obj.get("caller", {}), "Channel.caller")
        dialplan = _mapping(obj.get("dialplan", {}), "Channel.dialplan")
        variables = _mapping(obj.get("channelvars") or {}, "Channel.channelvars")
        return cls(
            id=_str(obj, "id"),
            name=_str(obj, "name"),
            state=_str(obj, "state"),
            caller_name=str(caller.get("name", "")),
            caller_number=str(caller.get("number", "")),
            exten=str(dialplan.get("exten", "")),
            context=str(dialplan.get("context", "")),
            app_name=str(dialplan.get("app_name", "")),
            app_data=str(dialplan.get("app_data", "")),
            protocol_id=str(obj.get("protocol_id", "")),
            channelvars={str(k): str(v) for k, v in variables.items()},
        )


@dataclass(frozen=True)
class Bridge:
    """The `Bridge` model (bridges.json)."""

    id: str
    bridge_type: str
    channels: tuple[str, ...] = ()

    @classmethod
    def parse(cls, data: Any) -> Bridge:
        obj = _mapping(data, "Bridge")
        channels = obj.get("channels", [])
        if not isinstance(channels, list):
            raise ParseError("Bridge.channels is not a list")
        return cls(id=_str(obj, "id"), bridge_type=str(obj.get("bridge_type", "")), channels=tuple(channels))


# ---- events (events.json) -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StasisStart:
    """A channel entered the application; `args` are the Stasis() arguments."""

    channel: Channel
    args: tuple[str, ...]


@dataclass(frozen=True)
class StasisEnd:
    """A channel left the application (hung up, or continued in the dialplan)."""

    channel: Channel


@dataclass(frozen=True)
class ChannelHangupRequest:
    channel: Channel


@dataclass(frozen=True)
class ChannelDestroyed:
    channel: Channel
    cause: int
    cause_txt: str


@dataclass(frozen=True)
class ChannelDtmfReceived:
    """Sent when a key press ends (there is no start event)."""

    channel: Channel
    digit: str
    duration_ms: int


@dataclass(frozen=True)
class ApplicationReplaced:
    """Another websocket subscribed to our application: this one gets no more events."""


@dataclass(frozen=True)
class OtherEvent:
    """Any event the adapter does not act on (Dial, ChannelVarset, ChannelStateChange, ...)."""

    type: str


AriEvent = (
    StasisStart
    | StasisEnd
    | ChannelHangupRequest
    | ChannelDestroyed
    | ChannelDtmfReceived
    | ApplicationReplaced
    | OtherEvent
)


def _stasis_start(o: Mapping[str, Any]) -> AriEvent:
    args = o.get("args")
    if not isinstance(args, list):
        raise ParseError("StasisStart.args is not a list")
    return StasisStart(Channel.parse(o.get("channel")), tuple(str(a) for a in args))


def _destroyed(o: Mapping[str, Any]) -> AriEvent:
    return ChannelDestroyed(Channel.parse(o.get("channel")), int(o.get("cause", 0)), str(o.get("cause_txt", "")))


def _dtmf(o: Mapping[str, Any]) -> AriEvent:
    return ChannelDtmfReceived(Channel.parse(o.get("channel")), _str(o, "digit"), int(o.get("duration_ms", 0)))


_EVENTS: dict[str, Callable[[Mapping[str, Any]], AriEvent]] = {
    "StasisStart": _stasis_start,
    "StasisEnd": lambda o: StasisEnd(Channel.parse(o.get("channel"))),
    "ChannelHangupRequest": lambda o: ChannelHangupRequest(Channel.parse(o.get("channel"))),
    "ChannelDestroyed": _destroyed,
    "ChannelDtmfReceived": _dtmf,
    "ApplicationReplaced": lambda o: ApplicationReplaced(),
}


def parse_event_text(text: str | bytes) -> AriEvent:
    """One websocket TEXT message to a typed event.

    Raises:
        ParseError: not JSON (a number beyond int()'s 4300 digits, nesting beyond the recursion limit included),
            or not an event (parse_event).
    """
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ParseError(f"event is not JSON: {type(exc).__name__}") from None
    return parse_event(data)


def parse_event(data: Any) -> AriEvent:
    """One decoded websocket message to a typed event.

    Raises:
        ParseError: not an object with a string `type`, or a known event missing a required field.
    """
    obj = _mapping(data, "event")
    kind = _str(obj, "type")
    parse = _EVENTS.get(kind)
    if parse is None:
        return OtherEvent(kind)
    try:
        return parse(obj)
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: int() of a JSON 1e999 (infinity)
        raise ParseError(f"{kind}: {exc}") from None


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ParseError(f"{what} is not an object")
    return value


def _str(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise ParseError(f"required string field {key!r} missing")
    return value
