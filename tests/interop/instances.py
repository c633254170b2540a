"""N sip-to-ai processes from one configuration (SIP_TO_AI_INSTANCE=0..N-1), for the PBXs' own spreading tests.

Each instance is `python -m bridge serve` in a process of its own, with its log in `<dir>/instance-N.log`; the
calls an instance served are the `= call from` lines of its log. `drain(n)` is SIGTERM (what systemd's stop
sends), `kill(n)` is SIGKILL (a crash: no goodbye on any socket it held).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


class Instances:
    def __init__(self, workdir: Path, count: int, env: dict[str, str]) -> None:
        self.dir = workdir
        self.count = count
        self.env = {"LOG_FORMAT": "text", "LOG_LEVEL": "INFO", "ADMIN_LISTEN": "off", **env}
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Instances:
        for n in range(self.count):
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "bridge", "serve"], env={**os.environ, **self.env, "SIP_TO_AI_INSTANCE": str(n)},
                cwd=self.dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log(n).open("wb")))
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def log(self, n: int) -> Path:
        return self.dir / f"instance-{n}.log"

    def calls(self, n: int) -> int:
        """How many calls instance `n` has taken (its `= call from` log lines)."""
        return self.log(n).read_text(errors="replace").count("= call from")

    def wait_calls(self, total: int, timeout: float = 10.0) -> None:
        """Until the instances have taken `total` calls between them (a call's log line follows its answer)."""
        deadline = time.monotonic() + timeout
        while sum(map(self.calls, range(self.count))) < total:
            if time.monotonic() > deadline:
                raise AssertionError(f"{total} calls never all reached the instances")
            time.sleep(0.05)

    def wait_log(self, n: int, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log(n).read_text(errors="replace"):
            if self.procs[n].poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"instance {n} never logged {text!r}: " + self.log(n).read_text()[-2000:])
            time.sleep(0.05)

    def drain(self, n: int) -> None:
        self.procs[n].send_signal(signal.SIGTERM)

    def kill(self, n: int) -> None:
        self.procs[n].kill()
        self.procs[n].wait()
