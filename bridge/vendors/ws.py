"""The shared websocket runner of the AI vendors: connect, refusal vs retry, send queue, receive loop, reconnect.

A vendor module subclasses `WsAgent` and only translates; it implements four hooks, all free of I/O:

    endpoint()            -> Endpoint(url, headers, subprotocols, secrets)   where and how to connect
    on_open(resumed)      -> [message, ...]   sent at once when a socket opens (session.update, setup, ...)
    translate(message)    -> [action, ...]    one vendor message (text or binary) into actions:
                               an AgentEvent   queued for events() (AgentAudio, AgentInterrupted, ...)
                               Send(message)   a reply to the vendor (tool result, truncate, ...)
                               Ready()         the session is configured: caller audio may flow
                               VendorError(m)  logged; before Ready it refuses the session (AgentRefused)
                               Reconnect(why)  close this socket and reopen it resumed (Gemini goAway)
    audio_message(data)   -> message          caller audio (in input_format) as the vendor wants it
and optionally `on_reconnect()` (reset per-connection state, e.g. keep a resumption handle for the next
on_open), `on_resume_refused()` (the vendor refused to resume: True to open afresh at once, e.g. Gemini
without its expired handle) and `keepalive` (a message sent after so many idle seconds).

The runner (`WsSession`, owned by `WsAgent`) does the I/O:
  * connect: `websockets` with the endpoint's headers, the whole handshake (socket + on_open + until Ready)
    bounded by AI_CONNECTION_TIMEOUT_SEC; every failure at connect raises AgentRefused whose message
    names the vendor's reason (HTTP status and body, close code and reason, error event), never a secret;
  * send: `send_audio()`/`send()` never block: audio waits in a bounded queue (oldest dropped and counted
    when the vendor is slow or reconnecting), control messages in an unbounded one sent first;
  * receive: every message goes through `translate`; events land in an asyncio.Queue that `events()`
    drains (unbounded, but the call always consumes it);
  * reconnect: a drop classified retryable (`classify`) is retried after `reconnect_delays(...)` with the
    same settings (`on_open(resumed=True)`), at most MAX_RECONNECT_ATTEMPTS times; events already received
    are never lost; when it gives up, `AgentClosed(error=True)` is the last event;
  * acknowledged audio: a successful send only means the bytes reached our kernel, so every ACK_INTERVAL a
    websocket ping goes out and its pong acknowledges the audio sent before it (TCP keeps order). Audio not
    yet acknowledged when a connection drops is sent again, first, on the next one (at most the send
    queue's bound), so the vendor hears the caller from the moment of the drop; a few frames it did get may
    come twice. A ping unanswered for ACK_TIMEOUT means a dead socket: it is aborted and reconnected;
  * close: `aclose(code)` closes with 1000 (call over) or 1001 (going away); one owner task, one TaskGroup
    per connection (sender + receiver), nothing left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from abc import abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.protocol import State
from websockets.typing import Subprotocol

from bridge.errors import AgentRefused, ParseError
from bridge.vendors.base import Agent, AgentClosed, AgentContext, AgentEvent, AgentReconnected, UplinkLatency

Message = str | bytes

SEND_QUEUE_FRAMES = 50  # 1 s of 20 ms caller frames; older audio is stale for a conversation and is dropped
LATENCY_SAMPLE = 50  # one caller frame in so many (one a second) is timed from send_audio() to the socket
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # OpenAI accepts 15 MiB events; replies with long transcripts stay below
MAX_RETRY_DELAY = 30.0  # seconds: a live caller is waiting, longer gaps are pointless
CLOSE_TIMEOUT = 2.0  # seconds the closing handshake may take before the TCP connection is dropped
ACK_INTERVAL = 0.25  # seconds between pings that acknowledge sent audio (at most this much is replayed twice)
ACK_TIMEOUT = 5.0  # seconds without a pong before a connection counts as dead
REFUSED_HTTP = frozenset({400, 401, 402, 403, 404, 405, 426, 429})  # the request itself is wrong or unpaid
RETRY_CLOSE = frozenset({1000, 1001, 1005, 1006, 1011, 1012, 1013, 1014})  # server went away or failed


# ---- what translate() returns besides AgentEvents ---------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """A message for the vendor (a reply to what it said: tool result, truncate, settings...)."""

    message: Message


@dataclass(frozen=True)
class Ready:
    """The session is configured: queued caller audio may now flow."""


@dataclass(frozen=True)
class VendorError:
    """The vendor reported an error. Before Ready it refuses the session; after, it is logged (fatal: ends it)."""

    message: str
    fatal: bool = False


@dataclass(frozen=True)
class Reconnect:
    """Move to a new connection now (Gemini goAway): close this one and reopen as after a drop."""

    reason: str


Action = AgentEvent | Send | Ready | VendorError | Reconnect


@dataclass(frozen=True)
class Endpoint:
    """Where to connect: URL, headers, subprotocols, and the secrets to redact from anything logged."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    subprotocols: Sequence[str] = ()
    secrets: Sequence[str] = ()


