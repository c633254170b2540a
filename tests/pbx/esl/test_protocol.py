"""ESL framing (pbx.md §2.3): header blocks, Content-Length bodies, nested events, URL-decoding, limits, commands."""

import ast
import random
from pathlib import Path

import pytest

from bridge.errors import ParseError
from bridge.pbx.esl import protocol as esl
from bridge.pbx.esl.protocol import EslParser, EslProtocolError
from tests.fakes.esl import event_plain, fs_url_encode, serialize_event

# The connect reply as mod_event_socket writes it: one serialised CHANNEL_DATA block, values URL-encoded,
# an empty value as _undef_, no Content-Length (hand-written from pbx.md §2.3/§2.4, not from any encoder).
CONNECT_REPLY = (
    b"Event-Name: CHANNEL_DATA\n"
    b"Core-UUID: 6f2c1a9e-0000-4000-8000-00000000c0de\n"
    b"Event-Date-Local: 2026-11-24%2013%3A20%3A32\n"
    b"Unique-ID: 0d5cbb42-6a5b-4b49-9d07-4c9ad0e7a2f1\n"
    b"Caller-Caller-ID-Name: Alice%20%26%20Bob\n"
    b"Caller-Caller-ID-Number: %2B4930123456\n"
    b"Caller-Destination-Number: 7000\n"
    b"Channel-Name: sofia/internal/1001%4010.0.0.1\n"
    b"Answer-State: ringing\n"
    b"variable_sip_h_X-Account: a%20b%26c%3Dd\n"
    b"variable_sip_h_X-Empty: _undef_\n"
    b"Content-Type: command/reply\n"
    b"Reply-Text: %2BOK%0A\n"
    b"Socket-Mode: async\n"
    b"Control: full\n"
    b"\n"
)
EVENTS_ENABLED = b"Content-Type: command/reply\nReply-Text: +OK Events Enabled\n\n"
JOB_BODY = b"+OK 0d5cbb42 transferred\n"
_JOB_EVENT = (b"Event-Name: BACKGROUND_JOB\nJob-UUID: 7f4d\nJob-Command: uuid_transfer\n"
              b"Content-Length: %d\n\n" % len(JOB_BODY)) + JOB_BODY
BACKGROUND_JOB = b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(_JOB_EVENT) + _JOB_EVENT
_DTMF = b"Event-Name: DTMF\nUnique-ID: 0d5cbb42-6a5b-4b49-9d07-4c9ad0e7a2f1\nDTMF-Digit: %23\nDTMF-Duration: 2000\n\n"
DTMF_EVENT = b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(_DTMF) + _DTMF
API_ERR = b"Content-Type: api/response\nContent-Length: 22\n\n-ERR No such channel!\n"
DISCONNECT = (b"Content-Type: text/disconnect-notice\nControlled-Session-UUID: 0d5cbb42\n"
              b"Content-Disposition: linger\nChannel-Name: sofia/internal/1001%4010.0.0.1\nLinger-Time: -1\n"
              b"Content-Length: 0\n\n")
STREAM = CONNECT_REPLY + EVENTS_ENABLED + BACKGROUND_JOB + DTMF_EVENT + API_ERR + DISCONNECT


def summary(messages):
    out = []
    for m in messages:
        ev = m.event()
        out.append((dict(m.headers), m.body, None if ev is None else (dict(ev.headers), ev.body)))
    return out


