"""A fake Gemini Live server (BidiGenerateContent), built from the published protocol (vendors.md §3, §4.2).

Accepts `v1`/`v1beta` paths and the key as `?key=` or `x-goog-api-key`; the first client frame must be `setup`
(checked, when google-genai is installed, against LiveClientMessage with warnings as errors, and by the
rules the SDK leaves out: one top-level key, one realtimeInput field, a rate in the audio MIME type, a known
model). Errors are close frames as on the real service: 1007 "Request contains an invalid argument.", 1008
for an unknown model, 1011 "Internal error occurred.". JSON is sent in binary frames, as Gemini does.
Test commands: speak (a tone at 24 kHz PCM16, uneven chunks, faster than real time, with its transcription),
interrupt, tool_call, transcribe_input, go_away (then close at the deadline), resumption updates with handles a
later setup may resume, drop (TCP abort) and close.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import random
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from tests.fakes.ws_vendor import FakeServer, FakeVendor, WsConnection, uneven_chunks, wait_for

PATH = re.compile(r"^/ws/google\.ai\.generativelanguage\.(v1|v1beta|v1alpha)\.GenerativeService\.BidiGenerateContent$")
INVALID = "Request contains an invalid argument."
OUT_RATE = 24000
OUT_MIME = f"audio/pcm;rate={OUT_RATE}"
MIME = re.compile(r"^audio/pcm;rate=(\d+)$")


def sdk_check(message: dict[str, Any], server: bool = False) -> str | None:
    """What google-genai's Live models reject in `message` (None when fine or when the SDK is absent)."""
    try:
        from google.genai import types
    except ImportError:
        return None
    import pydantic

    msg = json.loads(json.dumps(message))
    setup = msg.get("setup") or {}
    ric = setup.pop("realtimeInputConfig", None) or setup.pop("realtime_input_config", None)  # SDK gap, §4.2
    model = types.LiveServerMessage if server else types.LiveClientMessage
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # unknown enum values only warn by default
            model.model_validate_json(json.dumps(msg))
            if ric is not None:
                types.RealtimeInputConfig.model_validate(ric)
    except (pydantic.ValidationError, UserWarning) as exc:
        return str(exc).splitlines()[0] + ": " + " ".join(str(exc).splitlines()[1:3])
    return None


def tone(freq: float, seconds: float, rate: int = OUT_RATE, amplitude: int = 8000) -> bytes:
    """A sine as PCM16 LE mono."""
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def _get(d: dict[str, Any], camel: str) -> Any:
    """A field in camelCase or snake_case: the server accepts both, as protobuf JSON does."""
    snake = re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), camel)
    return d.get(camel, d.get(snake))


