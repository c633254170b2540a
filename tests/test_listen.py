"""ConnectionCap on asyncio's own loop (test_floods.py drives it under uvloop in a served process).

At the cap a "refuse" listener closes the new connection before its server sees it, and admits again once one
closes; an "evict" listener aborts the oldest, even one whose peer reads nothing (a close would wait for its send
buffer to drain, for ever). At start-up the open-file limit is raised to what full caps and MAX_CALLS need.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

from bridge.listen import ConnectionCap
from tests.ops.harness import until


async def _eof_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(1 << 16):
                pass
        return True
    except TimeoutError:
        return False
    except ConnectionResetError:  # aborted: RST
        return True


async def test_refuse_closes_new_connections_at_the_cap_and_admits_again_after_a_close() -> None:
    cap = ConnectionCap("test", 2)
    seen: list[asyncio.StreamWriter] = []
    server = await cap.listen_streams(lambda _, writer: seen.append(writer), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        closed = await asyncio.gather(*(_eof_within(r, 0.5) for r, _ in clients))
        assert closed == [False, False, True, True] and len(seen) == 2 and cap.refused == 2 and cap.open == 2
        seen[0].close()  # the server ends one session
        await until(lambda: cap.open == 1)
        again = await asyncio.open_connection("127.0.0.1", port)
        await until(lambda: len(seen) == 3)
        assert cap.open == 2 and cap.refused == 2
        for w in [*seen, *(w for _, w in [*clients, again])]:
            w.close()
        await until(lambda: cap.open == 0)


async def test_evict_aborts_the_oldest_even_with_a_full_send_buffer() -> None:
    cap = ConnectionCap("test", 2, at_cap="evict")
    writers: list[asyncio.StreamWriter] = []

    def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        writer.write(b"x" * (16 << 20))  # the peer reads none of it: most stays in our send buffer

    server = await cap.listen_streams(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        slow = [await asyncio.open_connection("127.0.0.1", port, limit=1) for _ in range(2)]
        await until(lambda: len(writers) == 2)
        assert writers[0].transport.get_write_buffer_size() > 0
        newest = await asyncio.open_connection("127.0.0.1", port)
        await until(lambda: len(writers) == 3)
        async with asyncio.timeout(2.0):
            await writers[0].wait_closed()  # connection lost, its FD closed: a close() would wait for the peer
        assert cap.evicted == 1 and cap.open == 2 and not writers[1].transport.is_closing()
        assert await _eof_within(slow[0][0], 2.0)
        for w in [*writers, *(w for _, w in [*slow, newest])]:
            w.close()
        await until(lambda: cap.open == 0)


def _limit_after(soft: int, hard: int, needed: int) -> list[str]:
    """In a child process with RLIMIT_NOFILE set to (soft, hard): ensure_descriptors(needed)'s line, new soft."""
    code = ("import resource, sys; from bridge.listen import ensure_descriptors; "
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard})); line = ensure_descriptors({needed}); "
            "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], line)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(" ", 1)


def test_the_open_file_limit_is_raised_to_what_full_caps_and_max_calls_need() -> None:
    assert _limit_after(200, 400, 300) == ["300", "open-file limit raised from 200 to 300 (MAX_CALLS calls and "
                                           "full connection caps)"]
    soft, line = _limit_after(200, 250, 300)
    assert soft == "250" and line.startswith("WARNING: open-file limit 250 (hard limit) is below the 300")
    assert _limit_after(300, 400, 300) == ["300"]  # enough already: left alone, nothing said
