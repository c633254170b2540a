"""Per-call records in CALL_RECORDS_DIR: `<name>.json` (the summary) and `<name>.wav` (stereo, 8 kHz, 16-bit:
left what the caller sent, right what the caller heard).

All file work happens on one writer thread; the event loop only appends bytes to the call's two channels and
queues jobs. Memory per call is bounded (two chunks of buffer plus MAX_PENDING chunks queued; beyond that the
recording is cut short, counted and logged, never the call). A failing directory or a full disk costs the
recording only: logged once per kind of failure, counted in `counts`.

`<name>` is `<UTC start>_<call id with anything but [A-Za-z0-9._-] replaced, at most 64 characters>_<8 hex of
its SHA-256>`: never a path separator, never `..`, never longer than ~100 characters, distinct per call id.
Files are created with O_EXCL|O_NOFOLLOW inside the directory, so nothing is written outside it or through a link.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import os
import queue
import re
import threading
import time
import wave
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bridge.codec import g711
from bridge.media import SAMPLE_RATE, Codec
from bridge.ops.events import CallEvent, CallStarted
from bridge.ops.recording import TwoChannels

log = logging.getLogger(__name__)

MAX_PENDING = 8  # chunks (16 s of audio) a call may have waiting for the writer thread
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def record_name(call_id: str, started: float) -> str:
    """A file name stem for `call_id` that is safe in any directory (see the module docstring)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    digest = hashlib.sha256(call_id.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{stamp}_{_UNSAFE.sub('_', call_id)[:64]}_{digest}"


def _create(path: Path) -> Any:
    return os.fdopen(os.open(path, _FLAGS, 0o644), "wb")


class Recording:
    """One call's audio tap: the core calls `caller()` per caller packet and `heard()` per frame sent."""

    def __init__(self, writer: RecordsWriter, name: str, codec: Codec) -> None:
        self.writer = writer
        self.codec = codec
        self.path = writer.directory / f"{name}.wav"
        self.channels = TwoChannels(codec.silence, self._chunk)
        self.heard = self.channels.heard
        self.caller = self.channels.caller
        self.failed = False  # set by the writer thread
        self.submitted = 0  # chunks queued (event loop only)
        self.written = 0  # chunks written (writer thread only)
        self.cut = False
        self._wav: wave.Wave_write | None = None
        self._file: Any = None
        writer.submit(self._open, self)

    def close(self) -> None:
        """The call is over: write out what is buffered and finish the file (on the writer thread)."""
        self.heard = self.caller = _ignore  # type: ignore[assignment]
        if not self.cut:
            self.channels.close()
        self.writer.submit(self._finish, self)

    # -- event loop side --------------------------------------------------------------------------------------

    def _chunk(self, left: bytes, right: bytes) -> None:
        if self.failed or self.cut:
            return
        if self.submitted - self.written >= MAX_PENDING:  # the disk cannot keep up: stop, keep memory bounded
            self.cut = True
            self.heard = self.caller = _ignore  # type: ignore[assignment]
            self.writer.failed("audio", "cut short", self.path, "the writer thread fell behind")
            return
        self.submitted += 1
        self.writer.submit(lambda: self._write(left, right), self)

    # -- writer thread side -----------------------------------------------------------------------------------

    def _open(self) -> None:
        self._file = _create(self.path)
        self._wav = wave.open(self._file, "wb")  # noqa: SIM115 - kept open for the whole call
        self._wav.setnchannels(2)
        self._wav.setsampwidth(2)
        self._wav.setframerate(SAMPLE_RATE)

    def _write(self, left: bytes, right: bytes) -> None:
        try:
            if self._wav is None:
                return
            stereo = np.empty(len(left) * 2, dtype="<i2")
            stereo[0::2] = g711.decode(self.codec, left)
            stereo[1::2] = g711.decode(self.codec, right)
            self._wav.writeframesraw(stereo.tobytes())
        finally:
            self.written += 1

    def _finish(self) -> None:
        if self._wav is None:
            return
        wav, self._wav = self._wav, None
        try:
            wav.close()  # patches the RIFF and data sizes
        finally:
            self._file.close()
        if not self.cut:
            self.writer.counts["audio", "written"] += 1

    def abandon(self) -> None:
        """After a failure on the writer thread: close quietly, write nothing more."""
        self.failed = True
        wav, self._wav = self._wav, None
        for closer in (getattr(wav, "close", None), getattr(self._file, "close", None)):
            if closer is not None:
                try:
                    closer()
                except Exception:  # the failure was already counted and logged
                    pass


def _ignore(*args: object) -> None:
    return None


class RecordsWriter:
    """Subscribes to the call events for names; writes summaries and recordings on its own thread."""

    def __init__(self, directory: str | Path, mode: str = "all", redact: Callable[[str], str] = str) -> None:
        self.directory = Path(directory)
        self.summaries = mode in ("summary", "all")
        self.audio = mode in ("audio", "all")
        self.redact = redact
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._names: dict[str, str] = {}
        self._jobs: queue.SimpleQueue[tuple[Callable[[], None], Recording | None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._logged: set[tuple[str, str]] = set()

    # -- event loop side --------------------------------------------------------------------------------------

    def __call__(self, event: CallEvent) -> None:
        if isinstance(event, CallStarted):
            self._names[event.call_id] = record_name(event.call_id, event.at)

    def tap(self, call_id: str, codec: Codec) -> Recording | None:
        """A recording for a started call (None when audio is not recorded)."""
        name = self._names.get(call_id)
        if not self.audio or name is None:
            return None
        return Recording(self, name, codec)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """Queue `<name>.json` for the call the summary describes; forget its name."""
        name = self._names.pop(str(summary["call_id"]), None)
        if not self.summaries or name is None:
            return
        body = self.redact(json.dumps(summary, ensure_ascii=False, indent=1)).encode()
        self.submit(lambda: self._write_json(self.directory / f"{name}.json", body), None)

    def name(self, call_id: str) -> str | None:
        return self._names.get(call_id)

    def submit(self, job: Callable[[], None], owner: Recording | None) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="call-records", daemon=True)
            self._thread.start()
        self._jobs.put((job, owner))

    async def aclose(self, timeout: float = 5.0) -> None:
        """Finish the queued work (bounded), then stop the thread."""
        if self._thread is not None:
            self._jobs.put(None)
            await asyncio.to_thread(self._thread.join, timeout)

    def failed(self, kind: str, result: str, path: Path, why: str) -> None:
        """Count a failure; log the first of each kind and result at WARNING, the rest at DEBUG."""
        self.counts[kind, result] += 1
        first = (kind, result) not in self._logged
        self._logged.add((kind, result))
        log.log(logging.WARNING if first else logging.DEBUG,
                "! call record %s %s (%s): %s; calls go on without it%s", kind, result, path.name, why,
                "" if not first else " (further failures of this kind are logged at DEBUG)")

    # -- writer thread ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        while (item := self._jobs.get()) is not None:
            job, owner = item
            if owner is not None and owner.failed:
                continue
            try:
                job()
            except Exception as exc:  # OSError (full disk, unwritable dir) or anything else: the record only
                if owner is not None:
                    owner.abandon()
                    self.failed("audio", "failed", owner.path, _why(exc))
                else:
                    self.failed("summary", "failed", self.directory, _why(exc))

    def _write_json(self, path: Path, body: bytes) -> None:
        tmp = path.with_name(path.name + ".tmp")
        try:
            with _create(tmp) as f:
                f.write(body)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self.counts["summary", "written"] += 1


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__
