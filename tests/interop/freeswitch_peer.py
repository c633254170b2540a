"""A real FreeSWITCH 1.10 as a loopback test peer, dialling the adapter through the project's freeswitch/ files.

The build is made by hand on the machine (../shared/freeswitch/README.md) into FREESWITCH_PREFIX (default
/opt/freeswitch); without it the tests skip, saying why. The configuration is rendered into a temp dir on free
ports: a minimal core, one sofia profile `external` on 127.0.0.1, and the project's own `event_socket.conf.xml`,
`socket-to-adapter.xml` (extension 7001) and `bridge-to-adapter.xml` (extension 7000) with only their addresses
and ports changed. Test extensions: 9100 answers and plays an 880 Hz tone (where transfers land), 9003 echo.
Calls are placed with `originate` over ESL inbound; the A leg plays a WAV and records what it hears.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import socket
import subprocess
import threading
import time
import wave
from pathlib import Path

import numpy as np

PREFIX = Path(os.environ.get("FREESWITCH_PREFIX", "/opt/freeswitch"))
BINARY = PREFIX / "bin" / "freeswitch"
MODULE_DIR = PREFIX / "lib" / "freeswitch" / "mod"
PROJECT_CONFIG = Path(__file__).resolve().parents[2] / "freeswitch"
MODULES = ("mod_console", "mod_logfile", "mod_event_socket", "mod_commands", "mod_dptools", "mod_db",
           "mod_dialplan_xml", "mod_loopback", "mod_sofia", "mod_tone_stream", "mod_sndfile", "mod_native_file")
START_TIMEOUT = 30.0  # seconds; about 1 s on an idle machine, far more while other builds run
TRANSFER_TONE_HZ = 880

MAIN = """<?xml version="1.0"?>
<document type="freeswitch/xml">
  <section name="configuration" description="configuration">
    <configuration name="switch.conf" description="core">
      <settings>
        <param name="rtp-start-port" value="{rtp_start}"/>
        <param name="rtp-end-port" value="{rtp_end}"/>
        <param name="max-sessions" value="1000"/>
        <param name="sessions-per-second" value="200"/>
        <param name="loglevel" value="info"/>
        <param name="colorize-console" value="false"/>
        <param name="dump-cores" value="no"/>
      </settings>
    </configuration>
    <configuration name="modules.conf" description="modules">
      <modules>{modules}</modules>
    </configuration>
    <X-PRE-PROCESS cmd="include" data="{dir}/event_socket.conf.xml"/>
    <configuration name="console.conf" description="console">
      <mappings><map name="all" value="console,debug,info,notice,warning,err,crit,alert"/></mappings>
      <settings><param name="colorize" value="false"/><param name="loglevel" value="info"/></settings>
    </configuration>
    <configuration name="logfile.conf" description="log file">
      <profiles><profile name="default"><settings><param name="uuid" value="true"/></settings>
        <mappings><map name="all" value="debug,info,notice,warning,err,crit,alert"/></mappings></profile></profiles>
    </configuration>
    <configuration name="sofia.conf" description="sofia">
      <global_settings><param name="log-level" value="0"/></global_settings>
      <profiles>
        <profile name="external">
          <settings>
            <param name="sip-ip" value="127.0.0.1"/>
            <param name="rtp-ip" value="127.0.0.1"/>
            <param name="ext-sip-ip" value="127.0.0.1"/>
            <param name="ext-rtp-ip" value="127.0.0.1"/>
            <param name="sip-port" value="{sip_port}"/>
            <param name="context" value="default"/>
            <param name="dialplan" value="XML"/>
            <param name="auth-calls" value="false"/>
            <param name="inbound-codec-prefs" value="PCMU,PCMA,G722"/>
            <param name="outbound-codec-prefs" value="PCMU,PCMA"/>
            <param name="rtp-timer-name" value="soft"/>
            <param name="dtmf-type" value="rfc2833"/>
            <param name="rfc2833-pt" value="101"/>
            <param name="manage-presence" value="false"/>
            <param name="inbound-late-negotiation" value="true"/>
          </settings>
        </profile>
      </profiles>
    </configuration>
  </section>
  <section name="dialplan" description="dialplan">
    <context name="default">
      <X-PRE-PROCESS cmd="include" data="{dir}/socket-to-adapter.xml"/>
      <X-PRE-PROCESS cmd="include" data="{dir}/bridge-to-adapter.xml"/>
      <extension name="transfer-target">
        <condition field="destination_number" expression="^9100$">
          <action application="answer"/>
          <action application="playback" data="tone_stream://%(3000,0,{transfer_hz})"/>
          <action application="hangup"/>
        </condition>
      </extension>
      <extension name="echo">
        <condition field="destination_number" expression="^9003$">
          <action application="answer"/>
          <action application="echo"/>
        </condition>
      </extension>
    </context>
  </section>
