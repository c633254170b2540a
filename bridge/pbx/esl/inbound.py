"""The ESL inbound control connection (ESL_INBOUND): `uuid_transfer` for calls bridged to the SIP responder.

A FreeSWITCH dialplan `bridge` to the adapter passes the A-leg's uuid in `X-AI-Call-UUID`. SIP REFER from our
B-leg can only transfer within the A-leg's current context (pbx.md §2.2); `api uuid_transfer <A-uuid> <ext> XML
<context>` over the event socket (8021, `auth <ESL_PASSWORD>`) can go anywhere. The connection is kept open and
re-established with backoff when FreeSWITCH restarts; the password is never logged.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterator, Mapping

from bridge.config import Settings
from bridge.media import CallInfo
from bridge.pbx.esl import protocol as esl
from bridge.pbx.esl.client import EslConnection
from bridge.pbx.esl.protocol import EslError, EslMessage

log = logging.getLogger(__name__)

CALL_UUID_HEADER = "X-AI-Call-UUID"
AUTH_TIMEOUT = 5.0  # seconds for auth/request and the auth reply; FreeSWITCH sends both at once
MIN_DELAY, MAX_DELAY = 0.5, 30.0  # reconnect backoff bounds: quick after a blip, 30 s while FreeSWITCH is down

def backoff(initial: float = MIN_DELAY, maximum: float = MAX_DELAY, factor: float = 2.0) -> Iterator[float]:
    """Reconnect delays: a random first one (no thundering herd after a restart), then doubling up to `maximum`."""
    yield random.random() * initial
    delay = initial
    while True:
        yield delay
        delay = min(maximum, delay * factor)


def a_leg_uuid(metadata: Mapping[str, str]) -> str | None:
    """The A-leg uuid the FreeSWITCH `bridge` snippet put in X-AI-Call-UUID (any case), if it is a plain uuid."""
    for name, value in metadata.items():
        if name.lower() in (CALL_UUID_HEADER.lower(), f"sip_h_{CALL_UUID_HEADER}".lower()):
            value = value.strip()
            return value if esl.UUID.fullmatch(value) else None
    return None


class EslInboundControl:
    """One authenticated control connection to FreeSWITCH, kept up for the life of the process.

    It is the process's LegTransfer (bridge.media): bridge/app.py hands it to the SIP ingress at start-up.
    """

    def __init__(self, settings: Settings) -> None:
        if settings.esl_inbound is None:
            raise ValueError("ESL_INBOUND is not set")
        self.settings = settings
        self.address = settings.esl_inbound
        self.conn: EslConnection | None = None
        self.connected = asyncio.Event()
        self.sessions = 0  # successful logins, for logs and tests

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Connect, authenticate, hold the connection; reconnect with backoff. Runs until cancelled."""
        delays = backoff()
        while True:
            try:
                await self._session(ready)
                delays = backoff()  # it worked for a while: start the backoff afresh
            except (OSError, EslError) as exc:
                log.warning("! esl inbound %s:%d: %s", *self.address, exc)
            finally:
                self.connected.clear()
                self.conn = None
            await asyncio.sleep(next(delays))

    async def _session(self, ready: asyncio.Event | None) -> None:
        """One connection: returns when an established session is lost; raises when it could not be set up."""
        reader, writer = await asyncio.open_connection(*self.address)
        greeting: asyncio.Future[EslMessage] = asyncio.get_running_loop().create_future()

        def on_notice(message: EslMessage) -> None:
            if not greeting.done():
                greeting.set_result(message)

        conn = EslConnection(reader, writer, on_notice=on_notice)
        failure: EslError | None = None
        async with asyncio.TaskGroup() as tg:
            reading = tg.create_task(conn.read_loop())
            try:
                await self._login(conn, greeting)
                self.conn = conn
                self.sessions += 1
                self.connected.set()
                if ready is not None:
                    ready.set()
                log.info("= esl inbound control connected to %s:%d", *self.address)
                await conn.closed.wait()
                log.warning("! esl inbound %s:%d lost: %s; reconnecting", *self.address, conn.close_reason)
            except EslError as exc:  # raised outside the TaskGroup, which would wrap it in a group
                failure = exc
            finally:
                conn.close()
                reading.cancel()
        if failure is not None:
            raise failure

    async def _login(self, conn: EslConnection, greeting: asyncio.Future[EslMessage]) -> None:
        try:
            async with asyncio.timeout(AUTH_TIMEOUT):
                hello = await greeting
        except TimeoutError:
            raise EslError("no auth/request from FreeSWITCH") from None
        if hello.content_type == esl.CONTENT_RUDE_REJECTION:
            raise EslError("refused by FreeSWITCH's ACL (apply-inbound-acl in event_socket.conf.xml)")
        if hello.content_type != esl.CONTENT_AUTH_REQUEST:
            raise EslError(f"expected auth/request, got {hello.content_type!r}")
        reply = await conn.command(esl.auth(self.settings.esl_password), AUTH_TIMEOUT)
        if not reply.ok:
            raise EslError("ESL_PASSWORD was not accepted")  # never the password itself

    async def uuid_transfer(self, uuid: str, destination: str) -> None:
        """Transfer channel `uuid` to `destination` (or TRANSFER_EXTENSION) in TRANSFER_CONTEXT.

        Raises:
            ValueError: an unusable uuid or destination.
            EslError: not connected, or FreeSWITCH answered -ERR (e.g. `No such channel!`).
        """
        if not esl.UUID.fullmatch(uuid):
            raise ValueError("not a channel uuid")
        extension, context = esl.transfer_target(destination, self.settings.transfer_extension,
                                                 self.settings.transfer_context)
        conn = self.conn
        if conn is None or not self.connected.is_set():
            raise EslError("ESL inbound control is not connected")
        await conn.checked(esl.api(f"uuid_transfer {uuid} {extension} XML {context}"))
        log.info("> uuid_transfer %s to %s in %s", uuid, extension, context)

    async def transfer(self, info: CallInfo, destination: str) -> bool:
        """LegTransfer for the SIP ingress: transfer a FreeSWITCH-bridged call's A-leg by `uuid_transfer`.

        Returns True when done; False when it does not apply (no X-AI-Call-UUID) or failed, so the caller falls
        back to SIP REFER.
        """
        uuid = a_leg_uuid(info.metadata)
        if uuid is None:
            return False
        try:
            await self.uuid_transfer(uuid, destination)
        except (ValueError, EslError) as exc:
            log.warning("! uuid_transfer of %s failed: %s", uuid, exc)
            return False
        return True
