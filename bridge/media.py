"""The neutral vocabulary every ingress speaks to the core: who is calling, where media goes, how to control it."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

Address = tuple[str, int]

SAMPLE_RATE = 8000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000  # 160 samples = 160 G.711 bytes per 20 ms frame


class Codec(enum.Enum):
    """A call's G.711 law, with its static RTP payload type (RFC 3551) and SDP name."""

    PCMU = 0
    PCMA = 8

    @property
    def payload_type(self) -> int:
        return self.value

    @property
    def silence(self) -> int:
        """The byte that encodes digital silence (PCM 0)."""
        return 0xFF if self is Codec.PCMU else 0xD5


@dataclass(frozen=True)
class AudioFormat:
    """Audio on a wire (an agent's, a codec converter's end): G.711 at 8 kHz, or PCM16 little-endian mono at `rate`."""

    encoding: Literal["pcmu", "pcma", "pcm16"]
    rate: int = 8000

    @classmethod
    def of(cls, codec: Codec) -> AudioFormat:
        return cls("pcmu" if codec is Codec.PCMU else "pcma", 8000)

    @property
    def bytes_per_second(self) -> int:
        return self.rate * (2 if self.encoding == "pcm16" else 1)

    @property
    def silence_frame(self) -> bytes:
        """One 20 ms frame of digital silence."""
        byte = {"pcmu": Codec.PCMU.silence, "pcma": Codec.PCMA.silence}.get(self.encoding, 0)
        return bytes([byte]) * (self.bytes_per_second * FRAME_MS // 1000)


@dataclass(frozen=True)
class MediaLeg:
    """The PBX side of a call's media: where its RTP comes from and in which codec.

    `remote` is the signalled address (SDP c=/m=, ARI UNICASTRTP_LOCAL_*, ESL unicast); None until known.
    Symmetric RTP latches onto the source of the first valid packet from the signalled host anyway.
    """

    remote: Address | None
    codec: Codec = Codec.PCMU
    payload_type: int | None = None  # defaults to codec.payload_type
    dtmf_payload_type: int | None = None  # RFC 4733 telephone-event PT, when negotiated
    raw: bool = False  # headerless datagrams (FreeSWITCH `unicast`), not RTP
    stream: bool = False  # carried by the ingress's own connection (AudioSocket, chan_websocket): no UDP socket
    linear_rate: int | None = None  # raw 16-bit linear audio at this rate (`unicast` without `native`), not G.711

    @property
    def format(self) -> AudioFormat:
        """What the leg's payloads are: its G.711 law, or PCM16 at `linear_rate`."""
        return AudioFormat("pcm16", self.linear_rate) if self.linear_rate else AudioFormat.of(self.codec)

    @property
    def pt(self) -> int:
        return self.codec.payload_type if self.payload_type is None else self.payload_type


@dataclass(frozen=True)
class CallInfo:
    """What the agent may know about a call: its id, caller and callee, and ingress metadata.

    metadata carries e.g. SIP X- headers and P-Asserted-Identity, ARI channel variables and Stasis args,
    ESL variable_* values. No secret ever goes here.
    """

    call_id: str
    ingress: str  # "sip", "ari", "esl"
    caller: str = ""
    callee: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


class CallControl(Protocol):
    """What an ingress lets the agent do to its call. Implemented once per ingress."""

    async def hangup(self, reason: str) -> None:
        """End the call towards the PBX (SIP BYE, ARI DELETE channel, ESL hangup)."""
        ...

    async def transfer(self, destination: str) -> None:
        """Hand the caller elsewhere (SIP REFER, ARI continue/redirect, ESL transfer)."""
        ...


class LegTransfer(Protocol):
    """Another way to transfer a call's PBX leg than its ingress's own signalling, which the process hands in.

    The one there is: a SIP call FreeSWITCH bridged to us carries its A-leg's uuid, and the ESL inbound control
    moves that A-leg by `uuid_transfer` anywhere in the dialplan, where SIP REFER from our B-leg stays within the
    A-leg's context. The ingress tries this first and falls back to its own way when it returns False.
    """

    async def transfer(self, info: CallInfo, destination: str) -> bool:
        """Transfer the leg behind `info` to `destination` (empty: the configured default).

        True when done; False when it does not apply to this call or failed (logged): the ingress falls back.
        """
        ...
