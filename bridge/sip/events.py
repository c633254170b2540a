"""What the UAS tells the transport about calls: small frozen dataclasses, keyed by the SIP Call-ID."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from bridge.media import Address, Codec


@dataclass(frozen=True)
class MediaParams:
    """The negotiated audio of a call: where RTP goes and how it is coded."""

    remote: Address | None
    codec: Codec
    payload_type: int
    dtmf_payload_type: int | None
    sending: bool = True


@dataclass(frozen=True)
class IncomingCall:
    """A new INVITE passed the checks: 100 Trying is out; answer with Uas.answer() or Uas.reject()."""

    call_id: str
    caller: str
    callee: str
    media: MediaParams
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CallRefused:
    """A new INVITE was answered 503 because no call may start now (draining, MAX_CALLS): counted, nothing more."""

    call_id: str
    reason: str


@dataclass(frozen=True)
class CallCancelled:
    """CANCEL before the answer: 487 went out; the call must be released without answering."""

    call_id: str


@dataclass(frozen=True)
class CallEnded:
    """The dialog is over from the far side (BYE) or by a timeout (no ACK, no session refresh): stop the call.

    `outcome` labels it for the call's record and metrics: completed, or session_expired (RFC 4028).
    """

    call_id: str
    reason: str
    outcome: str = "completed"


@dataclass(frozen=True)
class MediaChanged:
    """re-INVITE/UPDATE (or the ACK's answer): media follows the new address, codec and direction."""

    call_id: str
    media: MediaParams


@dataclass(frozen=True)
class RequestDone:
    """A request we sent in a dialog (BYE, REFER) got its final response; 408 on timeout."""

    call_id: str
    method: str
    status: int


@dataclass(frozen=True)
class DtmfReceived:
    """A key press signalled in SIP INFO (application/dtmf-relay)."""

    call_id: str
    key: str


Event = IncomingCall | CallRefused | CallCancelled | CallEnded | MediaChanged | RequestDone | DtmfReceived
