"""A fake xAI Grok Voice Agent server (wss://api.x.ai/v1/realtime), built from xAI's published protocol.

xAI's Voice Agent API speaks the OpenAI Realtime event names with its own session shape, so this fake reuses
the Realtime fake's streaming (uneven chunks, faster than real time, responses, tools, drops) and replaces
what xAI documents differently (docs.x.ai "Voice Agent API": client/server event lists, session parameters,
audio formats; the shapes as pipecat's `services/xai/realtime/events.py` types them):
  * the first server event is `conversation.created` (no `session.created`); application-level `ping`
    events arrive and must be ignored;
  * client events are only session.update, input_audio_buffer.append/commit/clear, conversation.item.create,
    response.create, response.cancel; anything else (conversation.item.truncate, ...) is an `invalid_event`;
  * session.update takes instructions, voice, turn_detection (top level: server_vad with threshold,
    prefix_padding_ms, silence_duration_ms, idle_timeout_ms, or null), audio.input/output.format
    (audio/pcm at 8000-48000 Hz, audio/pcmu or audio/pcma at 8000), tools (function / web_search / x_search /
    file_search), reasoning. GA-only keys (session.type, output_modalities, tool_choice, audio.*.voice,
    audio.input.turn_detection, noise_reduction) are refused; this is stricter than documented, on purpose:
    a key xAI does not document is a key it may silently ignore;
  * a response.create with a `response` body needs `response.metadata.client_event_id` (the original
    sip-to-ai learned this from the live service: its commit 92e487d, "invalid_event" otherwise);
  * server VAD always interrupts an active response on speech_started (xAI has no `interrupt_response` flag);
  * response.output_audio_transcript.done carries no `transcript` (the text comes in the deltas).
Auth is `Authorization: Bearer <XAI_API_KEY>`; a wrong key is HTTP 401 with xAI's `{"code","error"}` body.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from aiohttp import web

from tests.fakes.openai_realtime import FakeRealtime, Session, Violation

MODELS = ("grok-voice-think-fast-2.0", "grok-voice-think-fast-1.0", "grok-voice-latest", "grok-voice-fast-1.0")
VOICES = ("eve", "ara", "leo", "rex", "sal")
PCM_RATES = (8000, 16000, 21050, 24000, 32000, 44100, 48000)
CLIENT_EVENTS = {  # event type -> keys it may carry besides type/event_id
    "session.update": {"session"},
    "input_audio_buffer.append": {"audio"},
    "input_audio_buffer.commit": set(),
    "input_audio_buffer.clear": set(),
    "conversation.item.create": {"item", "previous_item_id"},
    "response.create": {"response"},
    "response.cancel": set(),
}
SERVER_EVENTS = frozenset({
    "error", "ping", "session.updated", "conversation.created", "conversation.item.added",
    "conversation.item.input_audio_transcription.completed", "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped", "input_audio_buffer.committed", "input_audio_buffer.cleared",
    "response.created", "response.output_item.added", "response.output_item.done", "response.content_part.added",
    "response.content_part.done", "response.output_audio_transcript.delta", "response.output_audio_transcript.done",
    "response.output_audio.delta", "response.output_audio.done", "response.function_call_arguments.delta",
    "response.function_call_arguments.done", "response.done", "conversation.item.done",
})
SESSION_KEYS = {"instructions", "voice", "turn_detection", "audio", "tools", "reasoning", "model"}
VAD_KEYS = {"type", "threshold", "prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms"}
ITEM_KEYS = {"id", "type", "role", "content", "call_id", "name", "arguments", "output", "status"}
RESPONSE_KEYS = {"instructions", "modalities", "output_modalities", "conversation", "metadata"}


def _format_error(fmt: Any) -> str | None:
    if not isinstance(fmt, dict) or set(fmt) - {"type", "rate"}:
        return f"invalid audio format {fmt!r}"
    if fmt.get("type") == "audio/pcm":
        return None if fmt.get("rate", 24000) in PCM_RATES else f"unsupported PCM rate {fmt.get('rate')}"
    if fmt.get("type") in ("audio/pcmu", "audio/pcma"):
        return None if fmt.get("rate", 8000) == 8000 else f"{fmt['type']} is 8000 Hz only"
    return f"unknown audio format type {fmt.get('type')!r}"


def session_error(s: Any) -> str | None:
    """What xAI's session schema refuses in a session.update's `session` (None: accepted)."""
    if not isinstance(s, dict):
        return "session must be an object"
    if extra := set(s) - SESSION_KEYS:
        return f"unknown session parameter(s) {sorted(extra)}"
    td = s.get("turn_detection")
    if td is not None and (not isinstance(td, dict) or set(td) - VAD_KEYS or td.get("type") != "server_vad"):
        return f"invalid turn_detection {td!r}"
    if "voice" in s and (not isinstance(s["voice"], str) or s["voice"].lower() not in VOICES):
        return f"unknown voice {s.get('voice')!r}"
    for side, allowed in (("input", {"format", "transcription"}), ("output", {"format", "speed"})):
        conf = (s.get("audio") or {}).get(side)
        if conf is None:
            continue
        if not isinstance(conf, dict) or set(conf) - allowed:
            return f"unknown audio.{side} parameter(s) in {conf!r}"
        if "format" in conf and (problem := _format_error(conf["format"])):
            return problem
    for tool in s.get("tools") or ():
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind == "function":
            if set(tool) - {"type", "name", "description", "parameters"} or not isinstance(tool.get("name"), str):
                return f"invalid function tool {tool!r}"
        elif kind not in ("web_search", "x_search", "file_search"):
            return f"unknown tool type {kind!r}"
    return None


class GrokSession(Session):
    """One xAI connection: the Realtime fake's machinery with xAI's checks and shapes."""

    def __init__(self, fake: FakeRealtime, ws: web.WebSocketResponse, request: web.Request, model: str) -> None:
        super().__init__(fake, ws, request, model)
        self.config = {"voice": "eve", "instructions": "", "tools": [], "turn_detection": {"type": "server_vad"},
                       "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}},
                                 "output": {"format": {"type": "audio/pcm", "rate": 24000}}}}

    def hello(self) -> dict:
        return {"type": "conversation.created", "conversation": {"id": "conv_1", "object": "realtime.conversation"}}

    async def send(self, event: dict) -> None:
        if event["type"] not in SERVER_EVENTS:  # the fake itself speaks only what xAI lists
            raise AssertionError(f"xAI sends no {event['type']}")
        if event["type"] == "response.output_audio_transcript.done":
            event = {k: v for k, v in event.items() if k != "transcript"}
        await super().send(event)
        if event["type"] == "conversation.created":
            await super().send({"type": "ping", "timestamp": 1733300000000})

    def _bytes_per_ms(self, key: str) -> int:
        fmt = self.config["audio"][key]["format"]
        return 2 * fmt.get("rate", 24000) // 1000 if fmt["type"] == "audio/pcm" else 8

    def _transcribes(self) -> bool:
        return True  # xAI transcribes the caller without being asked (pipecat's client never asks)

    def _turn_detection(self) -> dict:
        td = self.config.get("turn_detection")  # xAI: server VAD creates and interrupts responses, no flags
        return {"create_response": True, "interrupt_response": True} if td else {}

    def _check(self, raw: str) -> dict:
        try:
            event = json.loads(raw)
        except ValueError:
            raise Violation("Invalid JSON", "invalid_json") from None
        if not isinstance(event, dict) or event.get("type") not in CLIENT_EVENTS:
            kind = event.get("type") if isinstance(event, dict) else None
            raise Violation(f"Unsupported client event type {kind!r}", "invalid_event")
        if extra := set(event) - CLIENT_EVENTS[event["type"]] - {"type", "event_id"}:
            raise Violation(f"Unknown field(s) {sorted(extra)} in {event['type']}", "invalid_event")
        if event["type"] == "response.create" and "response" in event:
            body = event["response"]
            meta = body.get("metadata") if isinstance(body, dict) else None
            if not isinstance(body, dict) or set(body) - RESPONSE_KEYS:
                raise Violation(f"Invalid response.create body {body!r}", "invalid_event")
            if not isinstance(meta, dict) or not isinstance(meta.get("client_event_id"), str):
                raise Violation("response.metadata.client_event_id is required", "invalid_event")
        if event["type"] == "conversation.item.create":
            item = event["item"]
            if not isinstance(item, dict) or set(item) - ITEM_KEYS or item.get("type") not in (
                    "message", "function_call_output"):
                raise Violation(f"Invalid conversation item {item!r}", "invalid_event")
        if event["type"] == "input_audio_buffer.append" and not isinstance(event.get("audio"), str):
            raise Violation("audio must be a base64 string", "invalid_event")
        return event

    async def _on_session_update(self, event: dict) -> None:
        s = event["session"]
        if problem := session_error(s):
            return await self._reject(Violation(problem, "invalid_event", "session"))
        for key, value in s.items():
            if key == "audio":
                for side, conf in value.items():
                    self.config["audio"][side].update(conf)
            else:
                self.config[key] = value
        await self.send({"type": "session.updated", "session": self.config})
        self.updated.set()

    async def _on_input_audio_buffer_append(self, event: dict) -> None:
        try:
            base64.b64decode(event["audio"], validate=True)
        except ValueError:
            return await self._reject(Violation("Invalid base64 audio", "invalid_event", "audio"))
        await super()._on_input_audio_buffer_append(event)


class FakeGrok(FakeRealtime):
    """The fake xAI service at /v1/realtime; `await start()` returns its ws:// URL."""

    session_class = GrokSession
    models = MODELS

    def __init__(self, api_key: str = "xai-test-0123456789", **options: Any) -> None:
        super().__init__(api_key, check_server=False, **options)

    def _unauthorized(self, key: str) -> web.Response:
        self.http_refusals += 1
        return web.json_response({"code": "Client specified an invalid argument",
                                  "error": "Incorrect API key provided: " + (key[:4] + "***" if key else "none")},
                                 status=401)