class Rejected(Exception):
    """The client broke the protocol: close with `code` and `reason`."""

    def __init__(self, code: int, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.code, self.reason, self.detail = code, reason, detail


@dataclass
class GeminiConnection(WsConnection):
    """One accepted websocket: what the client sent, and commands a test gives the server."""

    ws: web.WebSocketResponse
    request: web.Request
    server: FakeGeminiLive
    setup: dict[str, Any] | None = None
    resumed_from: str | None = None  # the handle this connection's setup resumed
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    audio: bytearray = field(default_factory=bytearray)  # caller PCM16 received, in order
    audio_rates: set[int] = field(default_factory=set)
    audio_times: list[float] = field(default_factory=list)  # loop time each audio message arrived
    received_at: float = 0.0  # loop time the frame being handled arrived (stamped before any checking)
    texts: list[str] = field(default_factory=list)  # realtimeInput.text
    turns: list[dict[str, Any]] = field(default_factory=list)  # clientContent messages
    tool_responses: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: dict[str, str] = field(default_factory=dict)  # tool call id -> name
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    # -- commands -----------------------------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        problem = sdk_check(message, server=True)
        assert problem is None, f"the fake itself sent an invalid message: {problem}"
        data = json.dumps(message)
        if self.server.binary_frames:
            await self.ws.send_bytes(data.encode())
        else:
            await self.ws.send_str(data)

    async def speak(self, seconds: float = 0.5, freq: float = 440.0, text: str = "", *, done: bool = True,
                    rng: random.Random | None = None) -> bytes:
        """A reply: `seconds` of a tone at 24 kHz in uneven chunks, fast; its transcription; turnComplete."""
        rng = rng or random.Random(11)
        pcm = tone(freq, seconds)
        words = text.split()
        for i, chunk in enumerate(uneven_chunks(pcm, rng, 480, 9600, align=2)):
            content: dict[str, Any] = {"modelTurn": {"parts": [
                {"inlineData": {"mimeType": OUT_MIME, "data": base64.b64encode(chunk).decode()}}]}}
            if i < len(words):
                content["outputTranscription"] = {"text": " " + words[i]}
            await self.send({"serverContent": content})
            await asyncio.sleep(0)
        rest = words[i + 1:] if words else []
        if rest:
            await self.send({"serverContent": {"outputTranscription": {"text": " " + " ".join(rest)}}})
        if done:
            await self.send({"serverContent": {"generationComplete": True}})
            await self.turn_complete()
        return pcm

    async def turn_complete(self) -> None:
        await self.send({"serverContent": {"turnComplete": True}})
        await self.resumption_update()

    async def interrupt(self) -> None:
        """The caller spoke over the model: `interrupted`, then `turnComplete` (vendors.md §3.4)."""
        await self.send({"serverContent": {"interrupted": True}})
        await self.turn_complete()

    async def transcribe_input(self, text: str) -> None:
        for word in text.split():
            await self.send({"serverContent": {"inputTranscription": {"text": " " + word}}})

    async def tool_call(self, name: str, args: dict[str, Any]) -> str:
        fid = f"function-call-{next(self._ids)}"
        self.pending[fid] = name
        await self.send({"toolCall": {"functionCalls": [{"id": fid, "name": name, "args": args}]}})
        await self.resumption_update(resumable=False)  # a resume now would lose the call
        return fid

    @property
    def tool_answers(self) -> dict[str, Any]:
        """The client's functionResponse.response by tool call id."""
        return {fid: response["response"] for fid, response in self.tool_responses.items()}

    async def resumption_update(self, resumable: bool = True) -> None:
        if self.setup is None or _get(self.setup, "sessionResumption") is None:
            return
        handle = self.server.new_handle() if resumable else ""
        await self.send({"sessionResumptionUpdate": {"newHandle": handle, "resumable": resumable}})

    async def go_away(self, time_left: float = 0.5) -> None:
        """Announce the end of this connection and close it when the time is up (unless the client left)."""
        await self.send({"goAway": {"timeLeft": f"{time_left}s"}})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closed.wait(), time_left)
        if not self.ws.closed:
            self.server.cut_by_goaway += 1
            await self.close(1000, "connection lifetime reached")

    # -- protocol -----------------------------------------------------------------------------------------

    async def on_setup(self, message: dict[str, Any]) -> None:
        setup = message["setup"]
        model = setup.get("model", "")
        if model.removeprefix("models/") not in self.server.models or not model.startswith("models/"):
            raise Rejected(1008, f"{model} is not found for API version v1beta, or is not supported for "
                                 "bidiGenerateContent.")
        if not self.server.authorized(self.request):
            raise Rejected(1007, "API key not valid. Please pass a valid API key.")
        gen = _get(setup, "generationConfig") or {}
        if _get(gen, "responseModalities") not in (None, ["AUDIO"]):
            raise Rejected(1007, INVALID, "native audio models answer with AUDIO only")
        resumption = _get(setup, "sessionResumption")
        if resumption and resumption.get("handle"):
            if resumption["handle"] not in self.server.handles:
                raise Rejected(1007, INVALID, "unknown session resumption handle")
            self.resumed_from = resumption["handle"]
        self.setup = setup
        await self.send({"setupComplete": {}})
        self.ready.set()
        await self.resumption_update()

    async def on_message(self, message: dict[str, Any]) -> None:
        if len(message) != 1:
            raise Rejected(1007, INVALID, f"one message type per frame, got {sorted(message)}")
        if (problem := sdk_check(message)) is not None:
            raise Rejected(1007, INVALID, problem)
        key = next(iter(message))
        if self.setup is None:
            if key != "setup":
                raise Rejected(1007, INVALID, f"{key} before setup")
            await self.on_setup(message)
        elif key == "setup":
            raise Rejected(1007, INVALID, "setup sent twice")
        elif key in ("realtimeInput", "realtime_input"):
            await self.on_realtime_input(message[key])
        elif key in ("clientContent", "client_content"):
            await self.on_client_content(message[key])
        elif key in ("toolResponse", "tool_response"):
            self.on_tool_response(message[key])
        else:
            raise Rejected(1007, INVALID, f"unsupported message {key}")

    async def on_realtime_input(self, body: dict[str, Any]) -> None:
        if len(body) != 1:
            raise Rejected(1007, INVALID, f"one realtimeInput field per message, got {sorted(body)}")
        if (audio := _get(body, "audio")) is not None:
            m = MIME.match(_get(audio, "mimeType") or "")
            data = base64.b64decode(audio.get("data", ""), validate=True)
            if m is None or len(data) % 2:
                raise Rejected(1007, INVALID, "audio must be PCM16 with its rate in the MIME type")
            self.audio_rates.add(int(m.group(1)))
            self.audio.extend(data)
            self.audio_times.append(self.received_at)
        elif (text := _get(body, "text")) is not None:
            self.texts.append(text)
            if self.server.answer_text:  # realtime text is a user turn the model answers
                await self.speak(self.server.greeting_seconds, self.server.greeting_freq, "Hello there caller")
        elif _get(body, "mediaChunks") is not None:
            raise Rejected(1007, INVALID, "mediaChunks is deprecated; use audio")

    async def on_client_content(self, body: dict[str, Any]) -> None:
        for turn in body.get("turns", []):
            if turn.get("role") not in ("user", "model") or not turn.get("parts"):
                raise Rejected(1007, INVALID, "a turn needs a role (user/model) and parts")
        self.turns.append(body)
        if _get(body, "turnComplete") and self.server.answer_turns:
            await self.speak(self.server.greeting_seconds, self.server.greeting_freq, "Hello there caller")

    def on_tool_response(self, body: dict[str, Any]) -> None:
        for response in _get(body, "functionResponses") or []:
            fid = response.get("id", "")
            if self.pending.get(fid) != response.get("name") or not isinstance(response.get("response"), dict):
                raise Rejected(1007, INVALID, f"toolResponse for no pending call {fid!r}")
            del self.pending[fid]
            self.tool_responses[fid] = response


