"""The receiving side of a call's RTP, sans-I/O: source latching, stats, DTMF, payload filtering."""

from __future__ import annotations

from dataclasses import dataclass

from bridge.errors import RtpParseError
from bridge.media import Address
from bridge.rtp.packet import PT_COMFORT_NOISE, RtpPacket, TelephoneEvent


@dataclass(frozen=True, slots=True)
class Audio:
    """A caller audio payload, in arrival order."""

    payload: bytes
    sequence: int


@dataclass(frozen=True, slots=True)
class Dtmf:
    """One key press (RFC 4733): reported once, however many end packets repeat it."""

    key: str


@dataclass
class RtpStats:
    received: int = 0
    malformed: int = 0
    foreign: int = 0  # from a source other than the latched/signalled one: RTP injection attempts
    ignored: int = 0  # comfort noise, unknown payload types
    sent: int = 0
    late_ticks: int = 0

    def add(self, other: RtpStats) -> None:
        """Add `other`'s counters to these (totals over ended calls)."""
        self.received += other.received
        self.malformed += other.malformed
        self.foreign += other.foreign
        self.ignored += other.ignored
        self.sent += other.sent
        self.late_ticks += other.late_ticks


class RtpReceiver:
    """Decides, packet by packet, what of the incoming RTP is the caller's audio.

    Symmetric RTP: the first valid packet from the signalled host (any host when none is signalled) latches
    the peer's address; from then on packets from any other address are counted and dropped.
    """

    def __init__(self, signalled: Address | None, audio_pt: int, dtmf_pt: int | None, raw: bool = False) -> None:
        self.signalled = signalled
        self.raw = raw  # headerless frames (FreeSWITCH unicast): the datagram is the payload
        self.peer: Address | None = None
        self.audio_pt = audio_pt
        self.dtmf_pt = dtmf_pt
        self.stats = RtpStats()
        self._dtmf_ts: int | None = None  # RTP timestamp of the last key press reported

    def retarget(self, signalled: Address | None) -> None:
        """The signalling moved the media (re-INVITE): latch afresh."""
        self.signalled = signalled
        self.peer = None

    def receive(self, data: bytes, source: Address) -> Audio | Dtmf | None:
        """Classify one datagram; never raises."""
        if self.peer is None:
            if self.signalled is not None and source[0] != self.signalled[0]:
                self.stats.foreign += 1
                return None
        elif source != self.peer:
            self.stats.foreign += 1
            return None
        if self.raw:
            self.peer = source
            self.stats.received += 1
            return Audio(data, self.stats.received & 0xFFFF)
        try:
            packet = RtpPacket.parse(data)
            event = TelephoneEvent.parse(packet.payload) if packet.payload_type == self.dtmf_pt else None
        except RtpParseError:
            self.stats.malformed += 1
            return None
        self.peer = source
        self.stats.received += 1
        if event is not None:
            # RFC 4733 §2.5.1.4: every packet of one event shares its timestamp; the end packet is sent 3 times.
            if event.end and packet.timestamp != self._dtmf_ts and event.key is not None:
                self._dtmf_ts = packet.timestamp
                return Dtmf(event.key)
            return None
        if packet.payload_type != self.audio_pt or packet.payload_type == PT_COMFORT_NOISE:
            self.stats.ignored += 1
            return None
        return Audio(packet.payload, packet.sequence)


@dataclass
class Inactivity:
    """How long the caller's media has been silent, from the receive counter sampled about once a second.

    The receive path only counts packets (RtpStats.received); nothing here runs per packet. A change of the
    counter, or of the hold state, restarts the count. `timeout`/`hold_timeout` of 0 never expire.
    """

    timeout: float  # RTP_TIMEOUT_SEC
    hold_timeout: float  # RTP_HOLD_TIMEOUT_SEC: while the caller holds the call (it need not send then)
    count: int = 0
    since: float = 0.0
    held: bool = False

    def expired(self, now: float, received: int, held: bool) -> float | None:
        """The limit (seconds) the silence has reached, or None while the caller is sending or within it."""
        if received != self.count or held != self.held:
            self.count, self.since, self.held = received, now, held
            return None
        limit = self.hold_timeout if held else self.timeout
        return limit if limit and now - self.since >= limit else None
