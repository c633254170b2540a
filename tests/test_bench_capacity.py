"""The capacity bench itself, kept tiny: its per-call figures, and one short run through a real adapter process."""

from __future__ import annotations

import pytest

from bridge.bench import capacity


def test_call_figures_count_loss_and_interval_error():
    ms = 1_000_000
    arrivals = [(k * 20 * ms, k) for k in range(200) if k != 120]  # one packet lost
    arrivals[150] = (arrivals[150][0] + 3 * ms, arrivals[150][1])  # one packet 3 ms late
    errors, packets, lost = capacity.call_figures(arrivals)
    assert lost == 1 and packets == 199 - 50  # the first second is left out
    assert sorted(errors)[-2:] == pytest.approx([3.0, 3.0])  # late, then early again by as much
    assert sorted(errors)[-3] == pytest.approx(0.0)  # the gap of the lost packet is 40 ms over 2 steps: no error


def test_one_short_echo_run_through_a_real_adapter_process(tmp_path):
    port = capacity.free_port()
    run = capacity.measure("sip-to-ai", "echo", [capacity.sip_to_ai(port, (46000, 46099), {"AI_VENDOR": "echo"})],
                           port, 3, 2.0, tmp_path)
    assert run.result.answered == 3 and run.result.calls == 3
    assert run.result.received > 3 * 40  # 2 s of 20 ms frames, less the first second
    assert run.cpu > 0 and run.result.window >= 1.9
    assert "echo" in capacity.row(run)
