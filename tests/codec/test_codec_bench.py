"""The codec benchmark runs and prints every figure (the figures themselves are never asserted)."""

from __future__ import annotations

import pytest

from bridge.bench import codec as bench


def test_prints_command_and_every_row(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(bench, "SECONDS", 0.005)
    bench.run()
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "$ python -m bridge.bench codec"
    for row in ("ulaw encode", "ulaw decode", "alaw encode", "alaw decode", "8000->16000", "24000->8000"):
        assert row in out
