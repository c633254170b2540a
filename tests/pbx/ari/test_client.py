"""The ARI client: URL handling, the reconnect policy, and REST error mapping against the fake Asterisk."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import pytest

from bridge.pbx.ari.client import BACKOFF_MAX, AriClient, AriError, backoff, base_url, events_url


class TestUrls:
    @pytest.mark.parametrize("given", ["http://pbx:8088", "http://pbx:8088/", "http://pbx:8088/ari", "http://pbx:8088/ari/"])
    def test_base_url_ends_in_ari(self, given):
        assert base_url(given) == "http://pbx:8088/ari"

    def test_events_url_follows_the_scheme(self):
        assert events_url("http://pbx:8088/ari") == "ws://pbx:8088/ari/events"
        assert events_url("https://pbx:8089/ari") == "wss://pbx:8089/ari/events"


class TestBackoff:
    def test_jittered_start_then_growth_to_a_ceiling(self):
        delays = list(itertools.islice(backoff(initial=0.5, factor=2, maximum=4), 7))
        assert 0 <= delays[0] <= 0.5
        assert delays[1:] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]

    def test_default_never_exceeds_the_maximum(self):
        assert max(itertools.islice(backoff(), 50)) == BACKOFF_MAX


class TestRest:
    async def test_wrong_password_is_401(self, fake):
        async with AriClient(fake.url, "adapter", "wrong", "sip-to-ai") as ari:
            with pytest.raises(AriError) as err:
                await ari.list_channels()
        assert err.value.status == 401

    async def test_missing_channel_is_none_and_missing_variable_is_none(self, fake):
        fake.registered.add("sip-to-ai")
        caller = fake.call_in(variables={"A": "1"})
        async with AriClient(fake.url, "adapter", "secret", "sip-to-ai") as ari:
            assert await ari.get_channel("nope") is None
            assert await ari.get_variable(caller, "A") == "1"
            assert await ari.get_variable(caller, "B") is None
            with pytest.raises(AriError) as err:
                await ari.answer("nope")
            assert err.value.status == 404

    async def test_unreachable_has_no_status(self):
        async with AriClient("http://127.0.0.1:9", "a", "b", "app") as ari:
            with pytest.raises(AriError) as err:
                await ari.list_bridges()
        assert err.value.status is None


class TestListen:
    async def test_rejected_credentials_are_logged_and_retried(self, fake, caplog):
        async with AriClient(fake.url, "adapter", "wrong", "sip-to-ai") as ari:

            async def on_connect(reconnected: bool) -> None:
                raise AssertionError("must not connect with a wrong password")

            task = asyncio.create_task(ari.listen(lambda e: None, on_connect))
            for _ in range(300):
                if any("HTTP 401" in r.getMessage() for r in caplog.records):
                    break
                await asyncio.sleep(0.01)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert any(r.levelname == "ERROR" and "HTTP 401" in r.getMessage() for r in caplog.records)
        assert "wrong" not in caplog.text  # the password is never logged

    async def test_a_reply_that_does_not_fit_its_model_is_an_ari_error(self, fake, monkeypatch):
        monkeypatch.setitem(fake.handlers, "list", lambda op, path, q: [{"id": "x"}])
        monkeypatch.setattr(fake.swagger, "check_model", lambda *a: None)  # let the fake misbehave
        async with AriClient(fake.url, "adapter", "secret", "sip-to-ai") as ari:
            with pytest.raises(AriError, match="malformed Channel"):
                await ari.list_channels()
