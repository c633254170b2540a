"""The downlink buffer: exact 20 ms frames from any chunk size, clear() for barge-in, cap, played_ms."""

from bridge.rtp.playout import Playout


def test_any_chunk_sizes_give_exact_frames_in_order():
    p = Playout(0xFF)
    data = bytes(range(256)) * 10  # 2560 bytes = 16 frames
    pos = 0
    for size in (1, 7, 159, 160, 161, 333, 1000, 739):
        p.push(data[pos : pos + size])
        pos += size
    assert pos == len(data)
    frames = []
    while (f := p.pop_frame()) is not None:
        frames.append(f)
    assert b"".join(frames) == data and all(len(f) == 160 for f in frames)


def test_partial_frame_waits_until_turn_end_then_pads_with_silence():
    p = Playout(0xD5)
    p.push(b"\x01" * 200)
    assert p.pop_frame() == b"\x01" * 160
    assert p.pop_frame() is None  # 40 bytes wait for more audio
    p.push(b"\x02" * 10)
    assert p.pop_frame() is None
    p.end_turn()
    assert p.pop_frame() == b"\x01" * 40 + b"\x02" * 10 + b"\xd5" * 110
    assert p.pop_frame() is None and len(p) == 0


def test_clear_drops_everything_at_once():
    p = Playout(0xFF)
    p.push(b"\x01" * 8000, "item1")
    assert p.clear() == 8000
    assert p.pop_frame() is None and len(p) == 0


def test_cap_bounds_memory_and_counts_dropped():
    p = Playout(0xFF, max_seconds=1.0)
    for _ in range(30):
        p.push(b"\x01" * 800)
    assert len(p) == 8000 and p.dropped_bytes == 30 * 800 - 8000


def test_played_ms_counts_only_frames_that_left():
    p = Playout(0xFF)
    p.push(b"\x01" * 1600, "a")  # 200 ms
    p.push(b"\x02" * 800, "b")  # 100 ms
    for _ in range(3):
        p.pop_frame()
    assert p.played_ms("a") == 60 and p.played_ms("b") == 0
    for _ in range(10):
        p.pop_frame()
    assert p.played_ms("a") == 200 and p.played_ms("b") == 60
    p.clear()
    assert p.played_ms("b") == 60  # what was heard stays heard
