"""The Stasis application with ARI_MEDIA=audiosocket against the fake Asterisk (its chan_audiosocket connects to the
adapter's AudioSocket server): one core call, its media on the connection that presents the UUID, nothing left."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid as uuidlib

from bridge.pbx.audiosocket.server import AudioSocketServer
from tests.fakes.ari import tone
from tests.interop.asterisk_peer import free_port
from tests.pbx.ari.harness import Adapter, wait_until


async def test_externalmedia_over_audiosocket_carries_the_call_and_leaves_nothing(fake, ari_settings):
    settings = dataclasses.replace(ari_settings, ari_media="audiosocket",
                                   audiosocket_listen=("127.0.0.1", free_port()))
    async with Adapter(settings) as adapter:
        server = AudioSocketServer(adapter.core, settings)
        ready = asyncio.Event()
        serving = asyncio.create_task(server.serve(ready))
        await asyncio.wait_for(ready.wait(), 5)
        try:
            caller = fake.call_in(caller="1001", source=tone(440))
            await wait_until(lambda: fake.channels.get(f"{caller}-media") and server.sessions, what="AudioSocket up")
            media = fake.channels[f"{caller}-media"]
            assert media.name.startswith(f"AudioSocket/127.0.0.1:{settings.audiosocket_listen[1]}-")
            uuidlib.UUID(media.audiosocket.uuid)  # data= is a UUID (400 otherwise)
            await wait_until(lambda: len(media.audiosocket.received) > 25, what="0x10 frames from the adapter")
            assert list(adapter.core.calls) == [caller]  # the connection joined the ARI call, made no call
            assert all(len(p) == 320 for _, p in media.audiosocket.received)
            fake.caller_hangup(caller)
            await wait_until(lambda: not fake.leftovers() and not adapter.core.calls and not server.sessions,
                             what="channels, bridge, call and connection gone")
        finally:
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
