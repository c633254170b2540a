"""A real OpenSIPS 3.x running dialplan/opensips.cfg in front of given adapters (OPENSIPS_PREFIX: /opt/opensips).

Debian has no OpenSIPS package: it is built by hand from its public source into a prefix (never by this project).
Only the three site lines of the shipped config are replaced (its `socket`, `mpath` and dispatcher `db_url`, each
found exactly once); the routing is the file's own. The dispatcher table is a db_text directory.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

from bridge.bench.capacity import free_port
from tests.interop.sip_proxy import running

PREFIX = Path(os.environ.get("OPENSIPS_PREFIX", "/opt/opensips"))
BINARY = PREFIX / "sbin" / "opensips"
CONFIG = Path(__file__).resolve().parents[2] / "dialplan" / "opensips.cfg"
OPENSIPS_SKIP = None if BINARY.exists() else (
    f"OpenSIPS not installed: {BINARY} is absent (build OpenSIPS 3.6 into a prefix, set OPENSIPS_PREFIX)")

# db_text files: the header lines end with a space; ':' inside a value is written '\:'
VERSION_TABLE = "table_name(string) table_version(int) \ndispatcher:9\n"
DISPATCHER_HEADER = ("id(int,auto) setid(int) destination(string) socket(string,null) state(int) probe_mode(int) "
                     "weight(string) priority(int) attrs(string,null) description(string,null) \n")


def _set(text: str, pattern: str, line: str) -> str:
    new, n = re.subn(pattern, line.replace("\\", "\\\\"), text, flags=re.MULTILINE)
    assert n == 1, f"{pattern!r} not found exactly once in {CONFIG}"
    return new


def opensips_config(tmp: Path, port: int, adapters: list[int]) -> Path:
    """dialplan/opensips.cfg listening on 127.0.0.1:`port`, one dispatcher row (set 1) per adapter SIP port."""
    db = tmp / "opensips-db"
    db.mkdir(exist_ok=True)
    (db / "version").write_text(VERSION_TABLE)
    rows = "".join(f"{i + 1}:1:sip\\:127.0.0.1\\:{p}::0:1:1:0::ai{i}\n" for i, p in enumerate(adapters))
    (db / "dispatcher").write_text(DISPATCHER_HEADER + rows)
    modules = next(PREFIX.glob("lib*/opensips/modules"))
    text = _set(CONFIG.read_text(), r"^socket=.*$", f"socket=udp:127.0.0.1:{port}")
    text = _set(text, r"^mpath=.*$", f'mpath="{modules}/"')
    text = _set(text, r'^modparam\("dispatcher", "db_url", .*$', f'modparam("dispatcher", "db_url", "text://{db}")')
    cfg = tmp / "opensips.cfg"
    cfg.write_text(text)
    return cfg


@contextlib.asynccontextmanager
async def opensips(tmp: Path, adapters: list[int]) -> AsyncIterator[int]:
    """OpenSIPS in the foreground (-F) on a free port, ready when it answers OPTIONS; SIGTERM at the end."""
    port = free_port()
    argv = [str(BINARY), "-F", "-f", str(opensips_config(tmp, port, adapters)), "-m", "64", "-M", "8"]
    async with running(argv, port, tmp / "opensips.log"):
        yield port
