"""The real Kamailio running dialplan/kamailio.cfg as shipped, in front of given adapters (tests and the bench)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

from bridge.bench.capacity import free_port
from tests.interop.sip_proxy import running

ROOT = Path(__file__).resolve().parents[3]
KAMAILIO = shutil.which("kamailio") or (Path("/usr/sbin/kamailio") if Path("/usr/sbin/kamailio").exists() else None)
MODULES = sorted(str(p) for p in Path("/usr/lib").glob("*/kamailio/modules"))


def kamailio_argv(tmp: Path, port: int, adapters: list[int]) -> list[str]:
    """The command line: LISTEN on 127.0.0.1:`port`, DS_LIST naming one destination per adapter SIP port."""
    assert KAMAILIO is not None, "kamailio not installed (apt-get install kamailio)"
    ds_list = tmp / "dispatcher.list"
    ds_list.write_text("".join(f"1 sip:127.0.0.1:{p} 0 0 duid=ai{i}\n" for i, p in enumerate(adapters)))
    return [str(KAMAILIO), "-DD", "-E", "-f", str(ROOT / "dialplan" / "kamailio.cfg"), "-P", str(tmp / "k.pid"),
            "-Y", str(tmp), "-m", "64", "-M", "8", "-A", f"LISTEN=udp:127.0.0.1:{port}", "-A", f'DS_LIST="{ds_list}"',
            *(["-A", f'MPATH="{MODULES[0]}/"'] if MODULES else [])]


@contextlib.asynccontextmanager
async def kamailio(tmp: Path, adapters: list[int]) -> AsyncIterator[int]:
    """dialplan/kamailio.cfg as shipped, with LISTEN and DS_LIST overridden on the command line."""
    port = free_port()
    async with running(kamailio_argv(tmp, port, adapters), port, tmp / "kamailio.log"):
        yield port
