"""Deepgram Voice Agent V1: G.711 8 kHz binary frames both ways, JSON control messages translated to our events."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from bridge.media import AudioFormat, Codec
from bridge.vendors import tools
from bridge.vendors.base import AgentAudio, AgentContext, AgentInterrupted, AgentTurnEnd, Transcript
from bridge.vendors.ws import Action, Endpoint, KeepAlive, Message, Ready, Send, VendorError, WsAgent

# Deepgram closes an idle socket (CLIENT_MESSAGE_TIMEOUT) and asks for a KeepAlive "every 8 s" while no
# audio flows (developers.deepgram.com/docs/agent-keep-alive); 5 s leaves room for a slow loop.
KEEPALIVE_IDLE = 5.0

ENCODING = {Codec.PCMU: "mulaw", Codec.PCMA: "alaw"}  # audio.input/output.encoding names for G.711
THINK_PROVIDERS = (("claude", "anthropic"), ("gemini", "google"))  # model-name prefix -> agent.think.provider.type
ROLES = {"user": "caller", "assistant": "agent"}  # ConversationText.role -> Transcript.role
# Utterances replayed as `agent.context.messages` after a reconnect, so the model remembers the call; the most
# recent ones matter, and Deepgram's managed LLMs cap the prompt at 25,000 characters (vendors.md §2.2).
HISTORY_LIMIT = 40
IRREVERSIBLE = {tools.END_CALL, tools.TRANSFER_CALL}  # held until the caller's turn is confirmed (defer_until_eot)


def settings_message(ctx: AgentContext, greeting: bool, history: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """The `Settings` message (vendors.md §2.2): G.711 8 kHz raw both ways, prompt, tools, optional greeting.

    `history` is the conversation so far as (role, text) with Deepgram's roles (user/assistant), replayed
    after a reconnect as `agent.context.messages`.
    """
    s = ctx.settings
    encoding = ENCODING[ctx.codec]
    agent: dict[str, Any] = {
        "listen": {"provider": {"type": "deepgram", "model": s.deepgram_listen_model}},
        "think": {
            "provider": {"type": think_provider(s.deepgram_llm_model), "model": s.deepgram_llm_model},
            "prompt": ctx.prompt.instructions,
            "functions": [_function(t) for t in tools.declared_tools(ctx.prompt)],
        },
        "speak": {"provider": {"type": "deepgram", "model": _speak_model(ctx)}},
    }
    if greeting and ctx.prompt.greeting:
        agent["greeting"] = ctx.prompt.greeting
    if history:
        agent["context"] = {"messages": [{"type": "History", "role": r, "content": t} for r, t in history]}
    return {
        "type": "Settings",
        "tags": ["sip-to-ai"],
        "audio": {
            "input": {"encoding": encoding, "sample_rate": 8000},
            "output": {"encoding": encoding, "sample_rate": 8000, "container": "none"},
        },
        "agent": agent,
    }


def think_provider(model: str) -> str:
    """Deepgram's think-provider type for DEEPGRAM_LLM_MODEL: Claude -> anthropic, Gemini -> google, else OpenAI."""
    for prefix, provider in THINK_PROVIDERS:
        if model.startswith(prefix):
            return provider
    return "open_ai"


def _speak_model(ctx: AgentContext) -> str:
    """The prompt file's voice when it names a Deepgram voice (aura-...), else DEEPGRAM_SPEAK_MODEL."""
    voice = ctx.prompt.voice
    return voice if voice.startswith("aura") else ctx.settings.deepgram_speak_model


def _function(spec: tools.ToolSpec) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": spec.name, "description": spec.description, "parameters": dict(spec.parameters)}
    if spec.name in IRREVERSIBLE:
        fn["defer_until_eot"] = True
    return fn


