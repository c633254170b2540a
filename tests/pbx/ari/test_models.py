"""ARI event parsing (events.json models), on the shapes Asterisk 22 sent in the live checks (pbx.md §1.5)."""

from __future__ import annotations

import pytest

from bridge.errors import ParseError
from bridge.pbx.ari.models import (
    ApplicationReplaced,
    Bridge,
    Channel,
    ChannelDestroyed,
    ChannelDtmfReceived,
    OtherEvent,
    StasisEnd,
    StasisStart,
    parse_event,
)

# StasisStart as Asterisk sent it for an originated Local channel (asterisk-test-peer.md §4).
STASIS_START = {
    "type": "StasisStart", "timestamp": "2026-11-23T23:26:10.201+0000", "args": ["incoming"],
    "channel": {
        "id": "1795476370.0", "name": "Local/s@tone-00000000;1", "state": "Up", "protocol_id": "",
        "caller": {"name": "", "number": ""}, "connected": {"name": "", "number": ""}, "accountcode": "",
        "dialplan": {"context": "tone", "exten": "s", "priority": 1, "app_name": "Stasis",
                     "app_data": "ai-bridge,incoming"},
        "creationtime": "2026-11-23T23:26:10.199+0000", "language": "en",
    },
    "asterisk_id": "02:fc:00:00:00:01", "application": "ai-bridge",
}

# The ExternalMedia reply: channel variables are strings (pbx.md §1.4).
EXTERNAL_MEDIA = {
    "id": "1795476370.2", "name": "UnicastRTP/127.0.0.1:40000-0x7f0a500024c0", "state": "Down", "protocol_id": "",
    "caller": {"name": "", "number": ""}, "connected": {"name": "", "number": ""}, "accountcode": "",
    "dialplan": {"context": "default", "exten": "s", "priority": 1, "app_name": "AppDial2",
                 "app_data": "(Outgoing Line)"},
    "creationtime": "2026-11-23T23:26:10.203+0000", "language": "en",
    "channelvars": {"UNICASTRTP_LOCAL_PORT": "20734", "UNICASTRTP_LOCAL_ADDRESS": "127.0.0.1"},
}


class TestEvents:
    def test_stasis_start(self):
        event = parse_event(STASIS_START)
        assert isinstance(event, StasisStart)
        assert event.args == ("incoming",)
        assert event.channel.id == "1795476370.0" and event.channel.technology == "Local"
        assert (event.channel.app_name, event.channel.app_data) == ("Stasis", "ai-bridge,incoming")

    def test_stasis_end_and_destroyed(self):
        channel = STASIS_START["channel"]
        assert isinstance(parse_event({"type": "StasisEnd", "channel": channel}), StasisEnd)
        destroyed = parse_event({"type": "ChannelDestroyed", "channel": channel, "cause": 16,
                                 "cause_txt": "Normal Clearing"})
        assert destroyed == ChannelDestroyed(Channel.parse(channel), 16, "Normal Clearing")

    def test_dtmf(self):
        event = parse_event({"type": "ChannelDtmfReceived", "channel": STASIS_START["channel"], "digit": "#",
                             "duration_ms": 120})
        assert isinstance(event, ChannelDtmfReceived) and event.digit == "#" and event.duration_ms == 120

    def test_application_replaced_and_noise(self):
        assert parse_event({"type": "ApplicationReplaced", "application": "x"}) == ApplicationReplaced()
        assert parse_event({"type": "ChannelVarset", "variable": "A"}) == OtherEvent("ChannelVarset")

    @pytest.mark.parametrize("bad", [
        [], {"no": "type"}, {"type": 3},
        {"type": "StasisStart", "channel": STASIS_START["channel"]},  # args is required
        {"type": "StasisStart", "args": [], "channel": {"id": "1"}},  # channel without name/state
        {"type": "ChannelDtmfReceived", "channel": STASIS_START["channel"]},
        {"type": "ChannelDestroyed", "channel": STASIS_START["channel"], "cause": "x"},
    ])
    def test_malformed_raises_parse_error_only(self, bad):
        with pytest.raises(ParseError):
            parse_event(bad)


class TestObjects:
    def test_channel_variables_are_strings(self):
        channel = Channel.parse(EXTERNAL_MEDIA)
        assert channel.technology == "UnicastRTP"
        assert channel.channelvars["UNICASTRTP_LOCAL_PORT"] == "20734"

    def test_bridge(self):
        bridge = Bridge.parse({"id": "b1", "technology": "simple_bridge", "bridge_type": "mixing",
                               "channels": ["a", "b"]})
        assert bridge.channels == ("a", "b") and bridge.bridge_type == "mixing"
        with pytest.raises(ParseError):
            Bridge.parse({"id": "b1", "channels": "a"})