@dataclass(frozen=True)
class KeepAlive:
    """A message to send after `idle` seconds without sending anything (Deepgram's KeepAlive)."""

    idle: float
    message: Message


# ---- policy: pure functions -------------------------------------------------------------------------------

Verdict = Literal["refused", "retry"]


def classify(exc: BaseException) -> Verdict:
    """Whether a connect or connection failure is worth retrying.

    Refused: HTTP 4xx at the upgrade (bad key, unknown model, quota), a close code that blames the request
    (1002/1003/1007/1008/1009/1010, 4000-4999 application codes such as OpenAI's 4000 for the beta shape),
    an invalid URI, or an AgentRefused (vendor error event during the handshake).
    Retry: network errors, timeouts, 5xx, and closes of a server going away or failing (1000/1001/1006/1011...).
    """
    if isinstance(exc, AgentRefused | InvalidURI):
        return "refused"
    if isinstance(exc, InvalidStatus):
        return "refused" if exc.response.status_code in REFUSED_HTTP else "retry"
    if isinstance(exc, ConnectionClosed):
        code = close_code(exc)
        return "retry" if code is None or code in RETRY_CLOSE else "refused"
    return "retry"


def close_code(exc: ConnectionClosed) -> int | None:
    """The close code the server sent, or None when the connection just dropped."""
    return exc.rcvd.code if exc.rcvd is not None else None


def reconnect_delays(
    attempts: int, delay: float, cap: float = MAX_RETRY_DELAY, jitter: Callable[[], float] = random.random
) -> Iterator[float]:
    """Seconds to wait before each reconnect attempt: 0, then `delay` doubling up to `cap`, ±10 % jitter.

    The first retry is immediate because a caller is listening to silence; later ones back off so that a
    vendor outage is not hammered by every live call at once. Yields exactly `attempts` values.
    """
    for n in range(attempts):
        if n == 0:
            yield 0.0
            continue
        base = min(cap, delay * 2 ** (n - 1))
        yield base * (0.9 + 0.2 * jitter())


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every non-empty secret replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def describe(exc: BaseException) -> str:
    """A one-line account of a connect or connection failure, with the vendor's own words when it gave any."""
    if isinstance(exc, InvalidStatus):
        body = exc.response.body.decode("utf-8", "replace").strip()[:500] if exc.response.body else ""
        return f"HTTP {exc.response.status_code}" + (f": {_error_text(body)}" if body else "")
    if isinstance(exc, ConnectionClosed):
        frame = exc.rcvd
        if frame is None:
            ours = exc.sent  # we failed the connection (1009: a message beyond max_size, refused from its header)
            return f"connection failed by us ({ours.code}: {ours.reason})" if ours is not None and ours.code != 1000 \
                else "connection lost"
        return f"closed {frame.code}" + (f": {frame.reason}" if frame.reason else "")
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