def _json(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


class DeepgramAgent(WsAgent):
    """One Deepgram Voice Agent session: Welcome -> Settings -> SettingsApplied -> audio."""

    vendor = "deepgram"
    keepalive = KeepAlive(KEEPALIVE_IDLE, _json({"type": "KeepAlive"}))

    def __init__(self, ctx: AgentContext) -> None:
        super().__init__(ctx)
        self.input_format = self.output_format = AudioFormat.of(ctx.codec)
        self._greet = True  # the greeting is spoken once per call, not again after a reconnect
        self._history: deque[tuple[str, str]] = deque(maxlen=HISTORY_LIMIT)

    # -- hooks (no I/O) -------------------------------------------------------------------------------------

    def endpoint(self) -> Endpoint:
        key = self.ctx.settings.deepgram_api_key
        return Endpoint(self.ctx.settings.deepgram_ws_endpoint, {"Authorization": f"Token {key}"}, secrets=(key,))

    def on_open(self, resumed: bool) -> Iterable[Message]:
        self._greet = not resumed
        return ()  # nothing may be sent before the server's Welcome (vendors.md §2.1)

    def audio_message(self, data: bytes) -> Message:
        return data  # raw G.711 in a binary frame

    def translate(self, message: Message) -> Iterable[Action]:
        if isinstance(message, bytes):
            return [AgentAudio(message)]
        data = json.loads(message)
        if not isinstance(data, dict):
            raise TypeError("a server message is a JSON object")
        handler = _HANDLERS.get(data["type"])
        return handler(self, data) if handler else []

    def send_dtmf(self, digit: str) -> None:
        """Key presses reach the LLM as a user message ("caller pressed 5")."""
        self.send(_json({"type": "InjectUserMessage", "content": tools.dtmf_text(digit)}))

    # -- server messages ------------------------------------------------------------------------------------

    def _welcome(self, data: dict[str, Any]) -> list[Action]:
        history = () if self._greet else tuple(self._history)
        return [Send(_json(settings_message(self.ctx, self._greet, history)))]

    def _settings_applied(self, data: dict[str, Any]) -> list[Action]:
        return [Ready()]

    def _conversation_text(self, data: dict[str, Any]) -> list[Action]:
        role = ROLES.get(data.get("role", ""))
        if role is None:
            return []
        text = str(data.get("content", ""))
        self._history.append((data["role"], text))
        return [Transcript(role, text)]  # type: ignore[arg-type]

    def _function_call(self, data: dict[str, Any]) -> list[Action]:
        actions: list[Action] = []
        for fn in data.get("functions", []):
            if not fn.get("client_side", False):
                continue  # a server-side function: Deepgram runs it and answers itself
            record, result, event = tools.answer(fn["name"], fn.get("arguments"), self.ctx.prompt)
            reply = {"type": "FunctionCallResponse", "id": fn["id"], "name": fn["name"], "content": json.dumps(result)}
            actions += [record, Send(_json(reply))]
            if event is not None:
                actions.append(event)
        return actions

    def _error(self, data: dict[str, Any]) -> list[Action]:
        return [VendorError(f"{data.get('code', 'ERROR')}: {data.get('description', '')}")]

    def _warning(self, data: dict[str, Any]) -> list[Action]:
        self.ctx.log.warning("! deepgram warning %s: %s", data.get("code"), data.get("description"))
        return []

    def _cancelled(self, data: dict[str, Any]) -> list[Action]:
        names = ", ".join(str(f.get("name")) for f in data.get("functions", []))
        self.ctx.log.info("= deepgram cancelled function call(s): %s", names)
        return []


_HANDLERS = {
    "Welcome": DeepgramAgent._welcome,
    "SettingsApplied": DeepgramAgent._settings_applied,
    "UserStartedSpeaking": lambda self, data: [AgentInterrupted()],
    "AgentAudioDone": lambda self, data: [AgentTurnEnd()],
    "ConversationText": DeepgramAgent._conversation_text,
    "FunctionCallRequest": DeepgramAgent._function_call,
    "FunctionCallCancelled": DeepgramAgent._cancelled,
    "Error": DeepgramAgent._error,
    "Warning": DeepgramAgent._warning,
}