class FakeGeminiLive(FakeVendor):
    """The fake service: one GeminiConnection per websocket; handles issued here can be resumed."""

    def __init__(self, api_key: str = "gm-secret-key-789", *, models: tuple[str, ...] = ("gemini-test-live",),
                 binary_frames: bool = True, answer_turns: bool = True, greeting_seconds: float = 0.4,
                 greeting_freq: float = 440.0, answer_text: bool = False) -> None:
        self.api_key = api_key
        self.models = models
        self.binary_frames = binary_frames
        self.answer_turns = answer_turns  # speak when a clientContent turn completes (the greeting)
        self.greeting_seconds = greeting_seconds
        self.greeting_freq = greeting_freq
        self.answer_text = answer_text  # speak when realtimeInput.text arrives
        self.connections: list[GeminiConnection] = []
        self.violations: list[str] = []
        self.handles: set[str] = set()
        self.cut_by_goaway = 0  # connections closed at a goAway deadline because the client stayed
        self._handle_ids = itertools.count(1)
        self._server = FakeServer(self._handle)

    @property
    def url(self) -> str:
        return (f"ws://127.0.0.1:{self._server.port}/ws/"
                "google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent")

    def new_handle(self) -> str:
        handle = f"session-handle-{next(self._handle_ids)}"
        self.handles.add(handle)
        return handle

    def authorized(self, request: web.Request) -> bool:
        key = request.query.get("key") or request.headers.get("x-goog-api-key")
        return key == self.api_key

    async def connection(self, n: int = 0, timeout: float = 5.0) -> GeminiConnection:
        """The n-th connection (0-based) once its setup is complete."""
        await wait_for(lambda: len(self.connections) > n and self.connections[n].ready.is_set(), timeout,
                       f"gemini connection {n}")
        return self.connections[n]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if not PATH.match(request.path):
            return web.Response(status=404, text="Not Found")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        conn = GeminiConnection(ws, request, self)
        self.connections.append(conn)
        try:
            await self._serve(conn)
        except Rejected as exc:
            self.violations.append(f"{exc.code} {exc.reason} {exc.detail}".strip())
            await ws.close(code=exc.code, message=exc.reason.encode()[:123])  # RFC 6455 §5.5: 125-byte body
        finally:
            conn.closed.set()
        return ws

    async def _serve(self, conn: GeminiConnection) -> None:
        async for msg in conn.ws:
            conn.received_at = asyncio.get_running_loop().time()
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                return
            try:
                message = json.loads(msg.data)
            except ValueError:
                raise Rejected(1007, INVALID, "not JSON") from None
            if not isinstance(message, dict):
                raise Rejected(1007, INVALID, "not a JSON object")
            await conn.on_message(message)
