"""The agent interface every AI vendor implements, and the events an agent emits.

An agent is created per call with an AgentContext. The call:
  1. awaits `connect()` (raising AgentRefused when the vendor says no: bad key, quota, unknown model);
  2. feeds caller audio with `send_audio()` (one 20 ms frame, in `input_format`) and DTMF with `send_dtmf()`,
     straight from the RTP receive callback: both are plain methods that queue and return, never block;
  3. consumes `events()` until it ends (AgentClosed is its last event);
  4. awaits `aclose()` in every case.

Audio events carry bytes in `output_format`; the call converts to G.711 8 kHz when the formats differ.
Reconnecting a dropped vendor socket is the agent's own business: `events()` simply goes quiet meanwhile,
and the call's RTP keeps flowing (silence towards the caller); AgentReconnected tells it happened.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from bridge.config import AgentPrompt, Settings
from bridge.media import AudioFormat, CallInfo, Codec

# ---- events out of an agent -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentAudio:
    """Agent speech in the agent's output format, any length. `item_id` names the reply it belongs to."""

    data: bytes
    item_id: str | None = None


@dataclass(frozen=True)
class AgentTurnEnd:
    """The agent finished sending a reply: a trailing partial frame may be padded and played."""


@dataclass(frozen=True)
class AgentInterrupted:
    """The caller barged in (or the model was interrupted): drop every queued frame at once."""


@dataclass(frozen=True)
class Transcript:
    """One utterance: who said what."""

    role: Literal["caller", "agent"]
    text: str


@dataclass(frozen=True)
class HangupRequest:
    """The agent ends the call (end_call tool): after the queued goodbye audio has been played."""

    reason: str = "agent ended the call"


@dataclass(frozen=True)
class TransferRequest:
    """The agent hands the caller to `destination` (transfer_call tool); empty means the configured default."""

    destination: str = ""


@dataclass(frozen=True)
class ToolCall:
    """The model called a tool (any tool, built-in or not), for the call's record; what it does follows as its
    own event (HangupRequest, TransferRequest) when it is a built-in. `outcome`: ok, unavailable or unknown
    (tools.answer)."""

    name: str
    arguments: Mapping[str, Any]
    outcome: str = "ok"


@dataclass(frozen=True)
class AgentReconnected:
    """The vendor connection was re-established (the session goes on): after a drop (`dropped`), or because the
    vendor asked us to move (`goaway`: Gemini's goAway)."""

    reason: str = "dropped"


@dataclass(frozen=True)
class UplinkLatency:
    """How long one sampled caller frame took from send_audio() to leaving on the vendor's socket (seconds)."""

    seconds: float


@dataclass(frozen=True)
class AgentClosed:
    """The agent session is over. `error` marks an abnormal end (vendor error, reconnects exhausted)."""

    reason: str
    error: bool = False


AgentEvent = (AgentAudio | AgentTurnEnd | AgentInterrupted | Transcript | HangupRequest | TransferRequest | ToolCall
              | AgentReconnected | UplinkLatency | AgentClosed)


@dataclass(frozen=True)
class AgentContext:
    """What an agent gets to know about its call.

    played_ms(item_id) is how many milliseconds of that reply's audio the caller has actually heard
    (frames that left on the wire), which OpenAI's `conversation.item.truncate` needs after a barge-in.
    draining() tells whether the process is shutting down.
    """

    call: CallInfo
    codec: Codec  # the G.711 law to speak to a vendor that takes G.711 (PCMU when the caller's leg is not G.711)
    settings: Settings
    played_ms: Callable[[str], int]
    log: logging.LoggerAdapter
    draining: Callable[[], bool] = lambda: False  # the process is shutting down: close with 1001 (going away)
    caller_format: AudioFormat | None = None  # the leg's own audio (PCM16 at 16 kHz for a wideband caller)

    @property
    def prompt(self) -> AgentPrompt:
        return self.settings.prompt


class Agent(ABC):
    """One AI session for one call."""

    input_format: AudioFormat
    output_format: AudioFormat

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx

    @abstractmethod
    async def connect(self) -> None:
        """Open and configure the vendor session. Raises AgentRefused when the vendor refuses it."""

    @abstractmethod
    def send_audio(self, data: bytes) -> None:
        """Queue caller audio (in `input_format`) for the vendor and return at once (called per RTP packet)."""

    def send_dtmf(self, digit: str) -> None:
        """Queue a key press for the agent and return at once. Default: ignored."""
        return None

    @abstractmethod
    def events(self) -> AsyncIterator[AgentEvent]:
        """The agent's events; the iterator ends after AgentClosed."""

    @abstractmethod
    async def aclose(self) -> None:
        """Close the vendor session (idempotent)."""