</document>
"""


def skip_reason() -> str | None:
    if not BINARY.exists():
        return f"real FreeSWITCH not installed: {BINARY} is absent (set FREESWITCH_PREFIX)"
    missing = [m for m in MODULES if not (MODULE_DIR / f"{m}.so").exists()]
    if missing:
        return f"FreeSWITCH at {PREFIX} lacks {', '.join(missing)}"
    return None


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_udp_block(size: int, low: int = 20000, high: int = 32000, avoid: range = range(0)) -> int:
    """The first port of `size` consecutive UDP ports that are free now (below the ephemeral range), apart from
    `avoid`: FreeSWITCH binds its RTP ports only when a call needs one, so a free probe says nothing of them."""
    for _ in range(50):
        start = random.randrange(low, high - size) & ~1
        if start < avoid.stop and avoid.start < start + size:
            continue
        try:
            for port in range(start, start + size, 97):  # a sample: the whole block would take long
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return start
    raise RuntimeError("no free UDP port block")


def _render(name: str, replacements: dict[str, str]) -> str:
    """A project file with exactly these strings replaced (each must be there: the file's shape is part of it)."""
    text = (PROJECT_CONFIG / name).read_text()
    for old, new in replacements.items():
        assert old in text, f"{old!r} not in freeswitch/{name}"
        text = text.replace(old, new)
    return text


class FreeSwitchPeer:
    """`freeswitch -nf` on 127.0.0.1 with free ESL/SIP/RTP ports; stop() ends it by its PID."""

    def __init__(self, workdir: Path, adapter_sip: tuple[str, int], adapter_esl: tuple[str, int]) -> None:
        self.dir = workdir
        self.password = "ClueCon"  # the value in freeswitch/event_socket.conf.xml, used as shipped
        self.adapter_sip, self.adapter_esl = adapter_sip, adapter_esl
        self.proc: subprocess.Popen[bytes] | None = None
        # mod_event_socket listens with a backlog of 5 (switch_socket_listen(listen_list.sock, 5)) and accepts on one
        # thread: 20 originates connecting at once overflow it while that thread is slow, and the kernel drops
        # the extra SYNs (retried after 1, 3, 7, 15 s...). Connections are made one at a time; commands run in
        # parallel once connected.
        self._connecting = threading.Lock()
        self._choose_ports()

    def _choose_ports(self) -> None:
        self.esl_port = free_port()
        self.sip_port = free_port(socket.SOCK_DGRAM)
        start = free_udp_block(400)
        self.rtp_ports = range(start, start + 400)
        self._write_config()

    def start_on_free_ports(self, attempts: int = 2) -> None:
        """start(); when a port probed free was taken meanwhile by another process (tests run side by side on
        this machine), try again on other ports."""
        for attempt in range(attempts):
            try:
                self.start()
                return
            except RuntimeError:
                self.stop()
                if attempt == attempts - 1:
                    raise
                self._choose_ports()

    def _write_config(self) -> None:
        conf = self.dir / "conf"
        for sub in ("conf", "log", "db", "run", "temp", "recordings"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        sip, esl = "{}:{}".format(*self.adapter_sip), "{}:{}".format(*self.adapter_esl)
        files = {
            "event_socket.conf.xml": {'name="listen-port" value="8021"': f'name="listen-port" value="{self.esl_port}"'},
            "socket-to-adapter.xml": {"127.0.0.1:8084": esl},
            # the second adapter of the failover example: a port nothing listens on (never tried: the first answers)
            "bridge-to-adapter.xml": {"127.0.0.1:6060": sip, "127.0.0.1:6061": f"127.0.0.1:{free_port()}"},
        }
        for name, replacements in files.items():
            (conf / name).write_text(_render(name, replacements))
        modules = "".join(f'<load module="{m}"/>' for m in MODULES)
        (conf / "freeswitch.xml").write_text(MAIN.format(
            rtp_start=self.rtp_ports.start, rtp_end=self.rtp_ports.stop - 1, modules=modules, dir=conf,
            sip_port=self.sip_port, transfer_hz=TRANSFER_TONE_HZ))

    def start(self) -> None:
        d = self.dir
        log = (d / "console.log").open("ab")
        env = {**os.environ, "LD_LIBRARY_PATH": f"{PREFIX / 'lib'}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
        self.proc = subprocess.Popen(
            [str(BINARY), "-nf", "-nc", "-nonat", "-conf", str(d / "conf"), "-log", str(d / "log"), "-db",
             str(d / "db"), "-run", str(d / "run"), "-temp", str(d / "temp"), "-recordings", str(d / "recordings"),
             "-mod", str(MODULE_DIR)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"freeswitch exited with {self.proc.returncode}: {self._tail()}")
            try:
                if "external" in self.api("sofia status"):  # ESL answers and the SIP profile is up
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"freeswitch did not answer ESL and bring up its SIP profile within {START_TIMEOUT} s "
                           f"(ESL {self.esl_port}, SIP {self.sip_port}): {self._tail()}")

    def _tail(self) -> str:
        """The end of FreeSWITCH's own log (the run dir is removed after the tests)."""
        lines = [x for x in self.log_text().splitlines() if "[ERR]" in x or "[CRIT]" in x]
        return " | ".join(lines[-5:]) or "no error in its log"

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ---- ESL inbound, blocking (run it with asyncio.to_thread) ------------------------------------------------

    def api(self, command: str, timeout: float = 30.0) -> str:
        """`api <command>` on a fresh ESL inbound connection; the api/response body."""
        with contextlib.ExitStack() as stack:
            with self._connecting:
                s = stack.enter_context(socket.create_connection(("127.0.0.1", self.esl_port), timeout=timeout))
                f = s.makefile("rb")
                _read_message(f)  # auth/request: FreeSWITCH accepted it, it is out of the listen backlog
            s.sendall(f"auth {self.password}\n\n".encode())
            headers, _ = _read_message(f)
            if not headers.get("Reply-Text", "").startswith("+OK"):
                raise OSError(f"ESL auth refused: {headers}")
            s.sendall(f"api {command}\n\n".encode())
            while True:
                headers, body = _read_message(f)
                if headers.get("Content-Type") == "api/response":
                    return body.decode("utf-8", "replace")

    def channel_count(self) -> int:
        """Live sessions, from the core's session hash (`show channels` reads a database updated behind it)."""
        match = re.search(r"(\d+) session\(s\) - peak", self.api("status"))
        assert match, "unexpected `status` output"
        return int(match.group(1))

    def exists(self, uuid: str) -> bool:
        return self.api(f"uuid_exists {uuid}").strip() == "true"

    def originate(self, destination: str, apps: list[str], variables: dict[str, str] | None = None) -> str:
        """`originate {vars}<destination> '<app:arg,...>' inline`: blocks until answered; the A leg's uuid.

        The apps run on the A leg only (an `execute_on_answer` variable would be inherited by a loopback B leg).
        """
        vars_ = ",".join(f"{k}={v}" for k, v in (variables or {}).items())
        reply = self.api(f"originate {{{vars_}}}{destination} '{','.join(apps)}' inline").strip()
        if not reply.startswith("+OK "):
            raise AssertionError(f"originate {destination}: {reply}")
        return reply.split()[1]

    def sip_target(self, extension: str) -> str:
        """A dial string for a SIP call from FreeSWITCH into its own profile (the inbound leg runs the dialplan)."""
        return f"sofia/external/{extension}@127.0.0.1:{self.sip_port}"

    def log_text(self) -> str:
        path = self.dir / "log" / "freeswitch.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _read_message(f) -> tuple[dict[str, str], bytes]:  # type: ignore[no-untyped-def]
    headers: dict[str, str] = {}
    while True:
        line = f.readline()
        if not line:
            raise OSError("ESL connection closed")
        line = line.decode().rstrip("\n")
        if not line:
            if headers:
                break
            continue
        name, _, value = line.partition(": ")
        headers[name] = value
    body = f.read(int(headers["Content-Length"])) if "Content-Length" in headers else b""
    return headers, body


# ---- the A leg's audio: what it plays and what it heard -------------------------------------------------------


def caller_signal(rate: int, seconds: float = 2.6, seed: int = 13) -> np.ndarray:
    """1 s of 440 Hz, 0.2 s silence, then noise up to 0.45 * rate (wideband survives only a wideband path)."""
    t = np.arange(int(rate * 1.0)) / rate
    tone = 8000 * np.sin(2 * np.pi * 440 * t)
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 3000, int(rate * (seconds - 1.2)))
    return np.concatenate([tone, np.zeros(int(rate * 0.2)), noise]).clip(-32767, 32767).astype(np.int16)


def write_wav(path: Path, pcm: np.ndarray, rate: int, channels: int = 1) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())


def read_stereo(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """(heard, sent, rate) of a RECORD_STEREO record_session file: channel 0 is what the A leg read."""
    with wave.open(str(path)) as w:
        assert (w.getsampwidth(), w.getnchannels()) == (2, 2), "record_session did not write 16-bit stereo"
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
        return data[:, 0].astype(np.float64), data[:, 1].astype(np.float64), w.getframerate()


# ---- the wire between the adapter and FreeSWITCH, kernel-stamped ----------------------------------------------


class LoopbackTap:
    """Kernel receive times of the UDP datagrams on `lo` from the ports `sources` (an AF_PACKET socket; root only).

    Each datagram is seen as it is delivered to its destination socket: the adapter's pacing as FreeSWITCH gets it.
    """

    def __init__(self, sources: range) -> None:
        self.sources = sources
        self.flows: dict[tuple[int, int], list[float]] = {}
        self._stop = threading.Event()
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
        self.sock.bind(("lo", 0))
        self.sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_TIMESTAMPNS", 35), 1)
        self.sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def available() -> bool:
        try:
            socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800)).close()
        except (OSError, AttributeError):
            return False
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, ancillary, _, addr = self.sock.recvmsg(2048, 64)
            except TimeoutError:
                continue
            except OSError:
                return
            if addr[2] != socket.PACKET_HOST or len(data) < 28 or data[9] != 17:
                continue  # only the delivery side of each loopback datagram, UDP only
            ihl = (data[0] & 0x0F) * 4
            src, dst = int.from_bytes(data[ihl:ihl + 2], "big"), int.from_bytes(data[ihl + 2:ihl + 4], "big")
            if src not in self.sources:
                continue
            stamp = time.monotonic()
            for level, _kind, raw in ancillary:
                if level == socket.SOL_SOCKET and len(raw) >= 16:
                    sec, nsec = int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:16], "little")
                    stamp = sec + nsec / 1e9
            self.flows.setdefault((src, dst), []).append(stamp)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def interval_errors_ms(self, skip: int = 25, min_packets: int = 50) -> np.ndarray:
        """|gap - 20 ms| between consecutive datagrams of each flow, leaving out each flow's first `skip`."""
        errors = [np.abs(np.diff(np.array(t[skip:])) * 1000 - 20.0) for t in self.flows.values()
                  if len(t) >= min_packets]
        return np.concatenate(errors) if errors else np.zeros(0)
