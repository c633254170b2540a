"""A real Asterisk 22 as a loopback test peer, configured with the project's asterisk/ files (asterisk-test-peer.md)."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

PREFIX = Path(os.environ.get("ASTERISK_PREFIX", "/opt/asterisk-22"))
BINARY = PREFIX / "sbin" / "asterisk"
PROJECT_CONFIG = Path(__file__).resolve().parents[2] / "asterisk"
START_TIMEOUT = 20.0  # seconds: ~250 modules load in about 1 s on an idle machine, far longer on a busy one

# Modules with no use here that open listeners, need their own config or are not built (asterisk-test-peer.md).
NOLOAD = """chan_iax2 chan_mgcp chan_skinny chan_unistim pbx_dundi res_phoneprov app_voicemail res_pjsip chan_pjsip
app_agent_pool app_alarmreceiver app_amd app_confbridge app_page app_festival app_followme app_queue cdr_csv
cdr_custom cdr_manager cdr_pgsql cdr_sqlite3_custom cel_custom cel_manager cel_pgsql cel_sqlite3_custom pbx_ael
res_calendar res_config_pgsql res_hep res_parking res_prometheus res_stun_monitor res_hep_rtcp app_minivm
res_statsd res_smdi""".split()  # noqa: SIM905 (readable as a block)

# Test-only dialplan: the far half of a Local channel plays a tone and records what it hears back.
TEST_DIALPLAN = """
[interop-tone]
exten => _rec-.,1,Answer()
 same => n,Playtones({freq})
 same => n,Record({recordings}/${{EXTEN}}.wav,0,{seconds},qkx)
 same => n,Hangup()
exten => _burst-.,1,Answer()
 same => n,Playtones({freq}/300,0/1700)
 same => n,Record({recordings}/${{EXTEN}}.wav,0,{seconds},qkx)
 same => n,Hangup()
exten => s,1,Answer()
 same => n,Playtones({freq})
 same => n,Wait(30)
 same => n,Hangup()
exten => dtmf,1,Answer()
 same => n,Wait(1.5)
 same => n,SendDTMF(5#)
 same => n,Wait(30)
 same => n,Hangup()

; where a transferred test call lands (TRANSFER_CONTEXT in the tests)
[interop-transfer]
exten => _X.,1,Wait(1)
 same => n,Hangup()
"""


def skip_reason() -> str | None:
    if not BINARY.exists():
        return f"real Asterisk not installed: {BINARY} is absent (set ASTERISK_PREFIX)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _replace(text: str, key: str, value: str) -> str:
    """Set `key = value` in an Asterisk config text; the key must be there (the file's shape is part of the test)."""
    new, n = re.subn(rf"(?m)^{key}\s*=.*$", f"{key} = {value}", text)
    assert n == 1, f"{key} not found exactly once"
    return new


class AsteriskPeer:
    """Starts `asterisk -f` on 127.0.0.1 with a random HTTP port; stop() ends it by its PID."""

    def __init__(self, workdir: Path, tone_hz: int = 440, record_seconds: int = 4) -> None:
        self.dir = workdir
        self.port = free_port()
        self.username = "sip-to-ai"
        self.password = secrets.token_hex(8)
        self.recordings = workdir / "recordings"
        self.tone_hz = tone_hz
        self.record_seconds = record_seconds
        self.proc: subprocess.Popen[bytes] | None = None
        self.audiosocket_port = free_port()  # where its AudioSocket contexts and websocket client connect to
        self.websocket_port = free_port()
        self._write_config()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self) -> None:
        etc, var = self.dir / "etc", self.dir / "var"
        for sub in ("etc", "var/lib", "var/spool", "var/log", "var/run", "var/cache", "recordings"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        for name in ("ari.conf", "http.conf", "extensions.conf", "rtp.conf", "audiosocket.conf", "websocket.conf",
                     "websocket_client.conf", "instances.conf"):
            shutil.copy(PROJECT_CONFIG / name, etc / name)
        audiosocket = re.subn(r"(?m)^SIP_TO_AI_AUDIOSOCKET=.*$",
                              f"SIP_TO_AI_AUDIOSOCKET=127.0.0.1:{self.audiosocket_port}",
                              (etc / "audiosocket.conf").read_text())
        assert audiosocket[1] == 1, "SIP_TO_AI_AUDIOSOCKET not found exactly once"
        (etc / "audiosocket.conf").write_text(audiosocket[0])
        client = _replace((etc / "websocket_client.conf").read_text(), "uri",
                          f"ws://127.0.0.1:{self.websocket_port}/media")
        (etc / "websocket_client.conf").write_text(client)
        http = _replace((etc / "http.conf").read_text(), "bindport", str(self.port))
        (etc / "http.conf").write_text(http)
        (etc / "ari.conf").write_text(_replace((etc / "ari.conf").read_text(), "password", self.password))
        dialplan = TEST_DIALPLAN.format(freq=self.tone_hz, recordings=self.recordings, seconds=self.record_seconds)
        with (etc / "extensions.conf").open("a") as f:
            f.write(dialplan + "\n#include audiosocket.conf\n#include websocket.conf\n#include instances.conf\n")
        (etc / "modules.conf").write_text(
            "[modules]\nautoload = yes\n" + "".join(f"noload => {m}.so\n" for m in NOLOAD)
        )
        (etc / "logger.conf").write_text("[general]\n[logfiles]\nmessages.log => notice,warning,error,verbose\n")
        dirs = {
            "astcachedir": var / "cache", "astetcdir": etc, "astmoddir": PREFIX / "lib/asterisk/modules",
            "astvarlibdir": var / "lib", "astdbdir": var / "lib", "astkeydir": var / "lib",
            "astdatadir": var / "lib", "astagidir": var / "lib/agi-bin", "astspooldir": var / "spool",
            "astrundir": var / "run", "astlogdir": var / "log", "astsbindir": PREFIX / "sbin",
        }
        lines = ["[directories]"] + [f"{k} => {v}" for k, v in dirs.items()] + ["[options]", "verbose = 3"]
        (etc / "asterisk.conf").write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        log = (self.dir / "console.log").open("ab")
        self.proc = subprocess.Popen(
            [str(BINARY), "-f", "-n", "-C", str(self.dir / "etc" / "asterisk.conf")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"asterisk exited with {self.proc.returncode}; see {self.dir}/console.log")
            try:
                self.get("/asterisk/info")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        raise RuntimeError(f"asterisk did not answer ARI within {START_TIMEOUT} s")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    # ---- blocking ARI calls for the test's own checks ---------------------------------------------------------

    def _request(self, method: str, path: str) -> object:
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        req = urllib.request.Request(f"{self.url}/ari{path}", method=method,
                                     headers={"Authorization": f"Basic {token}"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def get(self, path: str) -> object:
        return self._request("GET", path)

    def post(self, path: str) -> object:
        return self._request("POST", path)
