"""Smoke test of the vendor latency bench: it runs and prints the command and one row per vendor."""

from __future__ import annotations

import pytest

from bridge.bench import vendors


def test_prints_a_row_per_vendor(capsys):
    vendors.run(scale=0.05)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("command: python -m bridge.bench vendors")
    rows = {line.split()[0]: line for line in out[2:]}
    assert set(rows) == set(vendors.BENCHES)
    assert "not available" not in rows["openai"]


@pytest.mark.parametrize("bench", [vendors.bench_openai, vendors.bench_grok])
async def test_realtime_figures_are_measured(bench):
    figures = await bench(scale=0.1)
    assert len(figures.uplink) == 25 and len(figures.downlink) == 6 and len(figures.flush) == 2
    assert all(v >= 0 for v in figures.uplink + figures.downlink + figures.flush)


def test_tags_round_trip():
    assert all(vendors.untag(vendors.tag(n)) == n for n in range(0, 40000, 7))
    assert 0xFF not in vendors.tag(39999)
