"""A fake Deepgram Voice Agent V1 server, built from the published protocol (vendors.md §2, §4.3).

Flow as Deepgram documents it: `Authorization: Token <key>` (or Bearer, or the ["token", key] subprotocol),
else HTTP 401; `Welcome` on connect; the first client message must be `Settings` (checked field by field and,
when deepgram-sdk is installed, against AgentV1Settings with no undeclared keys), answered `SettingsApplied`;
audio both ways as binary frames; `Error` for what the real service refuses (audio or messages before Settings,
a second Settings, unknown types, a FunctionCallResponse for no pending call, idle without KeepAlive).
Test commands: speak (uneven chunks, faster than real time, then AgentAudioDone), barge_in, function_call,
error, warning, drop (TCP abort) and close.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import random
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.ws_vendor import FakeServer, FakeVendor, WsConnection, uneven_chunks, unknown_keys, wait_for

INPUT_ENCODINGS = {"linear16", "linear32", "flac", "alaw", "mulaw", "amr-nb", "amr-wb", "opus", "ogg-opus", "speex",
                   "g729"}
OUTPUT_ENCODINGS = {"linear16", "mulaw", "alaw", "mp3", "opus", "flac", "aac"}
CONTAINERS = {"none", "wav", "ogg"}
THINK_PROVIDERS = {"open_ai", "anthropic", "google", "groq", "aws_bedrock", "deepgram"}
CLIENT_TYPES = {"Settings", "KeepAlive", "InjectUserMessage", "InjectAgentMessage", "FunctionCallResponse",
                "UpdatePrompt", "UpdateSpeak", "UpdateThink", "UpdateListen"}
GREETING_BYTE = 0x11  # the fake's greeting speech is a run of this μ-law byte, so a test can recognise it


def sdk_check(message: dict[str, Any]) -> list[str]:
    """Problems the deepgram-sdk models find in a client message ([] when the SDK is not installed)."""
    try:
        from deepgram.agent.v1 import types as dg
    except ImportError:
        return []
    import pydantic

    models = {"Settings": dg.AgentV1Settings, "KeepAlive": dg.AgentV1KeepAlive,
              "InjectUserMessage": dg.AgentV1InjectUserMessage, "InjectAgentMessage": dg.AgentV1InjectAgentMessage,
              "FunctionCallResponse": dg.AgentV1SendFunctionCallResponse, "UpdatePrompt": dg.AgentV1UpdatePrompt}
    model = models.get(message.get("type", ""))
    if model is None:
        return []
    try:
        parsed = model.model_validate(message)
    except pydantic.ValidationError as exc:
        return [f"sdk: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}"]
    return [f"sdk: undeclared key {k}" for k in unknown_keys(parsed)]


@functools.cache
def _server_events() -> Any:
    """deepgram-sdk's server-event union (V1SocketClientResponse) as a TypeAdapter, or None without the SDK."""
    try:
        import pydantic

        with warnings.catch_warnings():  # the SDK's socket client imports the deprecated websockets.legacy
            warnings.simplefilter("ignore", DeprecationWarning)
            from deepgram.agent.v1.socket_client import V1SocketClientResponse
    except ImportError:
        return None
    return pydantic.TypeAdapter(V1SocketClientResponse)


def sdk_server_check(message: dict[str, Any]) -> str | None:
    """What deepgram-sdk's server-event union rejects in a message the fake sends (None when fine)."""
    import pydantic

    adapter = _server_events()
    try:
        if adapter is not None:
            adapter.validate_python(message)
    except pydantic.ValidationError as exc:
        return str(exc).splitlines()[0]
    return None


def check_settings(s: dict[str, Any]) -> list[str]:
    """The Settings rules of vendors.md §2.2 that the SDK's permissive types let through."""
    problems = sdk_check(s)
    audio, agent = s.get("audio"), s.get("agent")
    if not isinstance(audio, dict) or not isinstance(agent, dict):
        return [*problems, "audio and agent objects are required"]
    for side, encodings in (("input", INPUT_ENCODINGS), ("output", OUTPUT_ENCODINGS)):
        a = audio.get(side, {})
        if a.get("encoding") not in encodings:
            problems.append(f"audio.{side}.encoding {a.get('encoding')!r} unknown")
        if type(a.get("sample_rate")) is not int:
            problems.append(f"audio.{side}.sample_rate must be an integer")
    if audio.get("output", {}).get("container", "none") not in CONTAINERS:
        problems.append("audio.output.container unknown")
    if agent.get("think", {}).get("provider", {}).get("type") not in THINK_PROVIDERS:
        problems.append("agent.think.provider.type unknown")
    if not agent.get("speak", {}).get("provider", {}).get("model"):
        problems.append("agent.speak.provider.model missing")
    if not agent.get("listen", {}).get("provider", {}).get("model"):
        problems.append("agent.listen.provider.model missing")
    for fn in agent.get("think", {}).get("functions", []):
        if not fn.get("name") or not isinstance(fn.get("parameters", {}), dict):
            problems.append(f"function {fn!r} needs a name and object parameters")
    return problems