class TestFraming:
    """§2.3 Framing and Content-Types."""

    def test_connect_reply_is_one_block_with_decoded_values(self):
        [msg] = EslParser().feed(CONNECT_REPLY)
        assert msg.content_type == "command/reply" and msg.ok and msg.reply_text == "+OK"
        assert msg.headers["Reply-Text"] == "+OK\n"
        assert msg.headers["Caller-Caller-ID-Number"] == "+4930123456"
        assert msg.headers["Caller-Caller-ID-Name"] == "Alice & Bob"
        assert msg.headers["Channel-Name"] == "sofia/internal/1001@10.0.0.1"
        assert msg.headers["variable_sip_h_X-Account"] == "a b&c=d"
        assert msg.headers["variable_sip_h_X-Empty"] == ""
        assert msg.headers["socket-mode"] == "async"  # names are looked up without case
        assert msg.body == b""

    def test_event_with_nested_body(self):
        [msg] = EslParser().feed(BACKGROUND_JOB)
        ev = msg.event()
        assert ev.name == "BACKGROUND_JOB" and ev.headers["Job-UUID"] == "7f4d" and ev.body == JOB_BODY

    def test_event_without_body_and_api_error(self):
        dtmf, api = EslParser().feed(DTMF_EVENT + API_ERR)
        assert dtmf.event().headers["DTMF-Digit"] == "#" and dtmf.event().body == b""
        assert api.content_type == "api/response" and not api.ok
        assert api.reply_text == "-ERR No such channel!"

    def test_disconnect_notice(self):
        [msg] = EslParser().feed(DISCONNECT)
        assert msg.content_type == "text/disconnect-notice" and msg.event() is None
        assert msg.headers["Linger-Time"] == "-1" and msg.headers["Content-Disposition"] == "linger"

    def test_crlf_blocks(self):
        data = b"Content-Type: command/reply\r\nReply-Text: +OK will linger\r\n\r\n"
        [msg] = EslParser().feed(data + EVENTS_ENABLED)[:1]
        assert msg.reply_text == "+OK will linger"

    def test_split_at_every_position(self):
        whole = summary(EslParser().feed(STREAM))
        assert len(whole) == 6
        for cut in range(1, len(STREAM)):
            parser = EslParser()
            assert summary(parser.feed(STREAM[:cut]) + parser.feed(STREAM[cut:])) == whole, cut

    def test_byte_at_a_time(self):
        parser = EslParser()
        got = [m for i in range(len(STREAM)) for m in parser.feed(STREAM[i : i + 1])]
        assert summary(got) == summary(EslParser().feed(STREAM))


class TestUrlEncoding:
    """§2.3: values URL-encoded by switch_url_encode, names not; `_undef_` for empty."""

    @pytest.mark.parametrize("raw,decoded", [
        ("%2BOK%0A", "+OK\n"), ("%2b", "+"), ("_undef_", ""), ("100%25", "100%"), ("plain/text", "plain/text"),
        ("%E2%82%AC", "\u20ac"), ("%ZZ", "%ZZ"),
    ])
    def test_decode(self, raw, decoded):
        assert esl.decode_value(raw) == decoded

    @pytest.mark.parametrize("value", ["Alice & Bob", "sip:1001@10.0.0.1;transport=tcp", "a%b", "\u20ac 5", "x" * 300])
    def test_round_trip_through_the_fake_freeswitch_encoder(self, value):
        [msg] = EslParser().feed(event_plain([("Event-Name", "CUSTOM"), ("variable_x", value)]))
        assert msg.event().headers["variable_x"] == value

    def test_fake_encoder_matches_the_documented_examples(self):
        assert fs_url_encode("+OK\n") == "%2BOK%0A"
        assert fs_url_encode("sofia/internal/1001@h") == "sofia/internal/1001%40h"
        assert fs_url_encode("%2B") == "%2B" and fs_url_encode("%2b") == "%252b"
        assert serialize_event([("A", "")]) == b"A: _undef_\n\n"


