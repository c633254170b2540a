"""Gemini Live (BidiGenerateContent): PCM16 16 kHz up, 24 kHz down, session resumption across drops and goAway."""

from __future__ import annotations

import base64
import json
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from bridge.media import AudioFormat
from bridge.vendors import tools
from bridge.vendors.base import AgentAudio, AgentContext, AgentEvent, AgentInterrupted, AgentTurnEnd, Transcript
from bridge.vendors.ws import Action, Endpoint, Message, Ready, Reconnect, Send, WsAgent

INPUT_RATE = 16000  # Gemini's native input rate; stated in every audio chunk's MIME type (vendors.md §3.3)
OUTPUT_RATE = 24000  # Gemini always answers in 24 kHz PCM16 LE mono
INPUT_MIME = f"audio/pcm;rate={INPUT_RATE}"
# Without compression an audio session ends after 15 min (vendors.md §3.7); a sliding window lifts the cap.
COMPRESSION = {"slidingWindow": {}}
# The JSON-schema keys Gemini's OpenAPI-subset Schema understands (google-genai types.Schema).
SCHEMA_KEYS = ("description", "enum", "format", "nullable", "required", "minimum", "maximum")
HISTORY = 20  # utterances given to a fresh session when a resumption handle is refused: recent, bounded


def gemini_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON schema as Gemini's Schema: upper-case `type`, nested properties/items, unknown keys dropped."""
    out: dict[str, Any] = {k: schema[k] for k in SCHEMA_KEYS if k in schema}
    if isinstance(schema.get("type"), str):
        out["type"] = schema["type"].upper()
    if isinstance(schema.get("properties"), Mapping):
        out["properties"] = {name: gemini_schema(sub) for name, sub in schema["properties"].items()}
    if isinstance(schema.get("items"), Mapping):
        out["items"] = gemini_schema(schema["items"])
    if out.get("required") == []:
        del out["required"]
    return out


