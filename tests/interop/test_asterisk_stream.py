"""The AudioSocket and chan_websocket ways in against a real Asterisk 22 started with the project's asterisk/ files.

Five ways reach the echo agent: AudioSocket() and Dial(AudioSocket/...) (asterisk/audiosocket.conf),
Dial(WebSocket/...) (asterisk/websocket.conf + websocket_client.conf), and the Stasis application with
ExternalMedia over AudioSocket or chan_websocket (ARI_MEDIA). For each, a Local channel's far half plays 300 ms
bursts of 440 Hz every 2 s and records what comes back: the echo must keep pitch and level, and the burst onsets
in the recording give the round trip through Asterisk. DTMF from the far half must reach the agent once; an agent
hang-up and the caller's hang-up must leave no channel or bridge in Asterisk and no call or connection in the
adapter. Figures are printed (run with -s).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
import urllib.error
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bridge.call import MediaCore
from bridge.codec.g711 import ulaw_decode
from bridge.pbx.ari.app import serve_ari
from bridge.pbx.audiosocket.server import AudioSocketServer
from bridge.pbx.websocket.server import WebSocketServer
from bridge.vendors.base import AgentAudio, AgentTurnEnd, HangupRequest, TransferRequest
from tests.interop.asterisk_peer import AsteriskPeer, skip_reason
from tests.pbx.ari.harness import ScriptedAgent, wait_until

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")

TONE_HZ = 440
BURST_PERIOD = 2.0  # Playtones(440/300,0/1700)
SILENT_RMS = 100.0
RECORD_SECONDS = 5


@dataclasses.dataclass(frozen=True)
class Way:
    name: str
    context: str  # where the Local channel's near half runs
    ari_media: str = ""  # "" = no Stasis application

    def __str__(self) -> str:
        return self.name


WAYS = [
    Way("audiosocket-app", "sip-to-ai-audiosocket"),
    Way("audiosocket-dial", "sip-to-ai-audiosocket-dial"),
    Way("websocket-dial", "sip-to-ai-websocket"),
    Way("ari-audiosocket", "sip-to-ai", "audiosocket"),
    Way("ari-websocket", "sip-to-ai", "websocket"),
]


@pytest.fixture(scope="module")
def asterisk(tmp_path_factory: pytest.TempPathFactory):
    peer = AsteriskPeer(tmp_path_factory.mktemp("asterisk"), tone_hz=TONE_HZ, record_seconds=RECORD_SECONDS)
    peer.start()
    yield peer
    peer.stop()


class Stack:
    """The AudioSocket and websocket servers (and the Stasis app for ARI ways) on one MediaCore."""

    def __init__(self, peer: AsteriskPeer, settings, way: Way, factory=None) -> None:  # type: ignore[no-untyped-def]
        self.settings = dataclasses.replace(
            settings, audiosocket_listen=("127.0.0.1", peer.audiosocket_port),
            websocket_listen=("127.0.0.1", peer.websocket_port), echo_delay_ms=200, ari_url=peer.url,
            ari_username=peer.username, ari_password=peer.password, ari_media=way.ari_media or "rtp")
        self.peer = peer
        self.way = way
        self.core = MediaCore(self.settings, factory)
        self.audiosocket = AudioSocketServer(self.core, self.settings)
        self.websocket = WebSocketServer(self.core, self.settings)
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Stack:
        events = [asyncio.Event(), asyncio.Event()]
        self._tasks = [asyncio.create_task(self.audiosocket.serve(events[0])),
                       asyncio.create_task(self.websocket.serve(events[1]))]
        if self.way.ari_media:
            events.append(asyncio.Event())
            self._tasks.append(asyncio.create_task(serve_ari(self.core, self.settings, events[2])))
        for event in events:
            await asyncio.wait_for(event.wait(), 10)
        if self.way.ari_media:
            await registered(self.peer)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 10)

    @property
    def sessions(self) -> set:
        return self.audiosocket.sessions | self.websocket.sessions


async def registered(peer: AsteriskPeer) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            await asyncio.to_thread(peer.get, "/applications/sip-to-ai")
            return
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                pytest.fail("the adapter did not register its Stasis application")
            await asyncio.sleep(0.1)


async def originate(peer: AsteriskPeer, far_end: str, way: Way) -> None:
    path = f"/channels?endpoint=Local/{far_end}&context={way.context}&extension=s&priority=1&formats=ulaw"
    await asyncio.to_thread(peer.post, path)


async def nothing_left(peer: AsteriskPeer, stack: Stack) -> None:
    for _ in range(400):
        channels, bridges = (await asyncio.to_thread(peer.get, "/channels"),
                             await asyncio.to_thread(peer.get, "/bridges"))
        if not channels and not bridges and not stack.core.calls and not stack.sessions:
            return
        await asyncio.sleep(0.025)
    pytest.fail(f"left behind: channels={channels} bridges={bridges} calls={list(stack.core.calls)} "
                f"sessions={len(stack.sessions)}")


class Tap:
    """Timestamps of the G.711 frames the call hands to its connection and gets from it, and of the writes to
    the connection's socket (AudioSocket: StreamWriter.write; websocket: send_bytes)."""

    def __init__(self, stack: Stack) -> None:
        self.sent: list[tuple[float, bytes]] = []
        self.received: list[tuple[float, bytes]] = []
        self.writes: list[float] = []
        call = next(iter(stack.core.calls.values()))
        endpoint = call.endpoint
        send, receive = endpoint._sendto, endpoint.receive

        def sendto(frame: bytes, address) -> object:  # type: ignore[no-untyped-def]
            self.sent.append((time.monotonic(), frame))
            return send(frame, address)

        def received(payload: bytes) -> None:
            self.received.append((time.monotonic(), payload))
            receive(payload)

        endpoint._sendto, endpoint.receive = sendto, received
        self._stack = stack
        self._hooked: set[int] = set()

    def hook_socket(self) -> None:
        """Time-stamp the socket writes of the call's connection (once it is there)."""
        for session in self._stack.sessions:
            if id(session) in self._hooked:
                continue
            self._hooked.add(id(session))
            if hasattr(session, "writer"):
                write = session.writer.write

                def timed_write(data: bytes, write=write) -> None:  # type: ignore[no-untyped-def]
                    self.writes.append(time.monotonic())
                    write(data)

                session.writer.write = timed_write
            else:
                send_bytes = session.ws.send_bytes

                async def timed_send(data: bytes, send_bytes=send_bytes) -> None:  # type: ignore[no-untyped-def]
                    self.writes.append(time.monotonic())
                    await send_bytes(data)

                session.ws.send_bytes = timed_send


def rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0


def frequency(pcm: np.ndarray, rate: int = 8000) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    return float(np.argmax(spectrum) * rate / len(pcm))


def burst_interiors(blocks: np.ndarray) -> np.ndarray:
    """The samples of loud 20 ms blocks whose neighbours are loud too (no burst edges)."""
    loud = np.array([rms(b) > SILENT_RMS for b in blocks])
    inner = loud[1:-1] & loud[:-2] & loud[2:]
    return blocks[1:-1][inner].reshape(-1)


def onsets(times_and_frames: list[tuple[float, bytes]]) -> list[float]:
    """Times of the first loud frame of each burst."""
    out, was_loud = [], False
    for t, frame in times_and_frames:
        loud = rms(ulaw_decode(frame)) > SILENT_RMS
        if loud and not was_loud:
            out.append(t)
        was_loud = loud
    return out


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (8000, 2, 1)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def pacing(times: list[float]) -> tuple[float, float]:
    errors = np.abs(np.diff(np.array(times)) * 1000 - 20.0)
    return float(np.percentile(errors, 50)), float(np.percentile(errors, 99))


@pytest.mark.parametrize("way", WAYS, ids=str)
async def test_tone_comes_back_at_the_same_pitch_and_level_then_the_caller_hangs_up(asterisk, settings, way):
    tag = f"burst-{way.name}"
    async with Stack(asterisk, settings, way) as stack:
        await originate(asterisk, f"{tag}@interop-tone", way)
        await wait_until(lambda: stack.core.calls, timeout=5, what="the call reached the core")
        tap = Tap(stack)
        await wait_until(lambda: (tap.hook_socket(), stack.sessions)[1], what="the media connection")
        tap.hook_socket()
        # the far half records RECORD_SECONDS, then hangs up: that is the caller hanging up
        await wait_until(lambda: not stack.core.calls, timeout=RECORD_SECONDS + 5, what="hang-up ended the call")
        await nothing_left(asterisk, stack)
        assert len(stack.core.clock) == 0 and stack.core.ports.in_use == frozenset()
    await asyncio.sleep(0)
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []  # no task left running

    inbound = np.concatenate([ulaw_decode(p) for _, p in tap.received])
    echo = read_wav(asterisk.recordings / f"{tag}.wav")
    echo_blocks = echo[: len(echo) // 160 * 160].reshape(-1, 160)
    heard, back = burst_interiors(inbound[: len(inbound) // 160 * 160].reshape(-1, 160)), burst_interiors(echo_blocks)
    assert len(heard) and len(back), "no tone in or no echo back"
    f_in, f_out, level_in, level_out = frequency(heard), frequency(back), rms(heard), rms(back)
    loud_blocks = [i for i, b in enumerate(echo_blocks) if rms(b) > SILENT_RMS]
    starts = [i for i in loud_blocks if i - 1 not in loud_blocks]
    round_trips = [(i * 0.020) % BURST_PERIOD * 1000 for i in starts]
    in_onsets, out_onsets = onsets(tap.received), onsets(tap.sent)
    echo_at_socket = [(next(o for o in out_onsets if o > i) - i) * 1000 for i in in_onsets
                      if any(o > i for o in out_onsets)]
    sent_p50, sent_p99 = pacing(tap.writes)
    recv_p50, recv_p99 = pacing([t for t, _ in tap.received])
    print(f"\n{way}: tone in {f_in:.1f} Hz rms {level_in:.0f}, back {f_out:.1f} Hz rms {level_out:.0f} "
          f"({20 * np.log10(level_out / level_in):+.2f} dB); round trip at the far end "
          f"{', '.join(f'{r:.0f}' for r in round_trips)} ms (ECHO_DELAY_MS=200); echo delay at our side "
          f"{', '.join(f'{e:.0f}' for e in echo_at_socket)} ms; our socket writes |interval-20ms| p50 {sent_p50:.2f}"
          f" p99 {sent_p99:.2f} ms over {len(tap.writes)}; Asterisk's frames p50 {recv_p50:.2f} p99 {recv_p99:.2f}"
          f" ms over {len(tap.received)}; load {os.getloadavg()[0]:.2f}")
    assert abs(f_in - TONE_HZ) < 10 and abs(f_out - f_in) < 5
    assert abs(20 * np.log10(level_out / level_in)) < 1.0
    assert round_trips and all(200 <= r < 600 for r in round_trips[1:])
    assert 19.0 < float(np.median(np.diff(tap.writes)) * 1000) < 21.0


def scripted(made: list[ScriptedAgent], script=()) -> Callable:  # type: ignore[no-untyped-def]
    def factory(ctx):  # type: ignore[no-untyped-def]
        made.append(ScriptedAgent(ctx, list(script)))
        return made[-1]

    return factory


@pytest.mark.parametrize("way", WAYS, ids=str)
async def test_dtmf_from_asterisk_reaches_the_agent_once(asterisk, settings, way):
    made: list[ScriptedAgent] = []
    async with Stack(asterisk, settings, way, scripted(made)) as stack:
        await originate(asterisk, "dtmf@interop-tone", way)  # the far half sends SendDTMF(5#) after 1.5 s
        await wait_until(lambda: made and made[0].digits[-1:] == ["#"], timeout=6, what="DTMF 5# at the agent")
        await asyncio.sleep(0.3)  # a duplicate would arrive within this
        assert made[0].digits == ["5", "#"]
        for channel in await asyncio.to_thread(asterisk.get, "/channels"):
            with contextlib.suppress(urllib.error.HTTPError):
                await asyncio.to_thread(asterisk._request, "DELETE", f"/channels/{channel['id']}")
        await nothing_left(asterisk, stack)


@pytest.mark.parametrize("way", WAYS, ids=str)
async def test_agent_hangup_plays_the_goodbye_and_leaves_nothing_behind(asterisk, settings, way):
    goodbye = bytes([0x10]) * 160 * 10
    made: list[ScriptedAgent] = []
    script = [AgentAudio(goodbye), AgentTurnEnd(), HangupRequest("goodbye")]
    async with Stack(asterisk, settings, way, scripted(made, script)) as stack:
        await originate(asterisk, "s@interop-tone", way)
        await wait_until(lambda: stack.core.calls, timeout=5, what="call up")
        tap = Tap(stack)
        await wait_until(lambda: not stack.core.calls, timeout=5, what="agent hang-up ended the call")
        await nothing_left(asterisk, stack)
    assert sum(1 for _, f in tap.sent if f == bytes([0x10]) * 160) == 10  # the goodbye left before the hang-up


@pytest.mark.parametrize("way", [w for w in WAYS if w.ari_media], ids=str)
async def test_agent_transfer_on_an_ari_way_continues_the_caller_in_the_dialplan(asterisk, settings, way):
    made: list[ScriptedAgent] = []
    settings = dataclasses.replace(settings, transfer_context="interop-transfer")
    async with Stack(asterisk, settings, way, scripted(made, [TransferRequest("2000")])) as stack:
        await originate(asterisk, "s@interop-tone", way)
        await wait_until(lambda: stack.core.calls, timeout=5, what="call up")
        caller = next(iter(stack.core.calls))
        await wait_until(lambda: not stack.core.calls, what="call handed back")
        channel = await asyncio.to_thread(asterisk.get, f"/channels/{caller}")
        assert (channel["dialplan"]["context"], channel["dialplan"]["exten"]) == ("interop-transfer", "2000")
        await nothing_left(asterisk, stack)  # [interop-transfer] hangs up after 1 s
