"""A fake OpenAI Realtime (GA) server, also serving Azure's GA path, built from the published protocol.

It is a real aiohttp app on 127.0.0.1. What it enforces, from the wire contract (docs/vendors.md §1, §5):
  * auth: `Authorization: Bearer <key>` (OpenAI) or `api-key` header/query (Azure); a wrong key gets HTTP 401
    with OpenAI's JSON error body (key masked the way OpenAI masks it); Azure's GA path refuses `api-version`;
  * an `OpenAI-Beta` header is accepted at the upgrade, then closed with 4000
    `invalid_request_error.beta_api_shape_disabled`, as the real service does since 2026-05;
  * an unknown model gets an `error` event (`model_not_found`) and a close;
  * every client message is checked: JSON, a known GA event type, the hand-written GA rules below, and the
    official `openai` package's typed models plus an undeclared-key walker (models allow extras). A
    violation is answered with an `error` event, as the real server does, and recorded in `violations`;
  * `session.update` needs `session.type`; flat beta keys (`input_audio_format`, `voice`, `modalities`, ...)
    are rejected; audio formats must be audio/pcmu, audio/pcma or audio/pcm at 24000;
  * one active response per conversation (`conversation_already_has_active_response`);
  * `conversation.item.truncate` must name an assistant audio item and not exceed the audio sent for it;
  * `function_call_output` must answer a call_id the server issued.
Everything it sends uses GA event names only and is itself checked against the openai server models.
Audio goes out faster than real time (`speed`) in uneven chunks. Tests drive it per connection with
`turn()`, `speech_started()`, `respond()`, `call_tool()`, `error()`, `drop()`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Union

import pydantic
from aiohttp import WSMsgType, web
from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from pydantic import Field, TypeAdapter

from tests.fakes.ws_vendor import WsConnection, unknown_keys

CLIENT_EVENTS = TypeAdapter(Annotated[Union[RealtimeClientEvent], Field(discriminator="type")])  # noqa: UP007
SERVER_EVENTS = TypeAdapter(Annotated[Union[RealtimeServerEvent], Field(discriminator="type")])  # noqa: UP007

MODELS = ("gpt-realtime", "gpt-realtime-mini", "gpt-realtime-1.5", "gpt-realtime-2", "gpt-realtime-2.1",
          "gpt-realtime-2.1-mini")
BETA_SESSION_KEYS = ("input_audio_format", "output_audio_format", "voice", "turn_detection",
                     "input_audio_transcription", "modalities")
BYTES_PER_MS = {"audio/pcmu": 8, "audio/pcma": 8, "audio/pcm": 48}
CHUNKS = (480, 1200, 160, 2400, 800, 320, 1920)  # uneven delta sizes in bytes, like the real service's
ATOMIC = ("format", "turn_detection", "transcription", "noise_reduction")  # replaced whole by session.update
BETA_CLOSE = (4000, "invalid_request_error.beta_api_shape_disabled")


def mask(key: str) -> str:
    """The way OpenAI shows a wrong key in its 401 body: a prefix, stars, the last four characters."""
    return f"{key[:3]}{'*' * max(len(key) - 7, 0)}{key[-4:]}" if len(key) > 8 else "***"


class Violation(Exception):
    """A client message the real server would reject."""

    def __init__(self, message: str, code: str = "invalid_value", param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.param = param


@dataclass
class Item:
    id: str
    role: str
    type: str = "message"
    audio_bytes: int = 0  # assistant audio sent for it
    truncated_ms: int | None = None


@dataclass
class Response:
    id: str
    task: asyncio.Task | None = None
    output: list[dict] = field(default_factory=list)
    done: bool = False


class Session(WsConnection):
    """One client connection: its config, what it sent, and the test's commands."""

    def __init__(self, fake: FakeRealtime, ws: web.WebSocketResponse, request: web.Request, model: str) -> None:
        self.fake = fake
        self.ws = ws
        self.request = request
        self.headers = dict(request.headers)
        self.model = model
        self.ids = itertools.count(1)
        self.config: dict[str, Any] = {
            "type": "realtime", "model": model, "output_modalities": ["audio"], "instructions": "", "tools": [],
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                                "turn_detection": {"type": "server_vad", "create_response": True,
                                                   "interrupt_response": True}},
                      "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"}}}
        self.received: list[dict] = []  # every client event, parsed
        self.audio = bytearray()  # caller audio, in order
        self.appends: list[tuple[float, bytes]] = []  # (loop time, chunk) per input_audio_buffer.append
        self.items: dict[str, Item] = {}
        self.calls: dict[str, str] = {}  # call_id -> tool name
        self.tool_outputs: list[dict] = []
        self.truncates: list[dict] = []
        self.response: Response | None = None
        self.responses: list[Response] = []
        self.sent_log: list[tuple[float, dict]] = []  # (loop time, event) for latency measurements
        self.updated = asyncio.Event()
        self.closed = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self.rx_time = 0.0  # loop time the message being handled arrived

    # -- sending -----------------------------------------------------------------------------------------------

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self.ids):04d}"

    async def send(self, event: dict) -> None:
        event = {"event_id": self.new_id("event"), **event}
        if self.fake.check_server and event["type"] not in ("session.created", "session.updated"):
            SERVER_EVENTS.validate_python(event)  # the fake itself speaks GA only
        self.sent_log.append((asyncio.get_running_loop().time(), event))
        if not self.ws.closed:
            await self.ws.send_str(json.dumps(event))

    async def error(self, message: str, code: str = "invalid_value", param: str | None = None,
                    type_: str = "invalid_request_error", event_id: str | None = None) -> None:
        """Send an `error` event (the session stays open, as with most real errors)."""
        await self.send({"type": "error", "error": {"type": type_, "code": code, "message": message,
                                                     "param": param, "event_id": event_id}})

    # -- test commands -----------------------------------------------------------------------------------------

    def respond(self, audio: bytes, transcript: str = "", tool: tuple[str, dict] | None = None) -> Response:
        """Start a response: audio (in the session's output format), then optionally a function call."""
        if self.response is not None and not self.response.done:
            raise RuntimeError("a response is already active")
        assert self._tg is not None
        resp = Response(self.new_id("resp"))
        self.response = resp
        self.responses.append(resp)
        resp.task = self._tg.create_task(self._stream(resp, audio, transcript, tool))
        return resp

    def call_tool(self, name: str, arguments: dict, say: bytes = b"", transcript: str = "") -> Response:
        """A response that (optionally) says something, then calls `name`."""
        return self.respond(say, transcript, (name, arguments))

    async def speech_started(self) -> None:
        """Server VAD heard the caller: speech_started, and with interrupt_response the active reply is cancelled."""
        await self.send({"type": "input_audio_buffer.speech_started", "audio_start_ms": len(self.audio) // 8,
                         "item_id": self.new_id("item")})
        if self._turn_detection().get("interrupt_response") and self.response is not None and not self.response.done:
            await self._cancel(self.response, "turn_detected")

    async def turn(self, caller_text: str, reply: bytes = b"", reply_text: str = "") -> Response | None:
        """A whole caller turn: speech started/stopped, committed, transcribed; then the auto response."""
        await self.speech_started()
        user = Item(self.new_id("item"), "user")
        self.items[user.id] = user
        ms = len(self.audio) // 8
        await self.send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": ms, "item_id": user.id})
        await self.send({"type": "input_audio_buffer.committed", "item_id": user.id, "previous_item_id": None})
        if self._transcribes():
            await self.send({"type": "conversation.item.input_audio_transcription.completed", "item_id": user.id,
                             "content_index": 0, "transcript": caller_text,
                             "usage": {"type": "duration", "seconds": ms / 1000}})
        return self.respond(reply, reply_text) if self._turn_detection().get("create_response") and reply else None

    def _transcribes(self) -> bool:
        """Caller audio is transcribed only when the session asked for a transcription model."""
        return bool(self.config["audio"]["input"].get("transcription"))

    def _turn_detection(self) -> dict:
        return self.config["audio"]["input"].get("turn_detection") or {}

    # -- streaming ---------------------------------------------------------------------------------------------

    def _bytes_per_ms(self, key: str) -> int:
        return BYTES_PER_MS[self.config["audio"][key]["format"]["type"]]

    async def _stream(self, resp: Response, audio: bytes, transcript: str, tool: tuple[str, dict] | None) -> None:
        await self.send({"type": "response.created", "response": self._response(resp, "in_progress")})
        index = 0
        if audio:
            await self._stream_audio(resp, index, audio, transcript)
            index += 1
        if tool:
            await self._stream_tool(resp, index, *tool)
        await self._finish(resp, "completed")

    async def _stream_audio(self, resp: Response, index: int, audio: bytes, transcript: str) -> None:
        item = Item(self.new_id("item"), "assistant")
        self.items[item.id] = item
        base = {"response_id": resp.id, "item_id": item.id, "output_index": index, "content_index": 0}
        shell = {"id": item.id, "object": "realtime.item", "type": "message", "role": "assistant",
                 "status": "in_progress", "content": []}
        await self.send({"type": "response.output_item.added", "response_id": resp.id, "output_index": index,
                         "item": shell})
        await self.send({"type": "conversation.item.added", "previous_item_id": None, "item": shell})
        await self.send({"type": "response.content_part.added", **base,
                         "part": {"type": "audio", "transcript": ""}})
        per_ms = self._bytes_per_ms("output")
        sizes = itertools.cycle(self.fake.chunks)
        loop = asyncio.get_running_loop()
        start, pos = loop.time(), 0
        while pos < len(audio):
            chunk = audio[pos: pos + next(sizes) // 8 * per_ms]
            await self.send({"type": "response.output_audio.delta", **base,
                             "delta": base64.b64encode(chunk).decode()})
            pos += len(chunk)
            item.audio_bytes = pos
            due = start + pos / per_ms / 1000 / self.fake.speed
            await asyncio.sleep(max(0.0, due - loop.time()))
        words = transcript.split(" ")
        for word in words if transcript else ():
            await self.send({"type": "response.output_audio_transcript.delta", **base, "delta": word + " "})
        await self.send({"type": "response.output_audio.done", **base})
        await self.send({"type": "response.output_audio_transcript.done", **base, "transcript": transcript})
        done = {**shell, "status": "completed", "content": [{"type": "output_audio", "transcript": transcript}]}
        await self.send({"type": "response.content_part.done", **base,
                         "part": {"type": "audio", "transcript": transcript}})
        await self.send({"type": "response.output_item.done", "response_id": resp.id, "output_index": index,
                         "item": done})
        await self.send({"type": "conversation.item.done", "previous_item_id": None, "item": done})
        resp.output.append(done)

    async def _stream_tool(self, resp: Response, index: int, name: str, arguments: dict) -> None:
        item_id, call_id = self.new_id("item"), self.new_id("call")
        self.items[item_id] = Item(item_id, "assistant", "function_call")
        self.calls[call_id] = name
        args = json.dumps(arguments)
        item = {"id": item_id, "object": "realtime.item", "type": "function_call", "status": "in_progress",
                "call_id": call_id, "name": name, "arguments": ""}
        await self.send({"type": "response.output_item.added", "response_id": resp.id, "output_index": index,
                         "item": item})
        await self.send({"type": "conversation.item.added", "previous_item_id": None, "item": item})
        await self.send({"type": "response.function_call_arguments.delta", "response_id": resp.id,
                         "item_id": item_id, "output_index": index, "call_id": call_id, "delta": args})
        await self.send({"type": "response.function_call_arguments.done", "response_id": resp.id,
                         "item_id": item_id, "output_index": index, "call_id": call_id, "name": name,
                         "arguments": args})
        done = {**item, "status": "completed", "arguments": args}
        await self.send({"type": "response.output_item.done", "response_id": resp.id, "output_index": index,
                         "item": done})
        await self.send({"type": "conversation.item.done", "previous_item_id": None, "item": done})
        resp.output.append(done)

    def _response(self, resp: Response, status: str, reason: str | None = None) -> dict:
        details = {"type": status, "reason": reason} if reason else None
        return {"id": resp.id, "object": "realtime.response", "status": status, "status_details": details,
                "output": resp.output, "conversation_id": "conv_1", "output_modalities": ["audio"]}

    async def _finish(self, resp: Response, status: str, reason: str | None = None) -> None:
        resp.done = True
        await self.send({"type": "response.done", "response": self._response(resp, status, reason)})

    async def _cancel(self, resp: Response, reason: str) -> None:
        if resp.task is not None and resp.task is not asyncio.current_task():
            resp.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await resp.task
        if not resp.done:
            await self._finish(resp, "cancelled", reason)

    # -- receiving ---------------------------------------------------------------------------------------------

    async def handle(self, raw: str) -> None:
        try:
            event = self._check(raw)
        except Violation as v:
            self.fake.violations.append(f"{v.code}: {v}")
            await self.error(str(v), v.code, v.param)
            return
        self.received.append(event)
        handler = getattr(self, "_on_" + event["type"].replace(".", "_"), None)
        if handler is not None:
            await handler(event)

    def _check(self, raw: str) -> dict:
        try:
            event = json.loads(raw)
        except ValueError:
            raise Violation("We could not parse the JSON body of your request.", "invalid_json") from None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise Violation("Missing required parameter: 'type'.", "missing_required_parameter", "type")
        if not self.fake.check_audio and event["type"] == "input_audio_buffer.append" and event.keys() == {
                "type", "audio"}:
            return event
        try:
            model = CLIENT_EVENTS.validate_python(event)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            raise Violation(f"Invalid {event['type']}: {first['msg']} at {first['loc']}", "invalid_value") from None
        extra = list(unknown_keys(model))
        if extra:
            raise Violation(f"Unknown parameter: '{extra[0]}'.", "unknown_parameter", extra[0])
        return event

    async def _on_session_update(self, event: dict) -> None:
        s = event["session"]
        if s.get("type") != "realtime":
            return await self._reject(Violation("Missing required parameter: 'session.type'.",
                                                "missing_required_parameter", "session.type"))
        for key in BETA_SESSION_KEYS:
            if key in s:
                return await self._reject(Violation(f"Unknown parameter: 'session.{key}'.", "unknown_parameter"))
        for side in ("input", "output"):
            fmt = ((s.get("audio") or {}).get(side) or {}).get("format")
            if fmt is not None and not _format_ok(fmt, self.fake.formats):
                return await self._reject(Violation(f"Invalid audio format for {side}: {fmt}", "invalid_value"))
        transcriber = (((s.get("audio") or {}).get("input") or {}).get("transcription") or {}).get("model")
        if self.fake.azure and transcriber is not None and transcriber not in self.fake.deployments:
            return await self._reject(Violation(f"Transcription model '{transcriber}' is not a deployment of this "
                                                "resource.", "invalid_value", "session.audio.input.transcription"))
        _merge(self.config, s)
        await self.send({"type": "session.updated", "session": self.config})
        self.updated.set()

    async def _reject(self, v: Violation) -> None:
        self.fake.violations.append(f"{v.code}: {v}")
        await self.error(str(v), v.code, v.param)

    async def _on_input_audio_buffer_append(self, event: dict) -> None:
        try:
            chunk = base64.b64decode(event["audio"], validate=True)
        except ValueError:
            return await self._reject(Violation("Invalid 'audio'. Expected base64-encoded audio bytes."))
        if self._bytes_per_ms("input") == 48 and len(chunk) % 2:
            return await self._reject(Violation("Invalid 'audio': odd byte count for 16-bit PCM."))
        self.audio += chunk
        self.appends.append((self.rx_time, chunk))

    async def _on_response_create(self, event: dict) -> None:
        if self.response is not None and not self.response.done:
            await self.error(
                f"Conversation already has an active response in progress: {self.response.id}. Wait until the "
                "response is finished before creating a new one.", "conversation_already_has_active_response")
            return
        self.respond(self.fake.reply_audio, self.fake.reply_text)

    async def _on_response_cancel(self, event: dict) -> None:
        if self.response is None or self.response.done:
            await self.error("Cancellation failed: no active response found", "response_cancel_not_active")
            return
        await self._cancel(self.response, "client_cancelled")

    async def _on_conversation_item_truncate(self, event: dict) -> None:
        item = self.items.get(event["item_id"])
        if item is None or item.role != "assistant" or item.type != "message":
            return await self._reject(Violation(f"Invalid 'item_id': {event['item_id']} is not an assistant "
                                                "audio item.", "invalid_value", "item_id"))
        ms, have = event["audio_end_ms"], item.audio_bytes // self._bytes_per_ms("output")
        if event["content_index"] != 0 or ms < 0 or ms > have:
            return await self._reject(Violation(f"Audio content of {have}ms is already shorter than {ms}ms",
                                                "invalid_value", "audio_end_ms"))
        item.truncated_ms = ms
        self.truncates.append(event)
        await self.send({"type": "conversation.item.truncated", "item_id": item.id, "content_index": 0,
                         "audio_end_ms": ms})

    async def _on_conversation_item_create(self, event: dict) -> None:
        item = dict(event["item"])
        if item.get("type") == "function_call_output":
            if item.get("call_id") not in self.calls:
                return await self._reject(Violation(f"Tool call ID '{item.get('call_id')}' not found in "
                                                    "conversation.", "invalid_tool_call_id", "item.call_id"))
            self.tool_outputs.append(item)
        item_id = item.get("id") or self.new_id("item")
        self.items[item_id] = Item(item_id, item.get("role", "user"), item["type"])
        item.update(id=item_id, object="realtime.item", status="completed")
        await self.send({"type": "conversation.item.added", "previous_item_id": None, "item": item})
        await self.send({"type": "conversation.item.done", "previous_item_id": None, "item": item})

    def hello(self) -> dict:
        """The first server event of a connection."""
        return {"type": "session.created", "session": {**self.config, "id": "sess_1", "object": "realtime.session",
                                                       "expires_at": 2000000000}}

    async def run(self) -> None:
        await self.send(self.hello())
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                async for msg in self.ws:
                    if msg.type == WSMsgType.TEXT:
                        self.rx_time = asyncio.get_running_loop().time()  # before any checking, for latency
                        await self.handle(msg.data)
                    elif msg.type == WSMsgType.BINARY:
                        await self._reject(Violation("Binary frames are not supported; send JSON text."))
            finally:
                for resp in self.responses:
                    if resp.task is not None:
                        resp.task.cancel()
                self.closed.set()


def _format_ok(fmt: Any, formats: tuple[str, ...] = tuple(BYTES_PER_MS)) -> bool:
    if not isinstance(fmt, dict) or fmt.get("type") not in formats:
        return False
    if fmt["type"] == "audio/pcm":
        return fmt.get("rate") == 24000
    return "rate" not in fmt


def _merge(into: dict, update: dict) -> None:
    for key, value in update.items():
        if key not in ATOMIC and isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


class FakeRealtime:
    """The fake service. `await start()` returns its ws:// base URL; `sessions` lists the connections.

    `formats` narrows the audio formats accepted: ("audio/pcm",) is a gateway that carries PCM16 only.
    """

    session_class: type[Session] = Session
    models: tuple[str, ...] = MODELS

    def __init__(self, api_key: str = "sk-test-0123456789", *, azure: bool = False,
                 deployments: tuple[str, ...] = ("my-realtime",), speed: float = 4.0,
                 reply_audio: bytes = b"", reply_text: str = "", check_server: bool = True, check_audio: bool = True,
                 chunks: tuple[int, ...] = CHUNKS, formats: tuple[str, ...] = tuple(BYTES_PER_MS)) -> None:
        self.api_key = api_key
        self.formats = formats
        self.azure = azure
        self.deployments = deployments
        self.speed = speed  # how much faster than real time audio is streamed
        self.chunks = chunks  # delta sizes in ms x 8 (bytes of G.711; cycled)
        self.reply_audio = reply_audio  # what a client's response.create gets (the greeting)
        self.reply_text = reply_text
        self.check_server = check_server
        self.check_audio = check_audio  # False (load benches): appends skip the typed-model check, not the JSON/base64
        self.refuse_with: dict | None = None  # an `error` payload sent at connect, then close (quota, ...)
        self.sessions: list[Session] = []
        self.violations: list[str] = []
        self.beta_rejections = 0
        self.http_refusals = 0
        self._new = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.app = web.Application()
        self.app.router.add_get("/openai/v1/realtime" if azure else "/v1/realtime", self._handler)

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}" if self.azure else f"ws://127.0.0.1:{port}/v1/realtime"

    async def __aenter__(self) -> FakeRealtime:
        self.url = await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        for s in self.sessions:
            with contextlib.suppress(Exception):
                await s.ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()

    async def session(self, n: int = 1, timeout: float = 5.0) -> Session:
        """The n-th connection (1-based), waiting for it to be configured."""
        async with asyncio.timeout(timeout):
            while len(self.sessions) < n:
                self._new.clear()
                await self._new.wait()
            await self.sessions[n - 1].updated.wait()
        return self.sessions[n - 1]

    def _unauthorized(self, key: str) -> web.Response:
        self.http_refusals += 1
        message = (f"Incorrect API key provided: {mask(key)}. You can find your API key at "
                   "https://platform.openai.com/account/api-keys." if key else
                   "You didn't provide an API key.")
        return web.json_response({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                             "code": "invalid_api_key"}}, status=401)

    def _auth(self, request: web.Request) -> web.Response | None:
        if self.azure:
            if "api-version" in request.query:  # the GA path refuses it (Azure migration guide)
                self.http_refusals += 1
                return web.json_response({"error": {"code": "401", "message": "api-version is not allowed on "
                                                    "the v1 path"}}, status=401)
            key = request.headers.get("api-key") or request.query.get("api-key", "")
        else:
            auth = request.headers.get("Authorization", "")
            key = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""
        return None if key == self.api_key else self._unauthorized(key)

    async def _handler(self, request: web.Request) -> web.StreamResponse:
        if (refusal := self._auth(request)) is not None:
            return refusal
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        if "OpenAI-Beta" in request.headers:
            self.beta_rejections += 1
            await ws.close(code=BETA_CLOSE[0], message=BETA_CLOSE[1].encode())
            return ws
        model = request.query.get("model", "")
        known = self.deployments if self.azure else self.models
        session = self.session_class(self, ws, request, model)
        if model not in known or self.refuse_with is not None:
            error = self.refuse_with or {"type": "invalid_request_error", "code": "model_not_found",
                                         "message": f"The model '{model}' does not exist or you do not have "
                                                    "access to it.", "param": None, "event_id": None}
            await session.send({"type": "error", "error": error})
            await ws.close(code=1008, message=b"session refused")
            return ws
        self.sessions.append(session)
        self._new.set()
        await session.run()
        return ws
