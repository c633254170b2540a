"""The UAS side of one dialog (RFC 3261 §12): its state, the 2xx retransmission (§13.3.1.4) and our own requests."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from bridge.media import Address
from bridge.sip import grammar as g
from bridge.sip.message import NameAddr, Request
from bridge.sip.sdp import Negotiated
from bridge.sip.timer import SessionTimer
from bridge.sip.transaction import T1, T2, TIMEOUT


def new_tag() -> str:
    return secrets.token_hex(6)


def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)


@dataclass
class Pending2xx:
    """A 2xx to an INVITE resent at T1, 2·T1, … T2 until its ACK, given up after 64·T1."""

    cseq: int
    data: bytes
    dest: Address
    next_at: float
    give_up: float
    interval: float = T1

    @classmethod
    def start(cls, cseq: int, data: bytes, dest: Address, now: float) -> Pending2xx:
        return cls(cseq, data, dest, now + T1, now + TIMEOUT)

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def advance(self) -> None:
        self.interval = min(2 * self.interval, T2)
        self.next_at += self.interval


@dataclass
class Dialog:
    """State kept per call, created by the initial INVITE (§12.1.1). Keyed by Call-ID."""

    call_id: str
    local_tag: str
    remote_uri: str  # the caller's From value, tag included
    local_uri: str  # the INVITE's To value, before our tag
    remote_target: str  # the caller's Contact URI
    route_set: list[str]  # Record-Route values in the order received
    remote_cseq: int
    negotiated: Negotiated
    local_cseq: int = field(default_factory=lambda: secrets.randbelow(2**20) + 1)
    session_id: int = field(default_factory=lambda: secrets.randbelow(2**31))
    sdp_version: int = 1
    state: str = "early"  # early -> (answered) confirming -> confirmed -> terminated
    pending_2xx: Pending2xx | None = None
    bye_wanted: bool = False
    offer_sent: bool = False  # our 2xx carried the offer (the INVITE had no SDP): the ACK brings the answer
    local_media: Address | None = None
    invite_key: tuple[str, ...] = ()
    answer_key: tuple[object, ...] = ()  # what our last SDP said: a change bumps the o= version (RFC 3264 §8)
    stream_peer: Address | None = None  # the INVITE came over TCP: our requests go back on that connection
    local_sdp: bytes = b""  # the SDP we last sent: our re-INVITE offers it unchanged, version kept (RFC 3264 §8)
    timer: SessionTimer | None = None  # RFC 4028, when the caller asked for one
    peer_update: bool = False  # the caller's Allow lists UPDATE (RFC 3311): our refreshes use it
    invite_out: bool = False  # our re-INVITE awaits its final response (its offer is outstanding)

    @property
    def remote_tag(self) -> str:
        try:
            return NameAddr.parse(self.remote_uri).tag
        except ValueError:
            return ""

    def next_hop(self) -> Address | None:
        """Where in-dialog requests go: the first route (loose routing), else the remote target (§12.2.1.1)."""
        first = NameAddr.parse(self.route_set[0]).uri if self.route_set else self.remote_target
        return g.uri_hostport(first)

    def request(self, method: str, via_host: str, via_port: int, transport: str,
                extra: list[tuple[str, str]] | None = None, body: bytes = b"", cseq: int | None = None) -> Request:
        """A request inside the dialog with our next CSeq (§12.2.1.1), or `cseq` (the ACK of a 2xx, §13.2.2.4)."""
        if cseq is None:
            self.local_cseq += 1
        uri, routes = self.remote_target, list(self.route_set)
        params = NameAddr.parse(routes[0]).uri.lower().split(";")[1:] if routes else []
        if routes and "lr" not in (p.split("=")[0].strip() for p in params):
            uri = NameAddr.parse(routes[0]).uri  # strict router: it becomes the R-URI, the target goes last
            routes = routes[1:] + [f"<{self.remote_target}>"]
        host = f"[{via_host}]" if ":" in via_host else via_host
        headers = [("via", f"SIP/2.0/{transport} {host}:{via_port};branch={new_branch()};rport"),
                   ("max-forwards", "70"), ("from", f"{self.local_uri};tag={self.local_tag}"),
                   ("to", self.remote_uri), ("call-id", self.call_id), ("cseq", f"{cseq or self.local_cseq} {method}")]
        headers += [("route", r) for r in routes]
        headers += extra or []
        return Request(headers, body, method=method, uri=uri)
