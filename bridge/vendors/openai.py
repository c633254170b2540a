"""OpenAI Realtime (GA) and Azure OpenAI realtime: translation between our agent events and the vendor's JSON.

Wire contract: docs/vendors.md §1 (OpenAI GA) and §1.9 (Azure GA path). Audio is G.711 both ways
(`audio/pcmu` or `audio/pcma`, matching the call), so nothing is transcoded. Server VAD with
`interrupt_response` cancels the reply on barge-in; we flush playout and truncate the assistant item to what
the caller heard (§1.4). Only one response may be active (§1.5): our own `response.create`s wait for
`response.done`. Tool calls act on `response.done` only when the response completed (§1.6).
"""

from __future__ import annotations

import base64
import json
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from bridge.media import AudioFormat
from bridge.vendors import tools
from bridge.vendors.base import AgentAudio, AgentContext, AgentInterrupted, AgentTurnEnd, Transcript
from bridge.vendors.ws import Action, Endpoint, Message, Ready, Send, VendorError, WsAgent

TRANSCRIBE_MODEL = "gpt-4o-mini-transcribe"  # caller transcripts for the call log (OpenAI only, see below)
AZURE_PATH = "/openai/v1/realtime"
FORMATS = {"pcmu": "audio/pcmu", "pcma": "audio/pcma"}
HISTORY = 20  # utterances replayed into a new session after a reconnect: the recent context, bounded


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
    """One Realtime session per call (OpenAI, or Azure when AI_VENDOR=azure)."""

    def __init__(self, ctx: AgentContext) -> None:
        super().__init__(ctx)
        self.azure = ctx.settings.ai_vendor == "azure"
        self.vendor = "azure" if self.azure else "openai"
        self.input_format = self.output_format = AudioFormat.of(ctx.codec)
        self._handlers: dict[str, Callable[[dict], list[Action]]] = {
            "session.updated": lambda e: [Ready()],
            "response.created": self._on_response_created,
            "response.output_audio.delta": self._on_audio_delta,
            "response.audio.delta": self._on_audio_delta,  # beta name some models were seen to emit
            "response.output_audio_transcript.done": self._on_agent_transcript,
            "conversation.item.input_audio_transcription.completed": self._on_caller_transcript,
            "input_audio_buffer.speech_started": self._on_speech_started,
            "response.done": self._on_response_done,
            "error": self._on_error,
        }
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

    # -- connection ------------------------------------------------------------------------------------------

    def endpoint(self) -> Endpoint:
        s = self.ctx.settings
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
        messages = [json.dumps({"type": "session.update", "session": self.session_config()})]
        if resumed:  # a new socket is a new, empty conversation: give it the recent one back as text
            messages += [json.dumps(_history_item(role, text)) for role, text in self._history]
        greeting = self.ctx.prompt.greeting
        if greeting and not resumed:
            self._requested = True
            messages.append(json.dumps({"type": "response.create", "response": {
                "instructions": f"Greet the caller now by saying exactly: {greeting}"}}))
        return messages

    def on_reconnect(self) -> None:
        self._reset()

    def session_config(self) -> dict[str, Any]:
        """The GA `session` object of session.update (§1.2)."""
        s, prompt = self.ctx.settings, self.ctx.prompt
        fmt = {"type": FORMATS[self.input_format.encoding]}
        audio_in: dict[str, Any] = {
            "format": fmt,
            "turn_detection": {"type": "server_vad", "create_response": True, "interrupt_response": True},
        }
        if not self.azure:  # Azure wants a transcription *deployment* name here (§1.9): not configured, so off
            audio_in["transcription"] = {"model": TRANSCRIBE_MODEL}
        return {
            "type": "realtime",
            "model": s.azure_openai_deployment if self.azure else s.openai_model,
            "instructions": prompt.instructions,
            "output_modalities": ["audio"],
            "audio": {"input": audio_in, "output": {"format": fmt, "voice": prompt.voice or s.openai_voice}},
            "tools": [{"type": "function", "name": t.name, "description": t.description,
                       "parameters": dict(t.parameters)} for t in tools.declared_tools(prompt)],
            "tool_choice": "auto",
        }

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
        return [Send(json.dumps({"type": "response.create"}))]

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

    def _on_agent_transcript(self, event: dict) -> list[Action]:
        text = (event.get("transcript") or "").strip()
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
            if heard < self._item_bytes // 8:
                actions.append(Send(json.dumps({"type": "conversation.item.truncate", "item_id": self._item,
                                                "content_index": 0, "audio_end_ms": heard})))
            self._cut, self._item = self._item, None
        return actions

    def _on_response_done(self, event: dict) -> list[Action]:
        response = event["response"]
        self._active = None
        actions: list[Action] = [AgentTurnEnd()]
        if response.get("status") == "completed":
            for item in response.get("output") or ():
                if item.get("type") == "function_call":
                    actions += self._on_function_call(item)
        if self._want_response:
            self._want_response = False
            if not self._requested:
                actions += self._request_response()
        return actions

    def _on_function_call(self, item: dict) -> list[Action]:
        """A completed tool call: built-ins become our events; others get UNAVAILABLE and the model goes on."""
        request = tools.tool_event(item["name"], item.get("arguments"))
        output = tools.OK if request is not None else tools.UNAVAILABLE
        actions: list[Action] = [tools.called(item["name"], item.get("arguments"))]
        actions += [Send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": item["call_id"], "output": json.dumps(output)}}))]
        if request is not None:
            return [*actions, request]  # the call ends or moves on: the model need not speak again
        return actions + self._request_response()

    def _on_error(self, event: dict) -> list[Action]:
        err = event.get("error") or {}
        code = err.get("code") or err.get("type") or "error"
        if code == "conversation_already_has_active_response":
            self._requested, self._want_response = False, True  # ours lost a race with server VAD: retry later
        return [VendorError(f"{code}: {err.get('message', '')}")]


def _history_item(role: str, text: str) -> dict[str, Any]:
    """An earlier utterance as a conversation item (user input_text or assistant output_text)."""
    if role == "caller":
        return {"type": "conversation.item.create",
                "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}}
    return {"type": "conversation.item.create",
            "item": {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}}
