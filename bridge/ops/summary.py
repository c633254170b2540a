"""Builds each call's summary from the event stream and hands it on at the end (records, webhooks).

Memory per call is bounded: at most MAX_LINES transcript lines and MAX_TOOL_CALLS tool calls are kept (the
number left out is in the summary).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.ops.events import (
    BargeIn,
    CallAnswered,
    CallEnded,
    CallEvent,
    CallStarted,
    ToolCalled,
    TranscriptLine,
    VendorReconnected,
)

MAX_LINES = 5000
MAX_TOOL_CALLS = 500
Summary = Mapping[str, Any]


def iso(t: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with milliseconds."""
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


@dataclass
class _Call:
    started: CallStarted
    answered: CallAnswered | None = None
    transcript: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    left_out: int = 0
    barge_ins: int = 0
    reconnects: int = 0


class Summaries:
    """Subscriber: keeps what each live call's summary needs; on CallEnded passes the summary to `sinks`."""

    def __init__(self, sinks: list[Callable[[Summary], None]], recording: Callable[[str], str | None]) -> None:
        self.sinks = sinks
        self.recording = recording  # call id -> its record name, when records are written
        self._calls: dict[str, _Call] = {}

    def __call__(self, event: CallEvent) -> None:
        if isinstance(event, CallStarted):
            self._calls[event.call_id] = _Call(event)
            return
        call = self._calls.get(getattr(event, "call_id", ""))
        if call is None:
            return
        match event:
            case CallAnswered():
                call.answered = event
            case TranscriptLine(role=role, text=text, offset=offset):
                self._keep(call, call.transcript, MAX_LINES, {"at": round(offset, 3), "role": role, "text": text})
            case ToolCalled(name=name, arguments=arguments, outcome=outcome, offset=offset):
                self._keep(call, call.tool_calls, MAX_TOOL_CALLS,
                           {"at": round(offset, 3), "name": name, "arguments": dict(arguments), "outcome": outcome})
            case BargeIn():
                call.barge_ins += 1
            case VendorReconnected():
                call.reconnects += 1
            case CallEnded():
                summary = self.summary(call, event)
                del self._calls[event.call_id]
                for sink in self.sinks:
                    sink(summary)

    @staticmethod
    def _keep(call: _Call, where: list[dict[str, Any]], limit: int, entry: dict[str, Any]) -> None:
        if len(where) < limit:
            where.append(entry)
        else:
            call.left_out += 1

    def summary(self, call: _Call, ended: CallEnded) -> Summary:
        s, a = call.started, call.answered
        name = self.recording(s.call_id)
        return {
            "call_id": s.call_id,
            "ingress": s.ingress,
            "caller": {"from": s.caller, "to": s.callee, "metadata": dict(s.metadata)},
            "vendor": s.vendor,
            "model": s.model,
            "codec": s.codec,
            "started_at": iso(s.at),
            "answered_at": iso(a.at if a else None),
            "ended_at": iso(ended.at),
            "duration_seconds": round(ended.duration, 3),
            "setup_seconds": round(a.setup_seconds, 3) if a else None,
            "outcome": ended.outcome,
            "end_reason": ended.reason,
            "rtp": dict(ended.rtp),
            "barge_ins": call.barge_ins,
            "reconnects": call.reconnects,
            "tool_calls": call.tool_calls,
            "transcript": call.transcript,
            "entries_left_out": call.left_out,
            "recording": f"{name}.wav" if name else None,
        }
