"""bridge.ops.logs: LOG_FORMAT defaults, call ids in JSON lines, redaction of our lines and third-party ones."""

from __future__ import annotations

import io
import json
import logging

from bridge.ops.logs import Redactor, log_format, setup_logging
from tests.conftest import make_settings


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_format_defaults_to_text_on_a_terminal_and_json_otherwise():
    assert log_format("", Tty()) == "text" and log_format("", io.StringIO()) == "json"
    assert log_format("json", Tty()) == "json" and log_format("text", io.StringIO()) == "text"


def test_json_lines_carry_the_call_id_and_never_a_secret():
    out = io.StringIO()
    settings = make_settings(openai_api_key="sk-live-DISTINCT-0001", ari_username="u", ari_password="pw-DISTINCT-2")
    setup_logging(settings, out)
    try:
        logging.LoggerAdapter(logging.getLogger("bridge.call"), {"call_id": "abc"}).info("x %s", "y",
                                                                                       extra={"call_id": "abc"})
        logging.getLogger("websockets.client").debug("> Authorization: Bearer sk-live-DISTINCT-0001")
        logging.getLogger("websockets.client").warning("> api-key: some-other-key-123")
        logging.getLogger("aiohttp").warning("GET ws://h/ari/events?api_key=u:pw-DISTINCT-2&app=x")
        logging.getLogger("x").warning("Basic dTpwdy1ESVNUSU5DVC0y")
    finally:
        logging.basicConfig(force=True)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0]["call_id"] == "abc" and lines[0]["msg"] == "x y"
    text = out.getvalue()
    for secret in ("sk-live-DISTINCT-0001", "pw-DISTINCT-2", "some-other-key-123", "dTpwdy1ESVNUSU5DVC0y"):
        assert secret not in text


def test_redactor_keeps_ordinary_text():
    r = Redactor(["abcd1234"])
    assert r("call from 'alice' via sip, token count 3") == "call from 'alice' via sip, token count 3"
    assert r("key abcd1234") == "key ***"
