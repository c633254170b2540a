"""The Realtime protocol: OpenAI (GA), Azure OpenAI, xAI Grok Voice, and OpenAI-compatible gateways.

Wire contract: docs/vendors.md §1 (OpenAI GA) and §1.9 (Azure GA path); xAI's Voice Agent API mirrors it,
and where it differs the difference is a row of `DIALECTS` (README, "xAI Grok Voice"), not another module.
Audio is the call's G.711 both ways (`audio/pcmu`/`audio/pcma`, nothing transcoded), or, with
OPENAI_AUDIO_FORMAT=pcm16, `audio/pcm` at 24 kHz through the core's resamplers. Server VAD cancels the reply on
barge-in; we flush playout and, where the vendor has it, truncate the assistant item to what the caller heard
(§1.4). Only one response may be active (§1.5): our own `response.create`s wait for `response.done`. Tool calls
act on `response.done` only when the response completed (§1.6).
"""

from __future__ import annotations

import base64
import json
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from bridge.media import AudioFormat
from bridge.vendors import tools
from bridge.vendors.base import AgentAudio, AgentContext, AgentInterrupted, AgentTurnEnd, Transcript
from bridge.vendors.ws import Action, Endpoint, Message, Ready, Send, VendorError, WsAgent

AZURE_PATH = "/openai/v1/realtime"
FORMATS = {"pcmu": "audio/pcmu", "pcma": "audio/pcma", "pcm16": "audio/pcm"}
PCM_RATE = 24000  # the only rate OpenAI's audio/pcm takes
HISTORY = 20  # utterances replayed into a new session after a reconnect: the recent context, bounded


@dataclass(frozen=True)
class Dialect:
    """Where a Realtime-protocol vendor differs from OpenAI GA. Sources: README, AI vendors, xAI Grok Voice."""

    hello: str | None = None  # the server event before which nothing is sent (None: send at once)
    ga_session: bool = True  # session.type/model/output_modalities/tool_choice; voice and VAD under `audio`
    truncate: bool = True  # conversation.item.truncate exists (cut the reply to what was heard)
    tag_responses: bool = False  # response.create carries metadata.client_event_id
    g711_rate: bool = False  # G.711 formats state their 8000 Hz rate


GA = Dialect()
XAI = Dialect(hello="conversation.created", ga_session=False, truncate=False, tag_responses=True, g711_rate=True)
DIALECTS = {"openai": GA, "azure": GA, "grok": XAI}