@dataclass
class DeepgramConnection(WsConnection):
    """One accepted websocket: what the client sent, and commands a test gives the server."""

    ws: web.WebSocketResponse
    request: web.Request
    server: FakeDeepgram
    settings: dict[str, Any] | None = None
    applied: asyncio.Event = field(default_factory=asyncio.Event)
    audio: bytearray = field(default_factory=bytearray)  # caller audio received, in order
    audio_frames: int = 0
    audio_times: list[float] = field(default_factory=list)  # loop time each binary frame arrived
    messages: list[dict[str, Any]] = field(default_factory=list)  # client JSON messages, in order
    keepalives: int = 0
    responses: dict[str, dict[str, Any]] = field(default_factory=dict)  # FunctionCallResponse by id
    pending: dict[str, str] = field(default_factory=dict)  # function call id -> name, awaiting a response
    errors_sent: list[str] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    # -- commands -----------------------------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        problem = sdk_server_check(message)
        assert problem is None, f"the fake itself sent an invalid message: {problem}"
        await self.ws.send_str(json.dumps(message))

    async def speak(self, audio: bytes, text: str = "", *, rng: random.Random | None = None,
                    done: bool = True) -> None:
        """Agent speech: AgentStartedSpeaking, the transcript, uneven binary chunks fast, AgentAudioDone."""
        rng = rng or random.Random(7)
        await self.send({"type": "AgentThinking", "content": ""})
        await self.send({"type": "AgentStartedSpeaking", "total_latency": 0.4, "tts_latency": 0.1,
                         "ttt_latency": 0.3})
        if text:
            await self.send({"type": "ConversationText", "role": "assistant", "content": text})
        for chunk in uneven_chunks(audio, rng, 80, 2400):
            await self.ws.send_bytes(chunk)
            await asyncio.sleep(0)  # much faster than real time, like Deepgram's TTS stream
        if done:
            await self.send({"type": "AgentAudioDone"})

    async def user_said(self, text: str) -> None:
        await self.send({"type": "ConversationText", "role": "user", "content": text})

    async def barge_in(self) -> None:
        await self.send({"type": "UserStartedSpeaking"})

    async def function_call(self, name: str, arguments: dict[str, Any], client_side: bool = True) -> str:
        """Ask the client to run a function; returns its id (answer expected in `responses`)."""
        fid = f"fc_{next(self._ids)}"
        if client_side:
            self.pending[fid] = name
        await self.send({"type": "FunctionCallRequest", "functions": [
            {"id": fid, "name": name, "arguments": json.dumps(arguments), "client_side": client_side}]})
        return fid

    @property
    def tool_answers(self) -> dict[str, Any]:
        """The client's FunctionCallResponse contents by function call id, parsed."""
        return {fid: json.loads(response["content"]) for fid, response in self.responses.items()}

    async def error(self, code: str, description: str) -> None:
        self.errors_sent.append(code)
        await self.send({"type": "Error", "code": code, "description": description})

    async def warning(self, code: str, description: str) -> None:
        await self.send({"type": "Warning", "code": code, "description": description})

    # -- protocol -----------------------------------------------------------------------------------------

    async def refuse(self, code: str, description: str) -> None:
        """What Deepgram does with a client message it cannot accept: Error, then close."""
        self.server.violations.append(f"{code}: {description}")
        await self.error(code, description)
        await self.ws.close(code=1008, message=code.encode())

    async def on_binary(self, data: bytes) -> None:
        if not self.applied.is_set():
            await self.refuse("NON_SETTINGS_MESSAGE_BEFORE_SETTINGS", "audio before SettingsApplied")
            return
        self.audio.extend(data)
        self.audio_frames += 1
        self.audio_times.append(asyncio.get_running_loop().time())

    async def on_text(self, raw: str) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            await self.refuse("UNPARSABLE_CLIENT_MESSAGE", "not JSON")
            return
        self.messages.append(message)
        kind = message.get("type")
        if kind not in CLIENT_TYPES:
            await self.refuse("UNPARSABLE_CLIENT_MESSAGE", f"unknown type {kind!r}")
        elif kind == "Settings":
            await self.on_settings(message)
        elif self.settings is None:
            await self.refuse("NON_SETTINGS_MESSAGE_BEFORE_SETTINGS", f"{kind} before Settings")
        elif problems := sdk_check(message):
            await self.refuse("UNPARSABLE_CLIENT_MESSAGE", "; ".join(problems))
        elif kind == "KeepAlive":
            self.keepalives += 1
        elif kind == "FunctionCallResponse":
            await self.on_function_response(message)

    async def on_settings(self, message: dict[str, Any]) -> None:
        if self.settings is not None:
            await self.refuse("SETTINGS_ALREADY_APPLIED", "Settings sent twice")
            return
        if problems := check_settings(message):
            await self.refuse("INVALID_SETTINGS", "; ".join(problems))
            return
        self.settings = message
        await asyncio.sleep(self.server.apply_delay)  # audio sent in this window would be refused
        await self.send({"type": "SettingsApplied"})
        self.applied.set()
        greeting = message["agent"].get("greeting")
        if greeting and self.server.speak_greeting:
            await self.speak(bytes([GREETING_BYTE]) * self.server.greeting_bytes, greeting)

    async def on_function_response(self, message: dict[str, Any]) -> None:
        fid = message.get("id", "")
        if self.pending.get(fid) != message.get("name"):
            await self.refuse("UNPARSABLE_CLIENT_MESSAGE", f"FunctionCallResponse for no pending call {fid!r}")
            return
        del self.pending[fid]
        self.responses[fid] = message


