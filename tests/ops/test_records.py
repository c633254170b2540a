"""bridge.ops.records: safe names, the summary and the stereo WAV on a writer thread, failures cost the record only."""

from __future__ import annotations

import json
import os
import wave

import numpy as np
import pytest

from bridge.codec import g711
from bridge.media import Codec
from bridge.ops.events import CallStarted
from bridge.ops.records import RecordsWriter, record_name

HOSTILE = ["../../x", "a/b\\c", "nul\x00byte", "x" * 500, "..", ".", "", "ü@host;tag=1 ", "/etc/passwd"]


@pytest.mark.parametrize("call_id", HOSTILE, ids=repr)
def test_names_are_plain_file_names(call_id, tmp_path):
    name = record_name(call_id, 0.0)
    assert os.path.basename(name) == name and (tmp_path / f"{name}.wav").resolve().parent == tmp_path.resolve()
    assert len(name) < 100 and name.isascii() and name.isprintable() and "\\" not in name


def test_distinct_call_ids_get_distinct_names():
    assert len({record_name(c, 0.0) for c in HOSTILE}) == len(HOSTILE)


def started(call_id: str) -> CallStarted:
    return CallStarted(call_id, "sip", "echo", "", "alice", "bob", {}, "PCMU", 1_700_000_000.0)


async def test_summary_and_stereo_wav_are_written_inside_the_directory(tmp_path):
    writer = RecordsWriter(tmp_path / "rec")
    (tmp_path / "rec").mkdir()
    writer(started("../../x"))
    tap = writer.tap("../../x", Codec.PCMU)
    assert tap is not None
    tone = g711.encode(Codec.PCMU, (3000 * np.sin(np.arange(8000 * 5) / 5)).astype(np.int16))
    for i in range(250):  # 5 s
        tap.caller(tone[i * 160:(i + 1) * 160], i)
        tap.heard(b"\xff" * 160)
    tap.close()
    writer.write_summary({"call_id": "../../x", "transcript": []})
    await writer.aclose()
    files = sorted(p.name for p in (tmp_path / "rec").iterdir())
    assert [os.path.splitext(f)[1] for f in files] == [".json", ".wav"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec"]  # nothing outside
    with wave.open(str(tmp_path / "rec" / files[1])) as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth(), w.getnframes()) == (2, 8000, 2, 40000)
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
    assert np.array_equal(pcm[:, 0], g711.decode(Codec.PCMU, tone)) and not pcm[:, 1].any()
    assert json.loads((tmp_path / "rec" / files[0]).read_text())["call_id"] == "../../x"
    assert writer.counts == {("audio", "written"): 1, ("summary", "written"): 1}


async def test_an_unwritable_directory_costs_the_records_only_logged_once(tmp_path, caplog):
    writer = RecordsWriter(tmp_path / "missing" / "dir")
    for n in range(3):
        writer(started(f"c{n}"))
        tap = writer.tap(f"c{n}", Codec.PCMA)
        for i in range(200):
            tap.caller(b"\x55" * 160, i)
            tap.heard(b"\x55" * 160)
        tap.close()
        writer.write_summary({"call_id": f"c{n}"})
    await writer.aclose()
    assert writer.counts == {("audio", "failed"): 3, ("summary", "failed"): 3}
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2 and "No such file or directory" in warnings[0].getMessage()
    assert not (tmp_path / "missing").exists()


async def test_a_stalled_disk_cuts_the_recording_short_with_memory_bounded(tmp_path):
    writer = RecordsWriter(tmp_path)
    import threading

    gate = threading.Event()
    writer.submit(gate.wait, None)  # the writer thread is stuck behind this job
    writer(started("long"))
    tap = writer.tap("long", Codec.PCMU)
    for i in range(50 * 60):  # a minute of audio while the disk is stuck
        tap.caller(b"\x11" * 160, i & 0xFFFF)
        tap.heard(b"\x22" * 160)
    assert tap.cut and tap.submitted <= 8
    tap.close()
    gate.set()
    await writer.aclose()
    assert writer.counts["audio", "cut short"] == 1