def _with_query(url: str, **params: str) -> str:
    """`url` with `params` added to its query unless already there."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    for key, value in params.items():
        query.setdefault(key, value)
    return urlunsplit(parts._replace(query=urlencode(query)))


def azure_url(endpoint: str, deployment: str) -> str:
    """The Azure GA websocket URL: wss://<resource>.openai.azure.com/openai/v1/realtime?model=<deployment>.

    AZURE_OPENAI_ENDPOINT may be the resource's https:// base (as the portal shows it) or a full ws(s) URL.
    No `api-version`: the GA path refuses it (a pasted preview URL loses it and its `deployment`).
    """
    parts = urlsplit(endpoint.strip())
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/")
    if path.endswith("/openai/realtime"):  # a preview URL pasted in: its GA equivalent
        path = path.removesuffix("/openai/realtime")
    if not path.endswith("/realtime"):
        path += AZURE_PATH
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k not in ("api-version", "deployment")])
    return _with_query(urlunsplit((scheme, parts.netloc, path, query, "")), model=deployment)


def openai_url(endpoint: str, model: str) -> str:
    """OPENAI_WS_ENDPOINT with `?model=` appended (kept when the endpoint already names one)."""
    return _with_query(endpoint, model=model)


class OpenAIAgent(WsAgent):
    """One Realtime session per call: OpenAI, or Azure / xAI Grok as AI_VENDOR says."""

    def __init__(self, ctx: AgentContext) -> None:
        super().__init__(ctx)
        s = ctx.settings
        self.vendor = s.ai_vendor if s.ai_vendor in DIALECTS else "openai"
        self.azure = self.vendor == "azure"
        self.dialect = DIALECTS[self.vendor]
        self.input_format = self.output_format = _wire_format(ctx, self.vendor)
        self._bytes_per_ms = 2 * self.output_format.rate // 1000 if self.output_format.encoding == "pcm16" else 8
        self._seq = 0  # numbers our response.creates (client_event_id)
        self._handlers: dict[str, Callable[[dict], list[Action]]] = {
            "session.updated": lambda e: [Ready()],
            "response.created": self._on_response_created,
            "response.output_audio.delta": self._on_audio_delta,
            "response.audio.delta": self._on_audio_delta,  # beta name some models were seen to emit
            "response.output_audio_transcript.delta": self._on_agent_transcript_delta,
            "response.output_audio_transcript.done": self._on_agent_transcript,
            "response.function_call_arguments.done": self._on_arguments_done,
            "conversation.item.input_audio_transcription.completed": self._on_caller_transcript,
            "input_audio_buffer.speech_started": self._on_speech_started,
            "response.done": self._on_response_done,
            "error": self._on_error,
        }
        if self.dialect.hello:
            self._handlers[self.dialect.hello] = lambda e: [Send(m) for m in self._opening(self._resumed)]
        self._resumed = False
        self._history: deque[tuple[str, str]] = deque(maxlen=HISTORY)  # (role, text), kept across reconnects
        self._reset()

    def _reset(self) -> None:
        """Per-connection state: a new socket is a new conversation."""
        self._active: str | None = None  # the response in progress
        self._requested = False  # our response.create is on its way
        self._want_response = False  # a response.create waits for response.done
        self._item: str | None = None  # the assistant audio item being played
        self._item_bytes = 0  # audio received for it
        self._cut: str | None = None  # the item a barge-in cut: its late deltas are not played
        self._said = ""  # the agent's utterance so far, from transcript deltas (xAI's .done may lack it)
        self._calls: dict[str, dict] = {}  # function calls of the active response, by call_id

    # -- connection ------------------------------------------------------------------------------------------

    def endpoint(self) -> Endpoint:
        s = self.ctx.settings
        if self.vendor == "grok":
            return Endpoint(openai_url(s.grok_ws_endpoint, s.grok_model), {"Authorization": f"Bearer {s.xai_api_key}"},
                            secrets=(s.xai_api_key,))
        if self.azure:
            return Endpoint(azure_url(s.azure_openai_endpoint, s.azure_openai_deployment),
                            {"api-key": s.azure_openai_api_key}, secrets=(s.azure_openai_api_key,))
        headers = {"Authorization": f"Bearer {s.openai_api_key}"}
        if s.openai_project:
            headers["OpenAI-Project"] = s.openai_project
        if s.openai_organization:
            headers["OpenAI-Organization"] = s.openai_organization
        return Endpoint(openai_url(s.openai_ws_endpoint, s.openai_model), headers, secrets=(s.openai_api_key,))

    def on_open(self, resumed: bool) -> Iterable[Message]:
        self._resumed = resumed
        return [] if self.dialect.hello else self._opening(resumed)

    def _opening(self, resumed: bool) -> list[Message]:
        """session.update, the conversation so far (after a reconnect) or the greeting."""
        messages = [json.dumps({"type": "session.update", "session": self.session_config()})]
        if resumed:  # a new socket is a new, empty conversation: give it the recent one back as text
            messages += [json.dumps(_history_item(role, text)) for role, text in self._history]
        greeting = self.ctx.prompt.greeting
        if greeting and not resumed:
            self._requested = True
            say = f"Greet the caller now by saying exactly: {greeting}"
            messages.append(self._response_create({"instructions": say}))
        return messages

    def _response_create(self, response: dict[str, Any] | None = None) -> str:
        """A response.create; tagged with a client_event_id where the dialect wants one."""
        body = dict(response or {})
        if self.dialect.tag_responses:
            self._seq += 1
            body["metadata"] = {"client_event_id": f"{self.ctx.call.call_id}-{self._seq}"}
        return json.dumps({"type": "response.create", "response": body} if body else {"type": "response.create"})

    def on_reconnect(self) -> None:
        self._reset()

    def session_config(self) -> dict[str, Any]:
        """The `session` object of session.update: GA (§1.2), or xAI's flatter shape."""
        s, prompt = self.ctx.settings, self.ctx.prompt
        fmt: dict[str, Any] = {"type": FORMATS[self.input_format.encoding]}
        if self.input_format.encoding == "pcm16" or self.dialect.g711_rate:
            fmt["rate"] = self.input_format.rate
        declared = [{"type": "function", "name": t.name, "description": t.description,
                     "parameters": dict(t.parameters)} for t in tools.declared_tools(prompt)]
        if not self.dialect.ga_session:  # xAI: voice and turn_detection at the top, no GA-only keys
            return {"instructions": prompt.instructions, "voice": prompt.voice or s.grok_voice,
                    "turn_detection": {"type": "server_vad"},
                    "audio": {"input": {"format": fmt}, "output": {"format": fmt}}, "tools": declared}
        audio_in: dict[str, Any] = {
            "format": fmt,
            "turn_detection": {"type": "server_vad", "create_response": True, "interrupt_response": True},
        }
        if transcriber := self._transcriber():
            audio_in["transcription"] = {"model": transcriber}
        if s.openai_noise_reduction != "off":
            audio_in["noise_reduction"] = {"type": s.openai_noise_reduction}
        return {
            "type": "realtime",
            "model": s.azure_openai_deployment if self.azure else s.openai_model,
            "instructions": prompt.instructions,
            "output_modalities": ["audio"],
            "audio": {"input": audio_in, "output": {"format": fmt, "voice": prompt.voice or s.openai_voice}},
            "tools": declared,
            "tool_choice": "auto",
        }

    def _transcriber(self) -> str:
        """Who transcribes the caller: a model (OpenAI) or a transcription deployment (Azure, §1.9); "" = off."""
        s = self.ctx.settings
        name = s.azure_openai_transcription_deployment if self.azure else s.openai_transcription_model
        return "" if name.strip().lower() in ("", "off", "none") else name.strip()

    def audio_message(self, data: bytes) -> Message:
        return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(data).decode()})

    def send_dtmf(self, digit: str) -> None:
        """Over websocket DTMF is not an event (§1.6): a user text item, then a response."""
        self.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": tools.dtmf_text(digit)}]}}))
        for action in self._request_response():
            self.send(action.message)

    # -- translation -----------------------------------------------------------------------------------------

    def translate(self, message: Message) -> list[Action]:
        event = json.loads(message)
        handler = self._handlers.get(event["type"])
        return handler(event) if handler is not None else []

    def _request_response(self) -> list[Send]:
        """A response.create now, or after the active response is done (one at a time)."""
        if self._active is not None or self._requested:
            self._want_response = True
            return []
        self._requested = True
        return [Send(self._response_create())]

    def _on_response_created(self, event: dict) -> list[Action]:
        self._active = event["response"]["id"]
        self._requested = False
        return []

    def _on_audio_delta(self, event: dict) -> list[Action]:
        data = base64.b64decode(event["delta"])
        if event["item_id"] == self._cut:
            return []
        if event["item_id"] != self._item:
            self._item, self._item_bytes = event["item_id"], 0
        self._item_bytes += len(data)
        return [AgentAudio(data, event["item_id"])]

    def _on_agent_transcript_delta(self, event: dict) -> list[Action]:
        self._said += event.get("delta") or ""
        return []

    def _on_agent_transcript(self, event: dict) -> list[Action]:
        text = (event.get("transcript") or self._said).strip()
        self._said = ""
        if not text:
            return []
        self._history.append(("agent", text))
        return [Transcript("agent", text)]

    def _on_caller_transcript(self, event: dict) -> list[Action]:
        text = (event.get("transcript") or "").strip()
        if not text:
            return []
        self._history.append(("caller", text))
        return [Transcript("caller", text)]

    def _on_speech_started(self, event: dict) -> list[Action]:
        """Barge-in (§1.4): flush playout; truncate the assistant item to what was heard, if cut short."""
        actions: list[Action] = [AgentInterrupted()]
        if self._item is not None:
            heard = self.ctx.played_ms(self._item)
            if self.dialect.truncate and heard < self._item_bytes // self._bytes_per_ms:
                actions.append(Send(json.dumps({"type": "conversation.item.truncate", "item_id": self._item,
                                                "content_index": 0, "audio_end_ms": heard})))
            self._cut, self._item = self._item, None
        return actions

    def _on_response_done(self, event: dict) -> list[Action]:
        response = event["response"]
        self._active = None
        actions: list[Action] = [AgentTurnEnd()]
        calls, self._calls = self._calls, {}
        if response.get("status") == "completed":
            for item in response.get("output") or ():
                if item.get("type") == "function_call":
                    calls[item["call_id"]] = item
            for item in calls.values():
                actions += self._on_function_call(item)
        if self._want_response:
            self._want_response = False
            if not self._requested:
                actions += self._request_response()
        return actions

    def _on_arguments_done(self, event: dict) -> list[Action]:
        """A finished function call, kept for response.done (xAI's response.done may not list it, §README)."""
        self._calls[event["call_id"]] = {"call_id": event["call_id"], "name": event["name"],
                                         "arguments": event.get("arguments")}
        return []

    def _on_function_call(self, item: dict) -> list[Action]:
        """A completed tool call: built-ins become our events; others get UNAVAILABLE and the model goes on."""
        record, output, request = tools.answer(item["name"], item.get("arguments"), self.ctx.prompt)
        actions: list[Action] = [record]
        actions += [Send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": item["call_id"], "output": json.dumps(output)}}))]
        if request is not None:
            return [*actions, request]  # the call ends or moves on: the model need not speak again
        return actions + self._request_response()

    def _on_error(self, event: dict) -> list[Action]:
        err = event.get("error") or {}
        code = err.get("code") or err.get("type") or "error"
        # xAI's codes differ from OpenAI's here; its message says the same (pipecat matches the text too)
        if code == "conversation_already_has_active_response" or "already has an active response" in str(
                err.get("message", "")).lower():
            self._requested, self._want_response = False, True  # ours lost a race with server VAD: retry later
        return [VendorError(f"{code}: {err.get('message', '')}")]


def _wire_format(ctx: AgentContext, vendor: str) -> AudioFormat:
    """The call's own G.711, unless OPENAI_AUDIO_FORMAT names another (OpenAI and Azure only)."""
    choice = ctx.settings.openai_audio_format if vendor in ("openai", "azure") else ""
    if choice == "pcm16":
        return AudioFormat("pcm16", PCM_RATE)
    return AudioFormat(choice, 8000) if choice else AudioFormat.of(ctx.codec)


def _history_item(role: str, text: str) -> dict[str, Any]:
    """An earlier utterance as a conversation item (user input_text or assistant output_text)."""
    if role == "caller":
        return {"type": "conversation.item.create",
                "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}}
    return {"type": "conversation.item.create",
            "item": {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}}