class FakeDeepgram(FakeVendor):
    """The fake service: accepts connections at any path, one DeepgramConnection per websocket."""

    def __init__(self, api_key: str = "dg-secret-key-123", *, apply_delay: float = 0.02,
                 idle_timeout: float = 10.0, speak_greeting: bool = True, greeting_bytes: int = 4000) -> None:
        self.api_key = api_key
        self.apply_delay = apply_delay
        self.idle_timeout = idle_timeout  # CLIENT_MESSAGE_TIMEOUT: no audio and no KeepAlive for this long
        self.speak_greeting = speak_greeting
        self.greeting_bytes = greeting_bytes
        self.connections: list[DeepgramConnection] = []
        self.violations: list[str] = []  # every protocol breach the client committed
        self.refuse_http: tuple[int, str] | None = None  # answer the upgrade with this status and body
        self._server = FakeServer(self._handle)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self._server.port}/v1/agent/converse"

    async def connection(self, n: int = 0, timeout: float = 5.0) -> DeepgramConnection:
        """The n-th connection (0-based) once it exists and its Settings are applied."""
        await wait_for(lambda: len(self.connections) > n and self.connections[n].applied.is_set(), timeout,
                       f"deepgram connection {n}")
        return self.connections[n]

    def _authorized(self, request: web.Request) -> tuple[bool, str | None]:
        auth = request.headers.get("Authorization", "")
        if auth in (f"Token {self.api_key}", f"Bearer {self.api_key}"):
            return True, None
        protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        if protocols[:2] == ["token", self.api_key]:
            return True, "token"
        return False, None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path != "/v1/agent/converse":
            return web.Response(status=404, text="Not Found")
        if self.refuse_http is not None:
            status, body = self.refuse_http
            return web.Response(status=status, text=body, content_type="application/json")
        ok, protocol = self._authorized(request)
        if not ok:
            body = {"err_code": "INVALID_AUTH", "err_msg": "Invalid credentials.", "request_id": str(uuid.uuid4())}
            return web.json_response(body, status=401)
        ws = web.WebSocketResponse(protocols=(protocol,) if protocol else (), autoping=True)
        await ws.prepare(request)
        conn = DeepgramConnection(ws, request, self)
        self.connections.append(conn)
        await conn.send({"type": "Welcome", "request_id": str(uuid.uuid4())})
        try:
            await self._serve(conn)
        finally:
            conn.closed.set()
        return ws

    async def _serve(self, conn: DeepgramConnection) -> None:
        while not conn.ws.closed:
            try:
                msg = await conn.ws.receive(timeout=self.idle_timeout)
            except TimeoutError:
                await conn.refuse("CLIENT_MESSAGE_TIMEOUT", "no audio or KeepAlive received")
                return
            if msg.type == WSMsgType.BINARY:
                await conn.on_binary(msg.data)
            elif msg.type == WSMsgType.TEXT:
                await conn.on_text(msg.data)
            else:
                return
