"""A SIP proxy process (Kamailio, OpenSIPS) on a free loopback port: started, ready when it answers OPTIONS 200."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from tests.sip.sip_live import RawClient, status_of


@contextlib.asynccontextmanager
async def running(argv: list[str], port: int, log: Path) -> AsyncIterator[int]:
    """Run `argv` (listening on 127.0.0.1:`port`) until the block ends, then SIGTERM it (SIGKILL after 5 s)."""
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL, stderr=log.open("wb"))
    try:
        client = await RawClient.open()
        try:
            for _ in range(80):
                client.options(("127.0.0.1", port))
                if status_of(await client.final(0.25)) == 200:
                    break
            else:
                raise AssertionError(f"{argv[0]} did not start: " + (await asyncio.to_thread(log.read_text))[-2000:])
        finally:
            client.close()
        yield port
    finally:
        proc.terminate()
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