class TestGarbage:
    """A malformed or oversized message raises EslProtocolError (a ParseError); the parser stays broken."""

    @pytest.mark.parametrize("data", [
        b"no colon here\n\n",
        b": empty name\n\n",
        b"Content-Length: -5\n\n",
        b"Content-Length: 12abc\n\n",
        b"Content-Type: text/event-plain\nContent-Length: 5\n\nhello",  # nested event without its blank line
        b"Content-Type: text/event-plain\nContent-Length: 30\n\nA: b\nContent-Length: 99\n\nshort body\n\n\n\n",
    ])
    def test_malformed(self, data):
        parser = EslParser()
        with pytest.raises(EslProtocolError) as info:
            for msg in parser.feed(data):
                msg.event()
        assert isinstance(info.value, ParseError)

    def test_oversized_header_block_without_end(self):
        parser = EslParser()
        with pytest.raises(EslProtocolError) as info:
            for _ in range(esl.MAX_HEADER_BYTES // 4096 + 2):
                parser.feed(b"X-Filler: " + b"a" * 4086 + b"\n")
        assert info.value.status_hint == 413
        with pytest.raises(EslProtocolError):  # broken for good
            parser.feed(EVENTS_ENABLED)

    def test_oversized_content_length(self):
        with pytest.raises(EslProtocolError):
            EslParser().feed(b"Content-Type: api/response\nContent-Length: %d\n\n" % (esl.MAX_BODY_BYTES + 1))

    def test_random_garbage_parses_or_raises_eslprotocolerror_only(self):
        rng = random.Random(6)
        alphabet = b"ab:\n\r %0-9Content-Length: 1\n\n"
        for _ in range(3000):
            data = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 80)))
            if rng.random() < 0.3:
                data = STREAM[: rng.randint(0, len(STREAM))] + data
            parser = EslParser()
            try:
                for msg in parser.feed(data):
                    msg.event()
            except EslProtocolError:
                pass


class TestCommands:
    """Commands use the same framing; a line break in an argument would start a new command."""

    def test_exact_bytes(self):
        assert esl.connect() == b"connect\n\n"
        assert esl.myevents() == b"myevents plain\n\n"
        assert esl.linger() == b"linger\n\n" and esl.linger(5) == b"linger 5\n\n"
        assert esl.auth("ClueCon") == b"auth ClueCon\n\n"
        assert esl.api("uuid_transfer u 2000 XML default") == b"api uuid_transfer u 2000 XML default\n\n"
        assert esl.bgapi("status", "j1") == b"bgapi status\nJob-UUID: j1\n\n"
        assert esl.event("plain", "CHANNEL_HANGUP", "DTMF") == b"event plain CHANNEL_HANGUP DTMF\n\n"
        assert esl.filter_("Unique-ID", "u") == b"filter Unique-ID u\n\n"
        assert esl.hangup() == b"sendmsg\ncall-command: hangup\nhangup-cause: NORMAL_CLEARING\n\n"
        assert esl.execute("answer", event_uuid="e1") == (
            b"sendmsg\ncall-command: execute\nexecute-app-name: answer\nevent-uuid: e1\n\n")
        assert esl.unicast(("10.0.0.1", 40001), ("10.0.0.5", 40000), uuid="u") == (
            b"sendmsg u\ncall-command: unicast\nlocal-ip: 10.0.0.1\nlocal-port: 40001\nremote-ip: 10.0.0.5\n"
            b"remote-port: 40000\ntransport: udp\n\n")
        assert esl.unicast(("10.0.0.1", 40001), ("10.0.0.5", 40000), flags="native").endswith(
            b"transport: udp\nflags: native\n\n")

    def test_multiline_argument_travels_as_body(self):
        data = esl.execute("playback", "a\nb")
        assert data.endswith(b"content-type: text/plain\ncontent-length: 3\n\na\nb")

    @pytest.mark.parametrize("build", [
        lambda: esl.api("status\n\napi uuid_kill x"), lambda: esl.auth("x\nevent plain ALL"),
        lambda: esl.sendmsg("hangup", {"hangup-cause": "X\n\nexit"}),
    ])
    def test_line_breaks_refused(self, build):
        with pytest.raises(ValueError):
            build()

    def test_transfer_target(self):
        assert esl.transfer_target("", "2000", "default") == ("2000", "default")
        assert esl.transfer_target(" 3001 ", "2000", "sales") == ("3001", "sales")
        for bad in ("2000 XML evil", "1;uuid_kill", "x\ny", "a" * 65):
            with pytest.raises(ValueError):
                esl.transfer_target(bad, "2000", "default")
        with pytest.raises(ValueError):
            esl.transfer_target("", "", "default")


def test_protocol_module_is_sans_io():
    tree = ast.parse(Path(esl.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"asyncio", "socket", "time", "selectors"}
