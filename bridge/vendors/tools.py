"""The built-in tools (end_call, transfer_call) in a neutral form, their mapping to our events, and DTMF text.

Each vendor module renders `declared_tools(prompt)` in its own tool format (OpenAI `session.tools`, Deepgram
`agent.think.functions`, Gemini `tools[].functionDeclarations`) and turns a tool call back into our event with
`answer(name, arguments, prompt)`. Tools declared in the prompt file beyond the built-ins are passed to the
model as they are; a call to one is answered with `UNAVAILABLE` (the bridge has nothing to run it), and so is
a call to a tool nobody declared. The outcome (ok, unavailable, unknown) is counted per vendor in metrics.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.config import AgentPrompt
from bridge.vendors.base import HangupRequest, ToolCall, TransferRequest

END_CALL = "end_call"
TRANSFER_CALL = "transfer_call"


@dataclass(frozen=True)
class ToolSpec:
    """One function the model may call: name, description, JSON-schema parameters (type: object)."""

    name: str
    description: str
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


BUILTIN_TOOLS = (
    ToolSpec(
        END_CALL,
        "End the phone call. Say goodbye first; the call hangs up once your goodbye has been played.",
        {"type": "object", "properties": {"reason": {"type": "string", "description": "Why the call ends."}},
         "required": []},
    ),
    ToolSpec(
        TRANSFER_CALL,
        "Transfer the caller to another destination (a human, a department, a phone number).",
        {"type": "object",
         "properties": {"destination": {"type": "string",
                                        "description": "Extension or number to transfer to; empty for the default."}},
         "required": []},
    ),
)

OK = {"ok": True}  # the tool result a vendor gets back for end_call / transfer_call
UNAVAILABLE = {"ok": False, "error": "this tool is not available on this phone line"}


def declared_tools(prompt: AgentPrompt) -> list[ToolSpec]:
    """The built-in tools, plus those of the prompt file (a prompt entry named like a built-in replaces it)."""
    extra = [_spec(t) for t in prompt.tools if isinstance(t.get("name"), str)]
    names = {t.name for t in extra}
    return [t for t in BUILTIN_TOOLS if t.name not in names] + extra


def _spec(tool: Mapping[str, Any]) -> ToolSpec:
    params = tool.get("parameters") or {"type": "object", "properties": {}}
    return ToolSpec(str(tool["name"]), str(tool.get("description") or ""), params)


def parse_arguments(arguments: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Tool arguments as a dict, whether the vendor sent a JSON string (OpenAI, Deepgram) or an object (Gemini).

    Anything that is not a JSON object yields {} (the model sometimes sends "" for no arguments).
    """
    if isinstance(arguments, Mapping):
        return dict(arguments)
    if not arguments:
        return {}
    try:
        value = json.loads(arguments)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def tool_event(name: str, arguments: str | Mapping[str, Any] | None) -> HangupRequest | TransferRequest | None:
    """Our event for a built-in tool call, or None when `name` is not a built-in."""
    args = parse_arguments(arguments)
    if name == END_CALL:
        reason = args.get("reason")
        return HangupRequest(str(reason)) if reason else HangupRequest()
    if name == TRANSFER_CALL:
        destination = args.get("destination", args.get("target", ""))
        return TransferRequest(str(destination or ""))
    return None


def answer(name: str, arguments: str | Mapping[str, Any] | None,
           prompt: AgentPrompt) -> tuple[ToolCall, Mapping[str, Any], HangupRequest | TransferRequest | None]:
    """How the bridge answers one tool call: its record (every vendor emits it before the call's effect), the
    result sent back to the vendor, and our event when it is a built-in.

    The record's outcome: `ok` (a built-in, answered OK), `unavailable` (declared in the prompt file, nothing
    here runs it) or `unknown` (declared nowhere: the model made the name up); the last two get UNAVAILABLE.
    """
    event = tool_event(name, arguments)
    if event is not None:
        outcome = "ok"
    else:
        outcome = "unavailable" if any(t.name == name for t in declared_tools(prompt)) else "unknown"
    return ToolCall(name, parse_arguments(arguments), outcome), OK if event is not None else UNAVAILABLE, event


def dtmf_text(digit: str) -> str:
    """How a key press is told to the model: "caller pressed 5"."""
    return f"caller pressed {digit}"
