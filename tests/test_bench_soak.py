"""The soak bench, short: calls arriving by SIP, ESL and ARI and ending on the echo and OpenAI paths for ~15 s of
wall time, the OpenAI fake barging in, calling the prompt file's tool and dropping its socket in its sessions (the
adapter counts all three), then every adapter's FDs, asyncio tasks and RTP ports back at their baseline (the full
hour: README)."""

from __future__ import annotations

import re

from bridge.bench import soak


def test_a_short_soak_leaves_nothing_behind(capsys):
    ok = soak.run(minutes=3, speed=12, vendors=["echo", "openai"], every=2.0, flat_mb=20.0)
    out = capsys.readouterr().out
    print(out)
    assert "[echo] calls placed" in out and "[openai] calls placed" in out
    assert " answered 0 " not in out and " 0 SIP" not in out and " 0 ESL" not in out and " 0 ARI" not in out
    assert "barge-ins" in out and "(the mix did not happen)" not in out
    (answered, late, counted), = re.findall(
        r"the fake made \d+ and got (\d+) answers \((\d+) as its call ended\); the adapter counted (\d+) "
        r"\(unavailable \d+\)\n", out)
    assert 0 < int(answered) - int(late) <= int(counted) <= int(answered)
    assert ok
