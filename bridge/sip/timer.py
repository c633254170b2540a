"""RFC 4028 session timers on the UAS side, sans-I/O: what a request asks for, what we answer, when we act.

A caller that wants its session kept alive sends `Session-Expires: <seconds>[;refresher=uac|uas]` (and maybe
`Min-SE`) in the INVITE and in every refresh (re-INVITE or UPDATE). We answer in the 2xx with the interval and
who refreshes; from that 2xx on, the refresher sends a refresh at half the interval (§10), and the other end
sends BYE when none has come "slightly before the session expiration", by min(32 s, interval/3) (§10).

The `refresher` parameter names the two ends of the transaction that carries it (sofia-sip and pjsip read it so):
in our answer to the caller's request `uac` is the caller; in a refresh we send, `uac` is us.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.errors import ParseError
from bridge.sip.message import Request

MIN_SE = 90  # §4, §5: no interval below this, and the Min-SE when none is given
BYE_MARGIN = 32.0  # §10: the BYE goes min(32 s, interval/3) before the session would expire
MAX_INTERVAL = 2**32 - 1  # delta-seconds beyond this count as this (RFC 3261 §25.1's rule for Expires)
RETRY_FLOOR = 1.0  # seconds before another attempt at a refresh that failed or could not go out


@dataclass(frozen=True)
class TooBrief:
    """The request asks for less than our minimum: answer 422 with `Min-SE: min_se` (§9)."""

    min_se: int


@dataclass
class SessionTimer:
    """One dialog's agreed interval, who refreshes, and when the last refresh was answered."""

    interval: int  # seconds
    we_refresh: bool
    peer_min_se: int = 0  # a Min-SE the caller sent: carried in our refreshes (§7.4)
    started: float = 0.0  # when the 2xx that (re)started it went out or came in
    retry_at: float | None = None  # our refresh failed or could not go out: try again then
    in_flight: bool = False  # our refresh awaits its final response

    @property
    def expires_at(self) -> float:
        return self.started + self.interval

    @property
    def due(self) -> float:
        """When this end acts: our refresh at half the interval (§10), else the BYE before expiry (§10)."""
        if not self.we_refresh:
            return self.expires_at - min(BYE_MARGIN, self.interval / 3)
        if self.in_flight:
            return self.expires_at
        first = self.started + self.interval / 2
        return min(self.retry_at if self.retry_at is not None else first, self.expires_at)

    def start(self, now: float) -> None:
        """A refresh succeeded (its 2xx went out, or came back): the interval counts from now."""
        self.started, self.retry_at, self.in_flight = now, None, False

    def action(self, now: float) -> str | None:
        """"refresh" (send ours), "expire" (the session is over: BYE), or None (not yet)."""
        if now < self.due:
            return None
        if not self.we_refresh or now >= self.expires_at:
            return "expire"
        return None if self.in_flight else "refresh"

    def retry(self, now: float) -> None:
        """Our refresh failed (or had to wait): try again halfway to expiry, not sooner than RETRY_FLOOR."""
        self.in_flight = False
        self.retry_at = now + max(RETRY_FLOOR, (self.expires_at - now) / 2)

    def response_headers(self) -> list[tuple[str, str]]:
        """In our 2xx to the caller's request: `uac` is the caller. refresher=uac obliges Require: timer (§9)."""
        headers = [("session-expires", f"{self.interval};refresher={'uas' if self.we_refresh else 'uac'}")]
        return headers if self.we_refresh else headers + [("require", "timer")]

    def request_headers(self) -> list[tuple[str, str]]:
        """In our own refresh: we are its UAC and keep refreshing (§7.4); the caller's Min-SE goes along."""
        headers = [("session-expires", f"{self.interval};refresher=uac"), ("supported", "timer")]
        return headers + ([("min-se", str(self.peer_min_se))] if self.peer_min_se else [])

    def answered(self, resp_session_expires: str | None, now: float) -> None:
        """The 2xx to our refresh: the peer may shorten the interval or take the refreshing over (§7.2)."""
        if resp_session_expires is not None:
            interval, refresher = parse_session_expires(resp_session_expires)
            self.interval = max(1, min(self.interval, interval))
            self.we_refresh = refresher != "uas"  # the response's `uas` is the peer
        self.start(now)


def parse_session_expires(value: str) -> tuple[int, str]:
    """`delta-seconds *(;se-params)` -> (seconds, refresher or ""). Raises ParseError (400) when malformed."""
    head, _, params = value.partition(";")
    head = head.strip()
    if not head.isdigit() or len(head) > 20:
        raise ParseError(f"bad Session-Expires {value[:40]!r}", 400)
    refresher = ""
    for param in params.split(";"):
        name, _, val = param.partition("=")
        if name.strip().lower() == "refresher":
            refresher = val.strip().lower()
    return min(int(head), MAX_INTERVAL), refresher


def parse_min_se(value: str | None) -> int:
    """`Min-SE: delta-seconds *(;generic-param)`; 0 when absent. Raises ParseError (400) when malformed."""
    if value is None:
        return 0
    head = value.partition(";")[0].strip()
    if not head.isdigit() or len(head) > 20:
        raise ParseError(f"bad Min-SE {value[:40]!r}", 400)
    return min(int(head), MAX_INTERVAL)


def supports_timer(req: Request) -> bool:
    """The UAC understands session timers (§7.1: `timer` in Supported, or required)."""
    return any(v.lower() == "timer" for v in req.values("supported") + req.values("require"))


def negotiate(req: Request, local_min_se: int) -> SessionTimer | TooBrief | None:
    """What to answer an INVITE, re-INVITE or UPDATE (§9); None when it asks for no session timer.

    We never ask for a timer the caller did not (dead peers are caught by the RTP inactivity timeout), never
    shorten the caller's interval, and let the caller refresh unless it asked us to or cannot (§9's table:
    a UAC without `timer` support gets refresher=uas). An interval below our minimum gets 422 from a UAC that
    supports timers; one that does not could not retry, so its interval is raised to our minimum (errata 1687).

    Raises:
        ParseError: Session-Expires or Min-SE malformed (400).
    """
    value = req.get("session-expires")
    if value is None:
        return None
    interval, refresher = parse_session_expires(value)
    peer_min_se = parse_min_se(req.get("min-se"))
    supported = supports_timer(req)
    floor = max(local_min_se, 1)
    if interval < floor:
        if supported:
            return TooBrief(floor)
        interval = floor
    we_refresh = not supported or refresher == "uas"
    return SessionTimer(interval, we_refresh, peer_min_se)