def _error_text(body: str) -> str:
    """The `error.message` of a JSON error body (OpenAI, Azure, Google shapes), else the body itself."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return err["message"]
    if isinstance(err, str):
        return err
    return body


# ---- the send queue ---------------------------------------------------------------------------------------


class SendQueue:
    """Control messages (never dropped, sent first) and caller audio (bounded, oldest dropped and counted)."""

    def __init__(self, audio_limit: int = SEND_QUEUE_FRAMES) -> None:
        self.control: deque[Message] = deque()
        self.audio: deque[Message] = deque()
        self.audio_limit = audio_limit
        self.dropped_audio = 0
        self.wake = asyncio.Event()
        self.unacked: deque[tuple[int, Message]] = deque(maxlen=audio_limit)  # (number, audio) sent, not acked
        self.sent_audio = 0  # audio messages sent so far (numbers them)
        self.timed: tuple[Message, float] | None = None  # the sampled audio message and when it was queued

    def put_control(self, message: Message) -> None:
        self.control.append(message)
        self.wake.set()

    def put_audio(self, message: Message) -> None:
        if len(self.audio) >= self.audio_limit:
            dropped = self.audio.popleft()
            self.dropped_audio += 1
            if self.timed is not None and dropped is self.timed[0]:
                self.timed = None
        self.audio.append(message)
        self.wake.set()

    def sent(self, message: Message) -> None:
        """Audio that left on the socket: kept until a pong acknowledges it."""
        self.unacked.append((self.sent_audio, message))
        self.sent_audio += 1

    def acknowledge(self, upto: int) -> None:
        """The peer has everything numbered below `upto`."""
        while self.unacked and self.unacked[0][0] < upto:
            self.unacked.popleft()

    def replay_unacked(self) -> None:
        """Put unacknowledged audio back in front of the queue, for the next connection (bounded)."""
        self.audio.extendleft(message for _, message in reversed(self.unacked))
        self.unacked.clear()
        while len(self.audio) > self.audio_limit:
            self.audio.popleft()
            self.dropped_audio += 1
        if self.timed is not None and not any(m is self.timed[0] for m in self.audio):
            self.timed = None  # the sampled frame was dropped: sample afresh

    def pop(self) -> tuple[Message, bool] | None:
        """The next message and whether it is control, or None when both queues are empty."""
        if self.control:
            return self.control.popleft(), True
        if self.audio:
            return self.audio.popleft(), False
        self.wake.clear()
        return None


def _writable(ws: ClientConnection) -> bool:
    """Whether a message written now goes out in order with nothing to wait for (what `ws.send` would check)."""
    return (ws.protocol.state is State.OPEN and not ws.paused and ws.send_in_progress is None
            and not ws.transport.is_closing())


# ---- the session ------------------------------------------------------------------------------------------


class WsSession:
    """One vendor session over one websocket at a time, reconnected on drops. See the module docstring."""

    def __init__(self, agent: WsAgent, log: logging.LoggerAdapter, *, connect_timeout: float,
                 max_attempts: int, retry_delay: float, audio_limit: int = SEND_QUEUE_FRAMES) -> None:
        self.agent = agent
        self.log = log
        self.connect_timeout = connect_timeout
        self.max_attempts = max_attempts
        self.retry_delay = retry_delay
        self.queue = SendQueue(audio_limit)
        self.reconnects = 0
        self.malformed = 0  # vendor messages dropped because they could not be read
        self.audio_in = 0  # caller audio messages so far (one in LATENCY_SAMPLE is timed)
        self._events: asyncio.Queue[AgentEvent] = asyncio.Queue()
        self._ws: ClientConnection | None = None
        self._owner: asyncio.Task[None] | None = None
        self._closing = False
        self._close_code = 1000
        self._finished = False
        self._direct: ClientConnection | None = None  # the connection audio may be written to directly
        self._secrets: Sequence[str] = ()

    # -- public ------------------------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open and configure the first connection, then run it in the background.

        Raises:
            AgentRefused: the vendor refused, could not be reached, or did not get Ready in time.
        """
        try:
            self._ws = await self._open(resumed=False)
        except AgentRefused:
            raise
        except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
            raise AgentRefused(f"{self.agent.vendor}: {self._describe(exc)}") from None
        self._owner = asyncio.create_task(self._run(), name=f"{self.agent.vendor}-session")

    def send(self, message: Message) -> None:
        """Queue a control message (never dropped; kept across a reconnect)."""
        self.queue.put_control(message)

    def send_audio(self, message: Message) -> None:
        """Caller audio: written at once when nothing waits before it and the socket takes it (no task wake-up per
        frame); else queued, and when the vendor lags the oldest queued audio is dropped and counted."""
        self.audio_in += 1
        sampled = self.audio_in % LATENCY_SAMPLE == 0 and self.queue.timed is None  # one frame a second is timed
        t0 = asyncio.get_running_loop().time() if sampled else 0.0
        ws = self._direct
        if ws is not None and not self.queue.control and not self.queue.audio and _writable(ws):
            try:
                if isinstance(message, str):
                    ws.protocol.send_text(message.encode())
                else:
                    ws.protocol.send_binary(message)
                ws.send_data()
            except Exception:  # the state changed under us: the sender's path reports it, the audio waits
                self._queue_audio(message, sampled, t0)
                return
            self.queue.sent(message)
            if sampled:
                self._events.put_nowait(UplinkLatency(asyncio.get_running_loop().time() - t0))
            return
        self._queue_audio(message, sampled, t0)

    def _queue_audio(self, message: Message, sampled: bool, t0: float) -> None:
        self.queue.put_audio(message)
        if sampled:
            self.queue.timed = (message, t0)  # its latency is reported when the sender sends it

    async def events(self) -> AsyncIterator[AgentEvent]:
        """The agent's events, in order; ends after AgentClosed."""
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, AgentClosed):
                return

    async def aclose(self, code: int = 1000) -> None:
        """Close with `code` (1000 call over, 1001 going away) and stop every task. Idempotent."""
        self._closing = True
        self._close_code = code
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(code), CLOSE_TIMEOUT + 0.5)
        if self._owner is not None:
            owner, self._owner = self._owner, None
            owner.cancel()
            await asyncio.wait([owner])
            if not owner.cancelled() and owner.exception() is not None:
                self.log.error("! %s session failed: %r", self.agent.vendor, owner.exception())
            if self._ws is not None:  # a connection the owner opened while we were closing the previous one
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._ws.close(code), CLOSE_TIMEOUT + 0.5)
        self._finish(AgentClosed("closed by the bridge"))

    # -- connection ------------------------------------------------------------------------------------------

    async def _open(self, resumed: bool) -> ClientConnection:
        """Connect and configure until Ready, within the connect timeout; raises the failure as is."""
        ep = self.agent.endpoint()
        self._secrets = ep.secrets
        async with asyncio.timeout(self.connect_timeout):
            ws = await ws_connect(
                ep.url, additional_headers=dict(ep.headers), subprotocols=[Subprotocol(s) for s in ep.subprotocols]
                or None, open_timeout=None, close_timeout=CLOSE_TIMEOUT, max_size=MAX_MESSAGE_BYTES,
                compression=None,  # base64 audio hardly compresses; deflate only costs CPU and latency
            )
            try:
                with contextlib.suppress(ConnectionClosed):  # a refusal may already be waiting: read it below
                    for message in self.agent.on_open(resumed):
                        await ws.send(message)
                while not await self._handshake_step(ws, await ws.recv()):
                    pass
            except BaseException:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(1000), CLOSE_TIMEOUT)
                raise
        self.log.info("= %s connected%s", self.agent.vendor, " (resumed)" if resumed else "")
        return ws

    async def _handshake_step(self, ws: ClientConnection, raw: Message) -> bool:
        """Apply one message during the handshake; True once Ready."""
        ready = False
        for action in self._translate(raw):
            match action:
                case Ready():
                    ready = True
                case Send(message=message):
                    await ws.send(message)
                case VendorError(message=message):
                    raise AgentRefused(f"{self.agent.vendor}: {self._redact(message)}")
                case Reconnect():
                    pass  # not before Ready: a new connection would be no better
                case _:
                    self._events.put_nowait(action)
        return ready

    async def _run(self) -> None:
        """The owner task: serve the connection, reconnect on drops, end with AgentClosed."""
        try:
            while self._ws is not None:
                exc = await self._serve(self._ws)
                if self._closing or exc is None:
                    return
                self._ws = await self._reconnect(exc)
        finally:
            if not self._closing:
                self._finish(AgentClosed(f"{self.agent.vendor} session ended", error=True))

    async def _serve(self, ws: ClientConnection) -> ConnectionClosed | _Reconnect | None:
        """Run sender and receiver on one connection until it closes; return how it closed (None: fatal)."""
        self.queue.unacked.clear()  # what an earlier connection left was acknowledged by its closing handshake
        async with asyncio.TaskGroup() as tg:
            sender = tg.create_task(self._send_loop(ws))
            acker = tg.create_task(self._ack_loop(ws))
            self._direct = ws
            try:
                while True:
                    for action in self._translate(await ws.recv()):
                        self._apply(action)
            except ConnectionClosed as exc:
                self.queue.replay_unacked()
                return exc
            except _Reconnect as exc:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(1000), CLOSE_TIMEOUT)
                return exc
            except _Fatal as exc:
                self._finish(AgentClosed(str(exc), error=True))
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(1000), CLOSE_TIMEOUT)
                return None
            finally:
                self._direct = None
                sender.cancel()
                acker.cancel()

    async def _reconnect(self, exc: ConnectionClosed | _Reconnect) -> ClientConnection | None:
        """Try to reopen after a drop; None (with AgentClosed queued) when refused or exhausted."""
        why = self._describe(exc)
        if classify(exc) == "refused":
            self._finish(AgentClosed(f"{self.agent.vendor} {why}", error=True))
            return None
        self.log.warning("! %s %s; reconnecting", self.agent.vendor, why)
        for attempt, delay in enumerate(reconnect_delays(self.max_attempts, self.retry_delay), 1):
            await asyncio.sleep(delay)
            self.agent.on_reconnect()
            try:
                ws = await self._open_resumed()
            except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed, AgentRefused) as err:
                why = self._describe(err)
                self.log.warning("! %s reconnect %d/%d failed: %s", self.agent.vendor, attempt, self.max_attempts,
                                 why)
                if classify(err) == "refused":
                    break
                continue
            self.reconnects += 1
            self._events.put_nowait(AgentReconnected("goaway" if isinstance(exc, _Reconnect) else "dropped"))
            return ws
        self._finish(AgentClosed(f"{self.agent.vendor} lost: {why}", error=True))
        return None

    async def _open_resumed(self) -> ClientConnection:
        """Reopen after a drop; a refused resumption is retried afresh at once when the agent can."""
        try:
            return await self._open(resumed=True)
        except (InvalidHandshake, ConnectionClosed, AgentRefused) as err:
            if classify(err) != "refused" or not self.agent.on_resume_refused():
                raise
            self.log.warning("! %s refused to resume (%s); starting afresh", self.agent.vendor, self._describe(err))
            return await self._open(resumed=True)

    async def _send_loop(self, ws: ClientConnection) -> None:
        """Send queued messages in order, control first; a message that fails to send goes back in front."""
        keepalive = self.agent.keepalive
        while True:
            item = self.queue.pop()
            if item is None:
                if keepalive is None:
                    await self.queue.wake.wait()
                    continue
                try:
                    async with asyncio.timeout(keepalive.idle):
                        await self.queue.wake.wait()
                except TimeoutError:
                    await ws.send(keepalive.message)
                continue
            message, control = item
            try:
                await ws.send(message)
            except ConnectionClosed:  # the receiver sees the close too and decides what happens next
                (self.queue.control if control else self.queue.audio).appendleft(message)  # for the next socket
                return
            if not control:
                self.queue.sent(message)
                if self.queue.timed is not None and message is self.queue.timed[0]:
                    self._events.put_nowait(UplinkLatency(asyncio.get_running_loop().time() - self.queue.timed[1]))
                    self.queue.timed = None

    async def _ack_loop(self, ws: ClientConnection) -> None:
        """Ping every ACK_INTERVAL while audio is unacknowledged; a pong acknowledges what was sent before it."""
        while True:
            await asyncio.sleep(ACK_INTERVAL)
            if not self.queue.unacked:
                continue
            upto = self.queue.sent_audio
            try:
                pong = await ws.ping()
                async with asyncio.timeout(ACK_TIMEOUT):
                    await pong
            except ConnectionClosed:
                return
            except TimeoutError:
                self.log.warning("! %s no pong in %.0f s: connection dead", self.agent.vendor, ACK_TIMEOUT)
                ws.transport.abort()
                return
            self.queue.acknowledge(upto)

    # -- translation -----------------------------------------------------------------------------------------

    def _translate(self, raw: Message) -> list[Action]:
        try:
            return read_message(self.agent, raw)
        except VendorMessageError as exc:  # a malformed vendor message: logged, never fatal
            self.malformed += 1
            self.log.warning("! %s sent a message we cannot read: %s", self.agent.vendor, exc)
            return []

    def _apply(self, action: Action) -> None:
        match action:
            case Send(message=message):
                self.queue.put_control(message)
            case Ready():
                pass
            case VendorError(message=message, fatal=fatal):
                self.log.warning("! %s error: %s", self.agent.vendor, self._redact(message))
                if fatal:
                    raise _Fatal(f"{self.agent.vendor} error: {self._redact(message)}")
            case Reconnect(reason=reason):
                raise _Reconnect(reason)
            case _:
                self._events.put_nowait(action)

    def _finish(self, event: AgentClosed) -> None:
        if not self._finished:
            self._finished = True
            self._events.put_nowait(event)

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, AgentRefused):
            return str(exc)
        return self._redact(describe(exc))

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)


