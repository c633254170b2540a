"""bridge.ops.recording: two channels on the sender's timeline, placed by sequence number, in bounded memory."""

from __future__ import annotations

from bridge.ops.recording import CHUNK, SLACK, TwoChannels

SIL = 0xFF


def frames(n: int, start: int = 1) -> list[bytes]:
    return [bytes([(start + i) % 250]) * 160 for i in range(n)]


def test_caller_packets_land_where_their_sequence_says_even_out_of_order_or_late():
    out: list[tuple[bytes, bytes]] = []
    ch = TwoChannels(SIL, lambda left, right: out.append((left, right)))
    sent = frames(10)
    ch.heard(b"\x00" * 160)  # one tick before the first caller packet
    ch.caller(sent[0], 100)
    for i in (2, 1, 3, 5, 4):  # jitter reorders; 6..9 lost until 9
        ch.caller(sent[i], 100 + i)
    ch.caller(sent[9], 109)
    for _ in range(12):
        ch.heard(b"\x01" * 160)
    ch.close()
    left = b"".join(left for left, _ in out)
    right = b"".join(right for _, right in out)
    assert len(left) == len(right) == 13 * 160
    assert left[160:160 * 7] == b"".join(sent[:6])
    assert left[160 * 7:160 * 10] == bytes([SIL]) * 480  # the lost packets are silence
    assert left[160 * 10:160 * 11] == sent[9]


def test_memory_stays_bounded_over_a_long_call_and_chunks_are_aligned():
    chunks: list[tuple[bytes, bytes]] = []
    ch = TwoChannels(SIL, lambda left, right: chunks.append((left, right)))
    for seq in range(30_000):  # 10 minutes
        ch.caller(bytes([seq % 200]) * 160, seq & 0xFFFF)
        ch.heard(bytes([seq % 200]) * 160)
        assert len(ch.left) <= CHUNK + SLACK + 160 and len(ch.right) <= CHUNK + SLACK
    ch.close()
    assert all(len(left) == len(right) for left, right in chunks)
    assert b"".join(left for left, _ in chunks) == b"".join(right for _, right in chunks)


def test_a_sequence_jump_reanchors_at_the_current_position():
    out: list[tuple[bytes, bytes]] = []
    ch = TwoChannels(SIL, lambda left, right: out.append((left, right)))
    ch.caller(b"\x10" * 160, 5)
    ch.heard(b"\x00" * 160)
    ch.caller(b"\x20" * 160, 40000)  # a new SSRC/sequence after a re-INVITE: not 400 s into the future
    ch.heard(b"\x00" * 160)
    ch.close()
    left = b"".join(left for left, _ in out)
    assert left == b"\x10" * 160 + b"\x20" * 160


def test_payloads_of_varying_length_in_order_stay_contiguous():
    out: list[tuple[bytes, bytes]] = []
    ch = TwoChannels(SIL, lambda left, right: out.append((left, right)))
    chunks = [b"\x01" * 100, b"\x02" * 220, b"\x03" * 160, b"\x04" * 40]  # a stream ingress's reads
    for seq, chunk in enumerate(chunks, 1):
        ch.caller(chunk, seq)
    ch.heard(b"\x00" * 160 * 4)
    ch.close()
    assert b"".join(left for left, _ in out)[:520] == b"".join(chunks)
