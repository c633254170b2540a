"""chan_websocket control messages as channels/chan_websocket.c (22.10.1) writes them (_create_event_*)."""

from __future__ import annotations

import pytest

from bridge.pbx.websocket import protocol as ws
from bridge.pbx.websocket.protocol import DtmfEnd, FlowControl, MediaStart, Other, WebSocketProtocolError

# ast_asprintf(&payload, "%s %s:%s %s:%s %s:%s %s:%s %s:%d %s:%d", "MEDIA_START", "connection_id", ...)
PLAIN_START = ("MEDIA_START connection_id:2b1c3d4e-0000-4000-8000-000000000001 channel:WebSocket/sip-to-ai/0x7f3c"
               " channel_id:1733300000.7 format:ulaw optimal_frame_size:160 ptime:20")
# ast_json_pack("{s:s, s:s, s:s, s:s, s:s, s:i, s:i, s:o }", "event", "MEDIA_START", ...) dumped compact
JSON_START = ('{"event":"MEDIA_START","connection_id":"sip-to-ai","channel":"WebSocket/sip-to-ai/0x7f3c",'
              '"channel_id":"em-1","format":"alaw","optimal_frame_size":160,"ptime":20,'
              '"channel_variables":{"MEDIA_WEBSOCKET_CONNECTION_ID":"sip-to-ai","CALLER":"1001"}}')


def test_plain_media_start():
    assert ws.parse_event(PLAIN_START) == MediaStart("2b1c3d4e-0000-4000-8000-000000000001",
                                                     "WebSocket/sip-to-ai/0x7f3c", "1733300000.7", "ulaw", 160, 20)


def test_json_media_start_carries_the_channel_variables_and_asks_for_json_commands():
    start = ws.parse_event(JSON_START)
    assert isinstance(start, MediaStart) and start.json and start.format == "alaw"
    assert start.variables == {"MEDIA_WEBSOCKET_CONNECTION_ID": "sip-to-ai", "CALLER": "1001"}


@pytest.mark.parametrize(("text", "event"), [
    ("DTMF_END digit:5 channel_id:1733300000.7", DtmfEnd("5")),  # "%s digit:%c channel_id:%s"
    ('{"event":"DTMF_END","channel_id":"em-1","digit":"#"}', DtmfEnd("#")),
    ("MEDIA_XOFF", FlowControl(paused=True)),
    ("MEDIA_XON", FlowControl(paused=False)),
    ('{"event":"MEDIA_XOFF","channel_id":"em-1"}', FlowControl(paused=True)),
    ("QUEUE_DRAINED", Other("QUEUE_DRAINED", {})),
    ("MEDIA_MARK_PROCESSED reply-7", Other("MEDIA_MARK_PROCESSED", {"correlation_id": "reply-7"})),
    ("ERROR channel_id:em-1 error_text:FLUSH_MEDIA not supported in passthrough mode",
     Other("ERROR", {"channel_id": "em-1", "error_text": "FLUSH_MEDIA not supported in passthrough mode"})),
])
def test_events(text, event):
    assert ws.parse_event(text) == event


@pytest.mark.parametrize("text", ["", "{not json", "[1,2]", '{"channel_id":"x"}', "MEDIA_START format:ulaw",
                                  "MEDIA_START connection_id:a channel:b channel_id:c format:ulaw "
                                  "optimal_frame_size:x ptime:20"])
def test_what_is_not_an_event_is_a_protocol_error(text):
    with pytest.raises(WebSocketProtocolError):
        ws.parse_event(text)


def test_commands_in_either_control_format_within_the_128_byte_limit():
    assert ws.command("HANGUP") == "HANGUP"
    assert ws.command("MARK_MEDIA", correlation_id="r1") == "MARK_MEDIA r1"
    assert ws.command("HANGUP", as_json=True) == '{"command":"HANGUP"}'
    with pytest.raises(ValueError):
        ws.command("MARK_MEDIA", correlation_id="x" * 130)