class VendorMessageError(ParseError):
    """A vendor message that cannot be read (not JSON, a field missing or of the wrong type): dropped."""


def read_message(agent: WsAgent, raw: Message) -> list[Action]:
    """`agent.translate(raw)` as a list; the ways a malformed message fails become VendorMessageError.

    A vendor module reads its JSON with plain subscripts and so fails with ValueError (bad JSON, bad base64,
    bad UTF-8), RecursionError (JSON nested deeper than the interpreter's limit), KeyError (a missing field),
    TypeError or AttributeError (a field of the wrong type). Anything else is a bug in the module: it propagates.
    """
    try:
        return list(agent.translate(raw))
    except (ValueError, RecursionError, KeyError, TypeError, AttributeError) as exc:
        raise VendorMessageError(f"{type(exc).__name__}: {str(exc)[:120]}") from None


class _Fatal(Exception):
    """A vendor error after which the session cannot go on."""


class _Reconnect(Exception):
    """The vendor asked us to move to a new connection (classified retryable)."""


# ---- the base class vendor modules extend -----------------------------------------------------------------


class WsAgent(Agent):
    """An Agent over one vendor websocket; subclasses implement the translation hooks only."""

    vendor = "vendor"  # name used in logs and errors
    keepalive: KeepAlive | None = None

    def __init__(self, ctx: AgentContext) -> None:
        super().__init__(ctx)
        s = ctx.settings
        self.session = WsSession(
            self, ctx.log, connect_timeout=s.ai_connection_timeout_sec,
            max_attempts=s.max_reconnect_attempts, retry_delay=s.reconnect_delay_sec,
        )

    # -- hooks -----------------------------------------------------------------------------------------------

    @abstractmethod
    def endpoint(self) -> Endpoint:
        """Where and how to connect (called before every connection attempt)."""

    @abstractmethod
    def on_open(self, resumed: bool) -> Iterable[Message]:
        """Messages to send as soon as a socket opens; `resumed` after a reconnect (no second greeting)."""

    @abstractmethod
    def translate(self, message: Message) -> Iterable[Action]:
        """One vendor message into actions. Raise ValueError/KeyError/TypeError/AttributeError on garbage (see
        read_message: logged, counted, skipped)."""

    @abstractmethod
    def audio_message(self, data: bytes) -> Message:
        """Caller audio (in input_format) as the vendor's message."""

    def on_reconnect(self) -> None:
        """Called before each reconnect attempt: reset per-connection state (in-flight item ids, ...)."""
        return None

    def on_resume_refused(self) -> bool:
        """The vendor refused to resume the session: True when a fresh open is worth trying at once."""
        return False

    # -- the Agent API ---------------------------------------------------------------------------------------

    async def connect(self) -> None:
        await self.session.connect()

    def send_audio(self, data: bytes) -> None:
        self.session.send_audio(self.audio_message(data))

    def send(self, message: Message) -> None:
        """Queue a control message for the vendor."""
        self.session.send(message)

    def events(self) -> AsyncIterator[AgentEvent]:
        return self.session.events()

    async def aclose(self) -> None:
        await self.session.aclose(1001 if self.ctx.draining() else 1000)  # RFC 6455 §7.4.1: 1001 going away