def setup_message(ctx: AgentContext, handle: str | None) -> dict[str, Any]:
    """The `setup` message (vendors.md §3.2); `handle` resumes an earlier session."""
    s = ctx.settings
    model = s.gemini_model if s.gemini_model.startswith("models/") else f"models/{s.gemini_model}"
    voice = ctx.prompt.voice or s.gemini_voice
    functions = [
        {"name": t.name, "description": t.description, "parameters": gemini_schema(t.parameters)}
        for t in tools.declared_tools(ctx.prompt)
    ]
    return {"setup": {
        "model": model,
        "generationConfig": {
            "responseModalities": ["AUDIO"],
            "speechConfig": {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": voice}}},
        },
        "systemInstruction": {"parts": [{"text": ctx.prompt.instructions}]},
        "tools": [{"functionDeclarations": functions}],
        "sessionResumption": {"handle": handle} if handle else {},
        "contextWindowCompression": COMPRESSION,
        "inputAudioTranscription": {},
        "outputAudioTranscription": {},
    }}


def greeting_message(greeting: str, mode: str = "client_content") -> dict[str, Any]:
    """What makes the model speak first (vendors.md §3.5): an initial user turn, or realtime text.

    `clientContent` is the documented way; GEMINI_GREETING=realtime_text is for models that refuse it
    (gemini-3.1-flash-live-preview closed with 1007 on clientContent at launch).
    """
    text = f'The caller has just picked up. Greet them by saying: "{greeting}"'
    if mode == "realtime_text":
        return {"realtimeInput": {"text": text}}
    return {"clientContent": {"turns": [{"role": "user", "parts": [{"text": text}]}], "turnComplete": True}}


def context_message(history: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """The conversation so far as clientContent turns, without turnComplete: context, not a question."""
    turns = [{"role": "user" if role == "caller" else "model", "parts": [{"text": text}]} for role, text in history]
    return {"clientContent": {"turns": turns, "turnComplete": False}}


def _json(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


class GeminiAgent(WsAgent):
    """One Gemini Live session, resumed with its latest handle after a drop or a goAway."""

    vendor = "gemini"

    def __init__(self, ctx: AgentContext) -> None:
        super().__init__(ctx)
        self.input_format = AudioFormat("pcm16", INPUT_RATE)
        self.output_format = AudioFormat("pcm16", OUTPUT_RATE)
        self.handle: str | None = None  # the latest resumable session handle
        self._resumable = False  # the server said a resume now would lose nothing
        self._leaving = False  # goAway seen: move to a new connection at the next resumable point
        self._heard = ""  # the caller's utterance, transcribed in pieces
        self._said = ""  # the agent's utterance, transcribed in pieces
        self._greet = False
        self._history: deque[tuple[str, str]] = deque(maxlen=HISTORY)  # (role, text), for a fresh session
        self._fresh = False  # a fresh session after a refused handle: give it the conversation so far

    # -- hooks (no I/O) -------------------------------------------------------------------------------------

    def endpoint(self) -> Endpoint:
        key = self.ctx.settings.gemini_api_key
        # The key travels as a header (as google-genai sends it), so that no URL we might log carries it.
        return Endpoint(self.ctx.settings.gemini_ws_endpoint, {"x-goog-api-key": key}, secrets=(key,))

    def on_open(self, resumed: bool) -> Iterable[Message]:
        self._greet = not resumed and bool(self.ctx.prompt.greeting)
        return [_json(setup_message(self.ctx, self.handle if resumed else None))]

    def on_reconnect(self) -> None:
        self._leaving = False
        self._resumable = False

    def on_resume_refused(self) -> bool:
        """An expired or unknown handle: forget it, open a new session and hand it the conversation so far."""
        if self.handle is None:
            return False
        self.ctx.log.warning("! gemini refused the session handle; a new session gets %d earlier utterances",
                             len(self._history))
        self.handle, self._fresh = None, True
        return True

    def audio_message(self, data: bytes) -> Message:
        blob = {"data": base64.b64encode(data).decode("ascii"), "mimeType": INPUT_MIME}
        return _json({"realtimeInput": {"audio": blob}})

    def send_dtmf(self, digit: str) -> None:
        """Key presses reach the model as realtime text ("caller pressed 5")."""
        self.send(_json({"realtimeInput": {"text": tools.dtmf_text(digit)}}))

    def translate(self, message: Message) -> Iterable[Action]:
        data = json.loads(message)  # Gemini sends its JSON in text and in binary frames alike
        if not isinstance(data, dict):
            raise TypeError("a server message is a JSON object")
        actions: list[Action] = []
        for key, value in data.items():
            handler = _HANDLERS.get(key)
            if handler is not None:
                actions.extend(handler(self, value))
        return actions

    # -- server messages ------------------------------------------------------------------------------------

    def _setup_complete(self, body: Mapping[str, Any]) -> list[Action]:
        if self._fresh:
            self._fresh = False
            return [Ready(), Send(_json(context_message(self._history)))] if self._history else [Ready()]
        if not self._greet:
            return [Ready()]
        self._greet = False
        message = greeting_message(self.ctx.prompt.greeting, self.ctx.settings.gemini_greeting)
        return [Ready(), Send(_json(message))]

    def _server_content(self, body: Mapping[str, Any]) -> list[Action]:
        actions: list[Action] = []
        if text := _text(body, "inputTranscription", "input_transcription"):
            self._heard += text
        turn = body.get("modelTurn") or body.get("model_turn") or {}
        for part in turn.get("parts", []):
            blob = part.get("inlineData") or part.get("inline_data")
            if blob and blob.get("data"):
                actions.extend(self._flush_heard())
                actions.append(AgentAudio(base64.b64decode(blob["data"])))
        if text := _text(body, "outputTranscription", "output_transcription"):
            actions.extend(self._flush_heard())
            self._said += text
        if body.get("interrupted"):
            actions.append(AgentInterrupted())
            actions.extend(self._flush_said())
        if body.get("turnComplete") or body.get("turn_complete"):
            actions.extend(self._flush_heard())
            actions.extend(self._flush_said())
            actions.append(AgentTurnEnd())
        return actions

    def _tool_call(self, body: Mapping[str, Any]) -> list[Action]:
        replies: list[dict[str, Any]] = []
        events: list[Action] = []
        for call in body.get("functionCalls") or body.get("function_calls") or []:
            record, result, event = tools.answer(call["name"], call.get("args"), self.ctx.prompt)
            events.append(record)
            replies.append({"id": call.get("id", ""), "name": call["name"], "response": result})
            if event is not None:
                events.append(event)
        if not replies:
            return []
        return [Send(_json({"toolResponse": {"functionResponses": replies}})), *events]

    def _resumption(self, body: Mapping[str, Any]) -> list[Action]:
        handle = body.get("newHandle") or body.get("new_handle")
        self._resumable = bool(body.get("resumable")) and bool(handle)
        if self._resumable:
            self.handle = handle
            if self._leaving:
                return [Reconnect("goAway: resuming on a new connection")]
        return []

    def _go_away(self, body: Mapping[str, Any]) -> list[Action]:
        left = body.get("timeLeft") or body.get("time_left") or "?"
        self.ctx.log.info("= gemini goAway, %s left", left)
        if self._resumable:
            return [Reconnect(f"goAway ({left} left): resuming on a new connection")]
        self._leaving = True  # mid-generation or mid-tool: wait for the next resumable handle
        return []

    def _tool_cancelled(self, body: Mapping[str, Any]) -> list[Action]:
        self.ctx.log.info("= gemini cancelled tool call(s): %s", ", ".join(body.get("ids", [])))
        return []

    # -- transcripts: pieces joined into one line per utterance ---------------------------------------------

    def _flush_heard(self) -> list[AgentEvent]:
        text, self._heard = self._heard.strip(), ""
        return self._utterance("caller", text)

    def _flush_said(self) -> list[AgentEvent]:
        text, self._said = self._said.strip(), ""
        return self._utterance("agent", text)

    def _utterance(self, role: Literal["caller", "agent"], text: str) -> list[AgentEvent]:
        if not text:
            return []
        self._history.append((role, text))
        return [Transcript(role, text)]


def _text(body: Mapping[str, Any], camel: str, snake: str) -> str:
    value = body.get(camel) or body.get(snake) or {}
    return str(value.get("text") or "")


_HANDLERS = {
    "setupComplete": GeminiAgent._setup_complete,
    "setup_complete": GeminiAgent._setup_complete,
    "serverContent": GeminiAgent._server_content,
    "server_content": GeminiAgent._server_content,
    "toolCall": GeminiAgent._tool_call,
    "tool_call": GeminiAgent._tool_call,
    "toolCallCancellation": GeminiAgent._tool_cancelled,
    "tool_call_cancellation": GeminiAgent._tool_cancelled,
    "sessionResumptionUpdate": GeminiAgent._resumption,
    "session_resumption_update": GeminiAgent._resumption,
    "goAway": GeminiAgent._go_away,
    "go_away": GeminiAgent._go_away,
}
